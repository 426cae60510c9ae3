#!/usr/bin/env bash
# Two portcullis instances, A and B, sharing one Redis session store: how
# fast a session ended through one instance closes the WebSockets held on
# the other, against the same instance, and how many Redis commands and how
# much Redis memory each operation costs. Prints markdown tables.
#
# Per run (RUNS, default 3), with sessions of the development provider's
# user bob logged in through B and their WebSockets held on B:
#   - subject revoke: SESSIONS browser sessions (default COUNT), COUNT
#     WebSockets over them; one `DELETE /admin/subjects/bob/sessions` on A
#     (cross-instance), then the same again on B (same instance); each
#     socket timed from the DELETE being sent to its close frame;
#   - logout: LOGOUT_COUNT sessions, one WebSocket each; each session logs
#     out (POST /.auth/logout with its cookie) through A, then (new
#     sessions) through B, one at a time, each timed from the logout request
#     to its socket's close frame.
# Then once (`load redis-ops`, OPS_COUNT of each): the Redis commands, as
# MONITOR shows them (sent by the instances, and run inside their scripts),
# per browser login, handshake on an instance that has not cached the
# session and one that has, token exchange, refresh, per-session admin
# revocation and per session of one subject revocation; INFO memory deltas
# and MEMORY USAGE of one key of each kind.
#
# Under load (BACKGROUND_A, BACKGROUND_B > 0): before the runs, one session of
# the user carol holds that many idle WebSockets on A and on B for the whole
# run (each instance's ceiling is 9 500 here: BACKGROUND_B + COUNT must stay
# below it); at the end they must all still be open (nothing ended that
# should stay), which the table's last lines say.
#
# Usage: scripts/bench-scale.sh
# Tunables (environment): COUNT (2000), SESSIONS (COUNT), LOGOUT_COUNT (200),
# OPS_COUNT (200), RUNS (3), SERVER_LIFETIME seconds (1200), BACKGROUND_A (0),
# BACKGROUND_B (0), LOG_LEVEL of the instances (warn), KEEP_LOGS (a directory
# the servers' logs are copied to at the end).
# e.g. two instances holding ~19 000 sockets between them:
#   BACKGROUND_A=9400 BACKGROUND_B=7400 bash scripts/bench-scale.sh
#
# Every server gets one worker thread and listens on loopback, on fixed
# ports (apart from scripts/bench-load.sh's):
#   28080 portcullis A, 28082 portcullis B, 28081 A's backend, 28085 B's,
#   28083 development OpenID provider, 28084 redis-server,
#   29090 A's admin, 29091 B's admin.
set -euo pipefail

cd "$(dirname "$0")/.."

COUNT=${COUNT:-2000}
SESSIONS=${SESSIONS:-$COUNT}
LOGOUT_COUNT=${LOGOUT_COUNT:-200}
OPS_COUNT=${OPS_COUNT:-200}
RUNS=${RUNS:-3}
BACKGROUND_A=${BACKGROUND_A:-0}
BACKGROUND_B=${BACKGROUND_B:-0}
# Servers are stopped on exit; the lifetime bounds them even if this script
# itself is killed outright and its trap never runs.
SERVER_LIFETIME=${SERVER_LIFETIME:-1200}

HOST=127.0.0.1
A_PORT=28080
BACKEND_PORT=28081
B_PORT=28082
IDP_PORT=28083
REDIS_PORT=28084
BACKEND_B_PORT=28085
A_ADMIN=29090
B_ADMIN=29091
SESSION_DEPLOYMENT=scale-session
MESSENGER_DEPLOYMENT=scale-messenger
SITE_CALLBACK=http://127.0.0.1/callback
ORIGIN=http://bench.localhost
chat_url() { echo "ws://$HOST:$1/v1/chat?deploymentId=$SESSION_DEPLOYMENT"; }

# Each instance and each backend may need a descriptor per held socket.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

for tool in redis-server openssl; do
    if ! command -v "$tool" >/dev/null; then
        echo "$tool is not installed (scripts/setup.sh installs redis-server)" >&2
        exit 1
    fi
done

work=$(mktemp -d)
server_pids=()
holder_pids=()

cleanup() {
    local status=$? pid
    if [ "$status" != 0 ] && [ -s "$work/client.log" ]; then
        echo "load tool messages:" >&2
        sed 's/^/    /' "$work/client.log" >&2
    fi
    for pid in "${holder_pids[@]}"; do
        kill -INT "$pid" 2>/dev/null || true
    done
    # SIGINT: Pingora's fast shutdown, the default end of the others.
    for pid in "${server_pids[@]}"; do
        kill -INT "$pid" 2>/dev/null || true
    done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${server_pids[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then alive=1; fi
        done
        if [ "$alive" = 0 ]; then break; fi
        sleep 0.1
    done
    for pid in "${server_pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ -n "${KEEP_LOGS:-}" ]; then
        mkdir -p "$KEEP_LOGS" && cp "$work"/*.log "$work"/*.out "$KEEP_LOGS"/ 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
locate_binaries release

# Keys both instances share: a cookie sealed by one opens on the other.
head -c 32 /dev/urandom | base64 >"$work/cookie.key"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/signing.pem" 2>/dev/null

# instance_config PORT ADMIN_PORT BACKEND_PORT
instance_config() {
    cat <<YAML
listen: [{address: "$HOST:$1"}]
public_url: "http://$HOST:$1"
threads: 1
admin: {address: "$HOST:$2"}
providers:
  dev:
    issuer: "http://$HOST:$IDP_PORT"
    client_id: portcullis-demo
    client_secret: {env: BENCH_CLIENT_SECRET}
    audiences: ["api://messaging"]
    algorithms: [RS256, ES256]
messengers:
  session: {authentication: {enabled: true, provider: dev}, assertion: false}
  messenger: {authentication: {enabled: true, provider: dev}, assertion: false}
upstreams:
  backend: {servers: ["$HOST:$3"]}
deployments:
  - {id: $SESSION_DEPLOYMENT, messenger: session, upstream: backend, allowed_origins: ["$ORIGIN"]}
  - {id: $MESSENGER_DEPLOYMENT, messenger: messenger, upstream: backend, allowed_origins: ["$ORIGIN"],
     redirect_uris: ["$SITE_CALLBACK"]}
routes:
  - {path_prefix: /v1, deployment_from: {query: deploymentId}}
# One client address makes every login and token API call here.
rate_limits:
  per_client: {per_minute: 1000000, burst: 100000}
  per_deployment: {per_minute: 1000000, burst: 100000}
sessions:
  store: redis
  redis: {url: "redis://$HOST:$REDIS_PORT/0"}
  keys: {cookie_key: {file: "$work/cookie.key"}, signing_key: {file: "$work/signing.pem"}}
logging: {format: text, level: ${LOG_LEVEL:-warn}}
YAML
}
instance_config "$A_PORT" "$A_ADMIN" "$BACKEND_PORT" >"$work/a.yaml"
instance_config "$B_PORT" "$B_ADMIN" "$BACKEND_B_PORT" >"$work/b.yaml"

mkdir "$work/redis"
start redis "$REDIS_PORT" redis-server --port "$REDIS_PORT" --bind "$HOST" --save '' --appendonly no \
    --dir "$work/redis"
start backend "$BACKEND_PORT" "$load_bin" backend --listen "$HOST:$BACKEND_PORT" --threads 1
start backend-b "$BACKEND_B_PORT" "$load_bin" backend --listen "$HOST:$BACKEND_B_PORT" --threads 1
start idp "$IDP_PORT" "$load_bin" idp --listen "$HOST:$IDP_PORT" --token-file "$work/token"
BENCH_CLIENT_SECRET=demo-secret start portcullis-a "$A_PORT" "$portcullis_bin" run -c "$work/a.yaml"
BENCH_CLIENT_SECRET=demo-secret start portcullis-b "$B_PORT" "$portcullis_bin" run -c "$work/b.yaml"

# logins COUNT USER [PORT [FILE]]: COUNT browser logins of USER through B
# (or PORT); cookies in $work/cookies (or FILE).
logins() {
    local line
    line=$("$load_bin" logins --url "http://$HOST:${3:-$B_PORT}" --deployment "$SESSION_DEPLOYMENT" \
        --count "$1" --user "$2" --cookie-file "${4:-$work/cookies}" 2>>"$work/client.log")
    if [ "$(field "$line" errors)" != 0 ]; then
        echo "logins failed: $line" >&2
        exit 1
    fi
}

# live ADMIN_PORT: the WebSockets an instance has open (all deployments).
live() {
    curl -sf "http://$HOST:$1/metrics" |
        awk '/^portcullis_active_connections[{ ]/ { s += $NF } END { print s + 0 }'
}

# Background load: carol's sockets on A and B, held across every run.
background_held() {
    local instance=$1 port=$2 admin=$3 count=$4 expected
    if [ "$count" = 0 ]; then return 0; fi
    echo "background: $count idle WebSockets of one carol session on $instance" >&2
    expected=$(($(live "$admin") + count))
    "$load_bin" hold --url "$(chat_url "$port")" --origin "$ORIGIN" --count "$count" \
        --header "Cookie: $(head -n1 "$work/background")" --hold 7200 --release-file "$work/release" \
        --threads 1 >"$work/hold-$instance.out" 2>>"$work/client.log" &
    holder_pids+=("$!")
    for _ in $(seq 1200); do
        if [ "$(live "$admin")" -ge "$expected" ]; then return 0; fi
        if ! kill -0 "${holder_pids[-1]}" 2>/dev/null; then break; fi
        sleep 0.5
    done
    echo "the background holder on $instance did not open $count sockets (live: $(live "$admin"))" >&2
    cat "$work/hold-$instance.out" >&2
    exit 1
}
if [ "$BACKGROUND_A" != 0 ] || [ "$BACKGROUND_B" != 0 ]; then
    logins 1 carol "$A_PORT" "$work/background"
    background_held A "$A_PORT" "$A_ADMIN" "$BACKGROUND_A"
    background_held B "$B_PORT" "$B_ADMIN" "$BACKGROUND_B"
fi

# revoke_close ARGS...: holds the sockets on B and ends their sessions as
# ARGS say; prints the result line of the closes.
revoke_close() {
    local out opened
    out=$("$load_bin" revoke-close --url "$(chat_url "$B_PORT")" --origin "$ORIGIN" \
        --cookie-file "$work/cookies" "$@" 2>>"$work/client.log")
    opened=$(grep '^hold ' <<<"$out")
    if [ "$(field "$opened" errors)" != 0 ]; then
        echo "opening the WebSockets failed: $opened" >&2
        exit 1
    fi
    grep -E '^(forced|logout)-close ' <<<"$out"
}

declare -A result
for run in $(seq "$RUNS"); do
    for via in A B; do
        admin=$A_ADMIN
        port=$A_PORT
        if [ "$via" = B ]; then admin=$B_ADMIN port=$B_PORT; fi
        echo "run $run: $COUNT WebSockets of $SESSIONS sessions on B, subject revoked through $via" >&2
        logins "$SESSIONS" bob
        result[subject-$via-$run]=$(revoke_close --count "$COUNT" \
            --revoke "http://$HOST:$admin/admin/subjects/bob/sessions")
        echo "run $run: $LOGOUT_COUNT sessions with one WebSocket each on B, logged out through $via" >&2
        logins "$LOGOUT_COUNT" bob
        result[logout-$via-$run]=$(revoke_close --count "$LOGOUT_COUNT" --logout-at "http://$HOST:$port")
    done
done

# The background sockets: still all open (live counts), then closed by
# their holder, every close answered.
background_report=""
if ((${#holder_pids[@]} > 0)); then
    live_a=$(live "$A_ADMIN") live_b=$(live "$B_ADMIN")
    touch "$work/release"
    for pid in "${holder_pids[@]}"; do wait "$pid" || true; done
    background_report="Background: A held $BACKGROUND_A and B $BACKGROUND_B idle WebSockets of one carol session through every run
(live on A / B after the last run: $live_a / $live_b, expected $BACKGROUND_A / $BACKGROUND_B). Their holders' lines:"
    for instance in A B; do
        if [ -s "$work/hold-$instance.out" ]; then
            background_report+=$'\n'"    $instance: $(tr '\n' ' ' <"$work/hold-$instance.out")"
        fi
    done
fi

# Whether B kept up with the ends it heard (a lagging subscriber resyncs:
# every live session looked up again).
b_metrics=$(curl -sf "http://$HOST:$B_ADMIN/metrics" || true)
b_received=$(awk '/^portcullis_session_store_events_total\{.*direction="received"/ { s += $NF } END { print s + 0 }' <<<"$b_metrics")
b_resyncs=$(awk '/^portcullis_session_store_resyncs_total/ { s += $NF } END { print s + 0 }' <<<"$b_metrics")

echo "Redis commands and memory per operation, $OPS_COUNT of each" >&2
ops=$("$load_bin" redis-ops --redis "$HOST:$REDIS_PORT" --a "http://$HOST:$A_PORT" --ws-a "$(chat_url "$A_PORT")" \
    --admin-a "http://$HOST:$A_ADMIN" --b "http://$HOST:$B_PORT" --provider "http://$HOST:$IDP_PORT" \
    --session-deployment "$SESSION_DEPLOYMENT" --messenger-deployment "$MESSENGER_DEPLOYMENT" \
    --redirect-uri "$SITE_CALLBACK" --count "$OPS_COUNT" --origin "$ORIGIN" 2>>"$work/client.log")

ms() { awk -v us="$1" 'BEGIN { printf "%.1f", us / 1000 }'; }
factor() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'
}

echo
echo "portcullis $(git describe --always --dirty 2>/dev/null || echo '?') on $(nproc) cores, $(date -u +%F);" \
    "two instances (1 thread each) sharing redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')" \
    "on loopback; sockets held on B; the load tool, the backends, the provider and Redis share the same cores;" \
    "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| run | ended through | how | sockets | sessions | closed | codes | not closed within 10 s | p50 ms | p99 ms | max ms | p50 / same-instance p50 |"
echo "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"
for run in $(seq "$RUNS"); do
    for how in subject logout; do
        same=${result[$how-B-$run]}
        for via in A B; do
            line=${result[$how-$via-$run]}
            label="A (cross-instance)"
            if [ "$via" = B ]; then label="B (same instance)"; fi
            if [ "$how" = subject ]; then
                what="one admin DELETE of the subject"
                sockets=$COUNT sessions=$SESSIONS
            else
                what="a logout per session, one at a time"
                sockets=$LOGOUT_COUNT sessions=$LOGOUT_COUNT
            fi
            echo "| $run | $label | $what | $sockets | $sessions | $(field "$line" closed) | $(field "$line" codes)" \
                "| $(field "$line" errors) | $(ms "$(field "$line" p50_us)") | $(ms "$(field "$line" p99_us)")" \
                "| $(ms "$(field "$line" max_us)") | $(factor "$(field "$line" p50_us)" "$(field "$same" p50_us)") |"
        done
    done
done

if [ -n "$background_report" ]; then
    echo
    echo "$background_report"
fi
echo
echo "B heard $b_received ends from A over the whole run and resynced $b_resyncs times" \
    "(portcullis_session_store_events_total{direction=\"received\"}, portcullis_session_store_resyncs_total)."
echo
echo "| operation ($OPS_COUNT each) | commands sent per operation | commands run inside scripts per operation | Redis used_memory change per operation, bytes | commands sent, in all | inside scripts, in all |"
echo "|---|---:|---:|---:|---|---|"
while read -r line; do
    echo "| $(field "$line" phase) | $(field "$line" client_per_op) | $(field "$line" script_per_op)" \
        "| $(field "$line" used_memory_per_op) | $(field "$line" client) | $(field "$line" script) |"
done < <(grep '^ops ' <<<"$ops")
echo
echo "| key (one of each kind) | MEMORY USAGE bytes | set members |"
echo "|---|---:|---:|"
while read -r line; do
    echo "| $(field "$line" kind) | $(field "$line" memory_usage_bytes) | $(field "$line" members) |"
done < <(grep '^key ' <<<"$ops")

if [ -s "$work/client.log" ]; then
    echo
    echo "load tool messages:"
    sed 's/^/    /' "$work/client.log"
fi
