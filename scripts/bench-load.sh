#!/usr/bin/env bash
# Load comparison of the demo echo backend reached directly, through a bare
# Pingora proxy (the baseline), through portcullis to a deployment without
# authentication, through portcullis to a deployment that requires a bearer
# token (the same token on every request: the token-cache path), to the same
# deployment with a distinct, never-seen RS256 token on every request and
# handshake (the first-seen path: signature, claims, cache insert), to one
# authenticated by a browser session cookie (one login, then the cookie on
# every request: the session path), and to one authenticated by a messenger
# token of the token API (one site login exchanged, then that jwt on every
# request: local verification plus the session lookup); the token API's own
# latency (TOKEN_COUNT exchanges and refreshes, one at a time); then the
# memory portcullis spends per idle WebSocket, and how long it takes to close
# FORCED_COUNT live WebSockets at once. Prints markdown tables. Each HTTP row
# also gives the proxy's own CPU time per request (from /proc/PID/stat): what
# each path costs, whether or not the proxy was the bottleneck of that run.
#
# "closes unanswered": the client sent a close frame and the server hung up
# without its own close frame (an RFC 6455 lapse, not a failed handshake).
#
# Usage: scripts/bench-load.sh [capacity | drain | tls | websocket]
#
# capacity: instead of all of the above, how many authenticated WebSockets
# (the bearer-token deployment) one portcullis process holds under its
# descriptor limit: CAPACITY_COUNT handshakes (default: 500 more than the
# ceiling portcullis derives from the hard RLIMIT_NOFILE, at most 19 900 so
# the load tool fits its own limit), held idle; prints how many opened, were
# refused with 503, got 502 or failed otherwise, the RSS per idle connection,
# portcullis's refusal counter, and whether its log mentions EMFILE.
# Bounded: each handshake times out after 10 s, the hold lasts 5 s.
#
# drain: DRAIN_COUNT (default 9000) authenticated WebSockets held, then
# SIGTERM to portcullis: when each socket got its close frame, counted from
# the signal (the default shutdown.drain_grace of 5 s, then 1001 spread over
# shutdown.close_window, 10 s), and its code.
#
# tls: instead of all of the above, the cost of TLS: HTTP req/s (keep-alive)
# and WebSocket handshakes/s (each on a new connection, so a full TLS
# handshake: the client resumes no session) through portcullis over plain
# TCP and over TLS, and through the bare Pingora proxy over both, in one
# run; the certificate comes from a test CA the load tool makes. Built with
# the debug profile unless PROFILE=release: read the ratios, not the rates.
# Also listens on 18443 (portcullis TLS) and 18084 (bare Pingora TLS).
#
# websocket: instead of all of the above, what a WebSocket costs once open,
# through bare Pingora and portcullis (and, with BASELINE_PORTCULLIS=PATH, a
# second portcullis binary, e.g. a build of an earlier commit, on port 18085),
# one target after the other in one run: the RSS per idle socket with
# HOLD_COUNT held; one busy socket's echo throughput with 64 KiB messages
# (1 MiB in flight); the proxy's CPU time per MB at a steady 1 MB/s (16 KiB
# messages); and 64-byte messages per second (1 024 in flight). Release
# profile, servers pinned as with PINNED=1.
#
# Tunables (environment): DURATION seconds per run (10), HTTP_CONCURRENCY (32),
# WS_CONCURRENCY (16), HOLD_COUNT (5000), TOKEN_COUNT (200), FORCED_COUNT (2000),
# FRESH_COUNT (20000: first-seen tokens for the HTTP run and as many again for
# the handshakes, minted by the development provider on every CPU before
# anything is measured; a run that uses its tokens up ends early; the
# verified tokens stay in portcullis's token cache for five minutes, during
# the idle-socket and forced-close measurements that follow),
# SERVER_LIFETIME seconds (1800),
# PINNED (0; 1: the proxy under test alone on CPU 0, the backend, provider and
# load tool on the other CPUs, so the proxies' rates measure their own costs
# rather than their share of CPUs they contend for with the backend),
# ROUNDS (0; N: after the table, N more rounds of HTTP runs of DURATION
# seconds over the four portcullis targets, each round starting at the next
# target, and every authenticated target's req/s as a share of the
# auth-disabled one's in the same round, with the median: the machine's
# drift moves whole rounds, not one target's run against another's),
# CALLGRIND_DIR (unset; a directory: portcullis and the bare Pingora proxy
# run under valgrind's callgrind, and the script prints, instead of all of
# the above tables, the instructions each executed per HTTP request for
# each of its targets (valgrind's `Ir`, user space only): a count that the
# machine's drift does not move, where req/s and CPU time move by ±20 %
# here; one `portcullis.out.N` or `bare-pingora.out.N` profile per run, for
# `callgrind_annotate`. glibc's memcpy and memset are told to keep to their
# vector loops: `rep movsb`/`rep stosb`, which they pick from 2 KiB up and
# which the hardware runs at tens of bytes a cycle, count one instruction
# per byte under valgrind,
# so a future that grows past 2 KiB would add thousands of instructions a
# request that cost next to nothing),
# PERF_DIR (unset; a directory: `perf record -g` of the proxy during each
# HTTP run, one `<target>.data` each, to compare where the paths spend their
# CPU with `perf report -i`; the recording costs CPU, so read that run's
# ratios as disturbed).
#
# Every server gets one worker thread: on a two-core machine that leaves the
# other core to the load tool, and gives the bare proxy and portcullis the
# same means. Everything listens on loopback, on fixed ports:
#   18081 backend, 18082 bare Pingora -> backend, 18080 portcullis -> backend,
#   18083 development OpenID provider (the bearer token's issuer),
#   19090 portcullis admin.
set -euo pipefail

cd "$(dirname "$0")/.."

MODE=${1:-comparison}
case "$MODE" in
    comparison | capacity | drain | tls | websocket) ;;
    *)
        echo "usage: $0 [capacity | drain | tls | websocket]" >&2
        exit 2
        ;;
esac

DURATION=${DURATION:-10}
HTTP_CONCURRENCY=${HTTP_CONCURRENCY:-32}
WS_CONCURRENCY=${WS_CONCURRENCY:-16}
HOLD_COUNT=${HOLD_COUNT:-5000}
TOKEN_COUNT=${TOKEN_COUNT:-200}
FRESH_COUNT=${FRESH_COUNT:-20000}
FORCED_COUNT=${FORCED_COUNT:-2000}
# Servers are stopped on exit; the lifetime bounds them even if this script
# itself is killed outright and its trap never runs.
SERVER_LIFETIME=${SERVER_LIFETIME:-1800}
ROUNDS=${ROUNDS:-0}
# The messenger token the rounds send lives 15 minutes from its issue.
if [ $((ROUNDS * 4 * DURATION)) -gt 600 ]; then
    echo "ROUNDS × 4 × DURATION is over 600 s: the messenger token would expire mid-run" >&2
    exit 1
fi
if [ -n "${CALLGRIND_DIR:-}" ] && [ -n "${PERF_DIR:-}" ]; then
    echo "CALLGRIND_DIR and PERF_DIR measure the same runs two ways at once: give one" >&2
    exit 1
fi
for tool in ${CALLGRIND_DIR:+valgrind callgrind_control} ${PERF_DIR:+perf}; do
    if ! command -v "$tool" >/dev/null; then
        package=$([ "$tool" = perf ] && echo linux-perf || echo valgrind)
        echo "$tool is not installed (apt-get install $package)" >&2
        exit 1
    fi
done
PINNED=${PINNED:-0}
if [ "$MODE" = websocket ]; then PINNED=1; fi
proxy_cpus=()
other_cpus=()
if [ "$PINNED" = 1 ]; then
    if [ "$(nproc)" -lt 2 ]; then
        echo "PINNED=1 needs at least two CPUs" >&2
        exit 1
    fi
    proxy_cpus=(taskset -c 0)
    other_cpus=(taskset -c "1-$(($(nproc) - 1))")
fi

HOST=127.0.0.1
BACKEND_PORT=18081
BARE_PORT=18082
PORTCULLIS_PORT=18080
IDP_PORT=18083
ADMIN_PORT=19090
DEPLOYMENT=bench-deployment
AUTH_DEPLOYMENT=bench-auth
SESSION_DEPLOYMENT=bench-session
MESSENGER_DEPLOYMENT=bench-messenger
# Where the token API's site "receives" its codes (never fetched).
SITE_CALLBACK=http://127.0.0.1/callback
ORIGIN=http://bench.localhost
# The same request for every target, so the backend does the same work; only
# the deployment differs between portcullis's two deployments.
request_path() { echo "/v1/ping?deploymentId=$1"; }
ws_path() { echo "/v1/chat?deploymentId=$1"; }

work=$(mktemp -d)
server_pids=()

cleanup() {
    local status=$? pid
    if [ "$status" != 0 ] && [ -s "$work/client.log" ]; then
        echo "load tool messages:" >&2
        sed 's/^/    /' "$work/client.log" >&2
    fi
    # SIGINT: Pingora's fast shutdown, and the default end of the backend.
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
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
# tls runs default to the debug profile (PROFILE=release to override).
if [ "$MODE" = tls ]; then PROFILE=${PROFILE:-debug}; else PROFILE=${PROFILE:-release}; fi
locate_binaries "$PROFILE"

# open_config PORT [LISTENER]: one thread, an auth-disabled deployment
# listening on PORT and on LISTENER (a YAML flow map) if given; the tls and
# websocket modes need nothing more (the data path of a WebSocket is the same
# whatever admitted it).
open_config() {
    cat <<EOF
listen: [{address: "$HOST:$1"}${2:+, $2}]
threads: 1
messengers: {open: {authentication: {enabled: false}}}
upstreams: {backend: {servers: ["$HOST:$BACKEND_PORT"]}}
deployments:
  - {id: $DEPLOYMENT, messenger: open, upstream: backend, allowed_origins: ["$ORIGIN"]}
routes: [{path_prefix: /v1, deployment_from: {query: deploymentId}}]
logging: {format: text, level: warn}
EOF
}

if [ "$MODE" = tls ]; then
    TLS_PORT=18443
    BARE_TLS_PORT=18084
    "$load_bin" certs --dir "$work/certs"
    open_config "$PORTCULLIS_PORT" \
        "{address: \"$HOST:$TLS_PORT\", tls: {cert: \"$work/certs/server.crt\", key: \"$work/certs/server.key\"}}" \
        >"$work/portcullis.yaml"
    start backend "$BACKEND_PORT" "${other_cpus[@]}" "$load_bin" backend --listen "$HOST:$BACKEND_PORT" --threads 1
    start bare-pingora "$BARE_PORT" "${proxy_cpus[@]}" "$load_bin" bare-proxy --listen "$HOST:$BARE_PORT" \
        --upstream "$HOST:$BACKEND_PORT" --threads 1
    start bare-pingora-tls "$BARE_TLS_PORT" "${proxy_cpus[@]}" "$load_bin" bare-proxy --listen "$HOST:$BARE_TLS_PORT" \
        --upstream "$HOST:$BACKEND_PORT" --threads 1 \
        --tls-cert "$work/certs/server.crt" --tls-key "$work/certs/server.key"
    start portcullis "$PORTCULLIS_PORT" "${proxy_cpus[@]}" "$portcullis_bin" run -c "$work/portcullis.yaml"
    declare -A http_result ws_result
    tls_targets=(bare-pingora bare-pingora-tls portcullis portcullis-tls)
    declare -A url_of=([bare-pingora]="$HOST:$BARE_PORT" [bare-pingora-tls]="localhost:$BARE_TLS_PORT"
        [portcullis]="$HOST:$PORTCULLIS_PORT" [portcullis-tls]="localhost:$TLS_PORT")
    for target in "${tls_targets[@]}"; do
        http_scheme=http ws_scheme=ws
        case "$target" in *-tls) http_scheme=https ws_scheme=wss ;; esac
        echo "$target: http, $HTTP_CONCURRENCY connections, ${DURATION}s" >&2
        http_result[$target]=$("${other_cpus[@]}" "$load_bin" http --ca "$work/certs/ca.pem" \
            --url "$http_scheme://${url_of[$target]}$(request_path "$DEPLOYMENT")" \
            --concurrency "$HTTP_CONCURRENCY" --duration "$DURATION" --header "Origin: $ORIGIN" 2>>"$work/client.log")
        sleep 1
        echo "$target: handshakes, $WS_CONCURRENCY at a time, ${DURATION}s" >&2
        ws_result[$target]=$("${other_cpus[@]}" "$load_bin" handshakes --ca "$work/certs/ca.pem" \
            --url "$ws_scheme://${url_of[$target]}$(ws_path "$DEPLOYMENT")" \
            --concurrency "$WS_CONCURRENCY" --duration "$DURATION" --origin "$ORIGIN" 2>>"$work/client.log")
        sleep 1
    done
    # rates KIND A B: A's rate as a share of B's, this run.
    rates() {
        if [ "$1" = ws ]; then
            ratio "$(field "${ws_result[$2]}" handshakes_per_s)" "$(field "${ws_result[$3]}" handshakes_per_s)"
        else
            ratio "$(field "${http_result[$2]}" requests_per_s)" "$(field "${http_result[$3]}" requests_per_s)"
        fi
    }
    echo
    echo "portcullis $(git describe --always --dirty 2>/dev/null || echo '?') on $(nproc) cores, $PROFILE profile;" \
        "servers 1 thread each; http ${HTTP_CONCURRENCY}x keep-alive GET, handshakes ${WS_CONCURRENCY}x" \
        "(each on a new connection, no TLS session resumption), ${DURATION}s each"
    echo
    echo "| target | HTTP req/s | HTTP p50 µs | HTTP p99 µs | HTTP errors | WS handshakes/s | WS p50 µs | WS p99 µs | WS errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for target in "${tls_targets[@]}"; do
        h=${http_result[$target]}
        w=${ws_result[$target]}
        echo "| $target | $(field "$h" requests_per_s) | $(field "$h" p50_us) | $(field "$h" p99_us) | $(field "$h" errors)" \
            "| $(field "$w" handshakes_per_s) | $(field "$w" p50_us) | $(field "$w" p99_us) | $(field "$w" errors) |"
    done
    echo
    echo "portcullis TLS / portcullis plain: HTTP req/s $(rates http portcullis-tls portcullis)," \
        "handshakes/s $(rates ws portcullis-tls portcullis)"
    echo "bare Pingora TLS / bare Pingora plain: HTTP req/s $(rates http bare-pingora-tls bare-pingora)," \
        "handshakes/s $(rates ws bare-pingora-tls bare-pingora)"
    echo "portcullis TLS / bare Pingora TLS: HTTP req/s $(rates http portcullis-tls bare-pingora-tls)," \
        "handshakes/s $(rates ws portcullis-tls bare-pingora-tls)"
    if [ -s "$work/client.log" ]; then
        echo
        echo "load tool messages:"
        sed 's/^/    /' "$work/client.log"
    fi
    exit 0
fi

if [ "$MODE" = websocket ]; then
    BASELINE_PORT=18085
    start backend "$BACKEND_PORT" "${other_cpus[@]}" "$load_bin" backend --listen "$HOST:$BACKEND_PORT" --threads 1
    ws_targets=(bare-pingora portcullis)
    declare -A port_of=([bare-pingora]=$BARE_PORT [portcullis]=$PORTCULLIS_PORT)
    declare -A pid_of
    start bare-pingora "$BARE_PORT" "${proxy_cpus[@]}" "$load_bin" bare-proxy --listen "$HOST:$BARE_PORT" \
        --upstream "$HOST:$BACKEND_PORT" --threads 1
    pid_of[bare-pingora]=$STARTED_PID
    open_config "$PORTCULLIS_PORT" >"$work/portcullis.yaml"
    start portcullis "$PORTCULLIS_PORT" "${proxy_cpus[@]}" "$portcullis_bin" run -c "$work/portcullis.yaml"
    pid_of[portcullis]=$STARTED_PID
    if [ -n "${BASELINE_PORTCULLIS:-}" ]; then
        ws_targets+=(baseline)
        port_of[baseline]=$BASELINE_PORT
        open_config "$BASELINE_PORT" >"$work/baseline.yaml"
        start baseline "$BASELINE_PORT" "${proxy_cpus[@]}" "$BASELINE_PORTCULLIS" run -c "$work/baseline.yaml"
        pid_of[baseline]=$STARTED_PID
    fi
    declare -A idle bulk steady small
    for target in "${ws_targets[@]}"; do
        url="ws://$HOST:${port_of[$target]}$(ws_path "$DEPLOYMENT")"
        echo "$target: holding $HOLD_COUNT idle WebSockets" >&2
        idle[$target]=$("${other_cpus[@]}" "$load_bin" hold --url "$url" --count "$HOLD_COUNT" --hold 2 \
            --pid "${pid_of[$target]}" --origin "$ORIGIN" 2>>"$work/client.log" | grep '^hold opened=')
        sleep 1
        echo "$target: one busy socket, 64 KiB messages, ${DURATION}s" >&2
        bulk[$target]=$("${other_cpus[@]}" "$load_bin" chat --url "$url" --origin "$ORIGIN" --message-size 65536 \
            --window 1048576 --duration "$DURATION" 2>>"$work/client.log")
        echo "$target: 1 MB/s through one socket, ${DURATION}s" >&2
        steady[$target]=$("${other_cpus[@]}" "$load_bin" chat --url "$url" --origin "$ORIGIN" --message-size 16384 \
            --rate 1000000 --duration "$DURATION" --pid "${pid_of[$target]}" 2>>"$work/client.log")
        echo "$target: 64-byte messages, ${DURATION}s" >&2
        small[$target]=$("${other_cpus[@]}" "$load_bin" chat --url "$url" --origin "$ORIGIN" --message-size 64 \
            --window 65536 --duration "$DURATION" 2>>"$work/client.log")
    done
    echo
    echo "portcullis $(git describe --always --dirty 2>/dev/null || echo '?') on $(nproc) cores, $PROFILE profile;" \
        "proxies pinned to CPU 0, one thread each; ${DURATION}s per throughput row; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "| target | idle KiB/socket ($HOLD_COUNT held) | busy socket MB/s (64 KiB msgs) | p99 µs | CPU ms per MB at 1 MB/s | p99 µs | 64 B msgs/s | p99 µs |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for target in "${ws_targets[@]}"; do
        echo "| $target | $(field "${idle[$target]}" kib_per_conn) | $(field "${bulk[$target]}" mb_per_s)" \
            "| $(field "${bulk[$target]}" p99_us) | $(field "${steady[$target]}" proxy_cpu_ms_per_mb)" \
            "| $(field "${steady[$target]}" p99_us) | $(field "${small[$target]}" messages_per_s) | $(field "${small[$target]}" p99_us) |"
    done
    if [ -n "${BASELINE_PORTCULLIS:-}" ]; then
        echo
        echo "portcullis / baseline: idle KiB $(ratio "$(field "${idle[portcullis]}" kib_per_conn)" "$(field "${idle[baseline]}" kib_per_conn)")," \
            "busy MB/s $(ratio "$(field "${bulk[portcullis]}" mb_per_s)" "$(field "${bulk[baseline]}" mb_per_s)")," \
            "CPU per MB $(ratio "$(field "${steady[portcullis]}" proxy_cpu_ms_per_mb)" "$(field "${steady[baseline]}" proxy_cpu_ms_per_mb)")," \
            "small msgs/s $(ratio "$(field "${small[portcullis]}" messages_per_s)" "$(field "${small[baseline]}" messages_per_s)")"
    fi
    if [ -s "$work/client.log" ]; then
        echo
        echo "load tool messages:"
        sed 's/^/    /' "$work/client.log"
    fi
    exit 0
fi

cat >"$work/portcullis.yaml" <<EOF
listen: [{address: "$HOST:$PORTCULLIS_PORT"}]
public_url: "http://$HOST:$PORTCULLIS_PORT"
threads: 1
admin: {address: "$HOST:$ADMIN_PORT"}
providers:
  dev:
    issuer: "http://$HOST:$IDP_PORT"
    client_id: portcullis-demo
    client_secret: {env: BENCH_CLIENT_SECRET}
    audiences: ["api://messaging"]
    algorithms: [RS256, ES256]
messengers:
  open: {authentication: {enabled: false}}
  bearer: {authentication: {enabled: true, provider: dev}, assertion: false}
  session: {authentication: {enabled: true, provider: dev}, assertion: false}
  messenger: {authentication: {enabled: true, provider: dev}, assertion: false}
upstreams:
  backend: {servers: ["$HOST:$BACKEND_PORT"]}
deployments:
  - {id: $DEPLOYMENT, messenger: open, upstream: backend, allowed_origins: ["$ORIGIN"]}
  - {id: $AUTH_DEPLOYMENT, messenger: bearer, upstream: backend, allowed_origins: ["$ORIGIN"]}
  - {id: $SESSION_DEPLOYMENT, messenger: session, upstream: backend, allowed_origins: ["$ORIGIN"]}
  - {id: $MESSENGER_DEPLOYMENT, messenger: messenger, upstream: backend, allowed_origins: ["$ORIGIN"],
     redirect_uris: ["$SITE_CALLBACK"]}
routes:
  - {path_prefix: /v1, deployment_from: {query: deploymentId}}
# One client address makes every token API call here: lift its budget.
rate_limits:
  per_client: {per_minute: 1000000, burst: 100000}
  per_deployment: {per_minute: 1000000, burst: 100000}
logging: {format: text, level: warn}
EOF

# callgrind_runner ARRAY NAME: sets ARRAY to the command prefix that runs a
# proxy under callgrind, its counts in $CALLGRIND_DIR/NAME.out.
callgrind_runner() {
    local -n runner=$1
    runner=(env "GLIBC_TUNABLES=${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.cpu.x86_rep_movsb_threshold=1000000000:glibc.cpu.x86_rep_stosb_threshold=1000000000"
        valgrind -q --tool=callgrind --callgrind-out-file="$CALLGRIND_DIR/$2.out")
}
if [ -n "${CALLGRIND_DIR:-}" ]; then
    # A proxy under valgrind starts many times slower, more so on a busy
    # machine: a minute before it is taken for failed.
    START_WAIT=600
    mkdir -p "$CALLGRIND_DIR"
    rm -f "$CALLGRIND_DIR"/portcullis.out* "$CALLGRIND_DIR"/bare-pingora.out*
fi
start backend "$BACKEND_PORT" "${other_cpus[@]}" "$load_bin" backend --listen "$HOST:$BACKEND_PORT" --threads 1
if [ "$MODE" = comparison ]; then
    bare_runner=()
    if [ -n "${CALLGRIND_DIR:-}" ]; then
        callgrind_runner bare_runner bare-pingora
    fi
    start bare-pingora "$BARE_PORT" "${proxy_cpus[@]}" "${bare_runner[@]}" \
        "$load_bin" bare-proxy --listen "$HOST:$BARE_PORT" --upstream "$HOST:$BACKEND_PORT" --threads 1
    bare_pid=$STARTED_PID
fi
# The provider writes its token only once it answers (and, in a comparison,
# has minted the first-seen tokens), so wait for the file.
fresh_args=()
if [ "$MODE" = comparison ]; then
    fresh_args=(--fresh-file "$work/fresh" --fresh-count $((2 * FRESH_COUNT)))
    echo "development provider: minting $((2 * FRESH_COUNT)) first-seen RS256 tokens" >&2
fi
start idp "$IDP_PORT" "${other_cpus[@]}" "$load_bin" idp --listen "$HOST:$IDP_PORT" --token-file "$work/token" \
    --alg RS256 --user alice "${fresh_args[@]}"
# 30 s, and a second per 500 tokens to mint (RS256 signs at about 1 000 a
# second per CPU here).
idp_pid=$STARTED_PID
for _ in $(seq $((300 + 2 * FRESH_COUNT / 50))); do
    if [ -s "$work/token" ]; then break; fi
    # A provider that failed (say, while minting) writes no token.
    if ! kill -0 "$idp_pid" 2>/dev/null; then break; fi
    sleep 0.1
done
if [ ! -s "$work/token" ]; then
    echo "the development provider wrote no token; its output:" >&2
    cat "$work/idp.log" >&2
    exit 1
fi
bearer="Authorization: Bearer $(cat "$work/token")"
if [ "$MODE" = comparison ]; then
    head -n "$FRESH_COUNT" "$work/fresh" >"$work/fresh-http"
    tail -n +"$((FRESH_COUNT + 1))" "$work/fresh" >"$work/fresh-ws"
fi
# The development provider's client secret for this client id.
proxy_runner=()
if [ -n "${CALLGRIND_DIR:-}" ]; then
    callgrind_runner proxy_runner portcullis
fi
BENCH_CLIENT_SECRET=demo-secret start portcullis "$PORTCULLIS_PORT" "${proxy_cpus[@]}" "${proxy_runner[@]}" \
    "$portcullis_bin" run -c "$work/portcullis.yaml"
portcullis_pid=$STARTED_PID

# Pre-flight for the authenticating deployment, which also makes portcullis
# discover the provider and cache the token before anything is measured: with
# the token every request passes, without it none does. Otherwise the
# numbers would measure a refusal, or a deployment that checks nothing.
preflight() {
    "$load_bin" http --url "http://$HOST:$PORTCULLIS_PORT$(request_path "$AUTH_DEPLOYMENT")" \
        --concurrency 1 --duration 1 --header "Origin: $ORIGIN" "$@" 2>>"$work/preflight.log"
}
with_token=$(preflight --header "$bearer")
without_token=$(preflight)
if [ "$(field "$with_token" errors)" != 0 ] || [ "$(field "$with_token" requests)" = 0 ] ||
    [ "$(field "$without_token" requests)" != 0 ] ||
    ! grep -q 'first error: status 401' "$work/preflight.log"; then
    echo "pre-flight of $AUTH_DEPLOYMENT failed (expected: all passing with the token, 401 without)" >&2
    echo "  with token:    $with_token" >&2
    echo "  without token: $without_token" >&2
    sed 's/^/    /' "$work/preflight.log" >&2
    exit 1
fi

# capacity: fill one portcullis process with authenticated WebSockets, past
# its connection ceiling, then stop.
if [ "$MODE" = capacity ]; then
    hard_limit=$(ulimit -Hn)
    ceiling=$(((hard_limit - 1000) / 2))
    count=${CAPACITY_COUNT:-$((ceiling + 500))}
    if [ "$count" -gt 19900 ]; then count=19900; fi
    echo "portcullis: capacity, $count authenticated WebSockets against a derived ceiling of $ceiling" >&2
    capacity_result=$("${other_cpus[@]}" "$load_bin" hold \
        --url "ws://$HOST:$PORTCULLIS_PORT$(ws_path "$AUTH_DEPLOYMENT")" --count "$count" --hold 5 \
        --pid "$portcullis_pid" --origin "$ORIGIN" --header "$bearer" 2>>"$work/client.log")
    capacity_line=$(grep '^hold opened=' <<<"$capacity_result")
    close_line=$(grep '^hold closed=' <<<"$capacity_result")
    refused_metric=$(curl -s "http://$HOST:$ADMIN_PORT/metrics" |
        sed -n "s/^portcullis_connections_refused_total{deployment=\"$AUTH_DEPLOYMENT\",reason=\"process_limit\"} //p")
    emfile=$(grep -ciE 'too many open files|EMFILE' "$work/portcullis.log" || true)
    echo
    echo "portcullis $(git describe --always --dirty 2>/dev/null || echo '?') on $(nproc) cores;" \
        "RLIMIT_NOFILE hard limit $hard_limit (portcullis raises its soft limit to it); 1 server thread;" \
        "bearer-token deployment, one RS256 token (token cache)"
    echo
    echo "| handshakes | opened | refused 503 | 502 | other errors | refusals counted by portcullis | EMFILE lines in its log | open time s | RSS before KiB | RSS after KiB | KiB per idle connection | closes answered | closes unanswered | close errors |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    echo "| $count | $(field "$capacity_line" opened) | $(field "$capacity_line" refused_503)" \
        "| $(field "$capacity_line" bad_gateway_502) | $(field "$capacity_line" other_errors) | ${refused_metric:-0}" \
        "| $emfile | $(field "$capacity_line" open_s) | $(field "$capacity_line" rss_before_kib)" \
        "| $(field "$capacity_line" rss_after_kib) | $(field "$capacity_line" kib_per_conn)" \
        "| $(field "$close_line" closed) | $(field "$close_line" unanswered_closes) | $(field "$close_line" close_errors) |"
    if [ -s "$work/client.log" ]; then
        echo
        echo "load tool messages:"
        sed 's/^/    /' "$work/client.log"
    fi
    exit 0
fi

# drain: hold sockets, SIGTERM portcullis, time the closes from the signal.
if [ "$MODE" = drain ]; then
    count=${DRAIN_COUNT:-9000}
    echo "portcullis: drain, $count authenticated WebSockets held, then SIGTERM" >&2
    drain_result=$("${other_cpus[@]}" "$load_bin" hold \
        --url "ws://$HOST:$PORTCULLIS_PORT$(ws_path "$AUTH_DEPLOYMENT")" --count "$count" --hold 2 \
        --origin "$ORIGIN" --header "$bearer" --sigterm "$portcullis_pid" 2>>"$work/client.log")
    held_line=$(grep '^hold opened=' <<<"$drain_result")
    drain_line=$(grep '^drain-close ' <<<"$drain_result")
    ms() { awk -v us="$1" 'BEGIN { printf "%.0f", us / 1000 }'; }
    echo
    echo "portcullis $(git describe --always --dirty 2>/dev/null || echo '?') on $(nproc) cores; 1 server thread;" \
        "bearer-token deployment; shutdown.drain_grace 5 s and shutdown.close_window 10 s (the defaults);" \
        "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "| held | closed | codes | no close frame in 120 s | first close ms after SIGTERM | p50 ms | p99 ms | last ms |"
    echo "|---:|---:|---|---:|---:|---:|---:|---:|"
    echo "| $(field "$held_line" opened) | $(field "$drain_line" closed) | $(field "$drain_line" codes)" \
        "| $(field "$drain_line" errors) | $(ms "$(field "$drain_line" first_us)") | $(ms "$(field "$drain_line" p50_us)")" \
        "| $(ms "$(field "$drain_line" p99_us)") | $(ms "$(field "$drain_line" max_us)") |"
    if [ -s "$work/client.log" ]; then
        echo
        echo "load tool messages:"
        sed 's/^/    /' "$work/client.log"
    fi
    exit 0
fi

# One browser login; the session deployment gets the same pre-flight.
if ! "$load_bin" login --url "http://$HOST:$PORTCULLIS_PORT" --deployment "$SESSION_DEPLOYMENT" \
    --cookie-file "$work/cookie" 2>>"$work/preflight.log"; then
    echo "the login for $SESSION_DEPLOYMENT failed:" >&2
    sed 's/^/    /' "$work/preflight.log" >&2
    exit 1
fi
session_cookie="Cookie: $(cat "$work/cookie")"
with_cookie=$("$load_bin" http --url "http://$HOST:$PORTCULLIS_PORT$(request_path "$SESSION_DEPLOYMENT")" \
    --concurrency 1 --duration 1 --header "Origin: $ORIGIN" --header "$session_cookie" 2>>"$work/preflight.log")
if [ "$(field "$with_cookie" errors)" != 0 ] || [ "$(field "$with_cookie" requests)" = 0 ]; then
    echo "pre-flight of $SESSION_DEPLOYMENT with the session cookie failed: $with_cookie" >&2
    sed 's/^/    /' "$work/preflight.log" >&2
    exit 1
fi

# The token API: site logins exchanged one at a time, then a chain of
# refreshes; the last messenger token authenticates the messenger target.
echo "portcullis: token API, $TOKEN_COUNT exchanges and $TOKEN_COUNT refreshes" >&2
token_result=$("${other_cpus[@]}" "$load_bin" token-api --url "http://$HOST:$PORTCULLIS_PORT" \
    --admin "http://$HOST:$ADMIN_PORT" --provider "http://$HOST:$IDP_PORT" \
    --deployment "$MESSENGER_DEPLOYMENT" --redirect-uri "$SITE_CALLBACK" --count "$TOKEN_COUNT" \
    --jwt-file "$work/jwt" 2>>"$work/client.log")
exchange_line=$(grep '^exchange ' <<<"$token_result")
refresh_line=$(grep '^refresh ' <<<"$token_result")
if [ "$(field "$exchange_line" errors)" != 0 ] || [ "$(field "$refresh_line" errors)" != 0 ] || [ ! -s "$work/jwt" ]; then
    echo "the token API run failed: $token_result" >&2
    sed 's/^/    /' "$work/client.log" >&2
    exit 1
fi
messenger_jwt="Authorization: Bearer $(cat "$work/jwt")"
with_jwt=$("$load_bin" http --url "http://$HOST:$PORTCULLIS_PORT$(request_path "$MESSENGER_DEPLOYMENT")" \
    --concurrency 1 --duration 1 --header "Origin: $ORIGIN" --header "$messenger_jwt" 2>>"$work/preflight.log")
if [ "$(field "$with_jwt" errors)" != 0 ] || [ "$(field "$with_jwt" requests)" = 0 ]; then
    echo "pre-flight of $MESSENGER_DEPLOYMENT with the messenger token failed: $with_jwt" >&2
    sed 's/^/    /' "$work/preflight.log" >&2
    exit 1
fi

# cpu_ns PID: the CPU time PID has used so far (user and system, threads
# that have exited included), in nanoseconds; 10 ms steps, about 0.1 µs per
# request over a run.
CLOCK_TICKS=$(getconf CLK_TCK)
cpu_ns() {
    awk -v hz="$CLOCK_TICKS" '{ sub(/.*\) /, ""); printf "%.0f", ($12 + $13) * 1e9 / hz }' /proc/"$1"/stat
}

declare -A http_result ws_result http_cpu http_ir
# First-seen last: it leaves 2 × FRESH_COUNT verified tokens in the token
# cache (until their entries expire, five minutes on), which the other
# targets' runs would otherwise share the heap with.
targets=(direct-backend bare-pingora portcullis portcullis-bearer portcullis-session portcullis-messenger
    portcullis-first-seen)
declare -A port_of=([direct-backend]=$BACKEND_PORT [bare-pingora]=$BARE_PORT
    [portcullis]=$PORTCULLIS_PORT [portcullis-bearer]=$PORTCULLIS_PORT [portcullis-first-seen]=$PORTCULLIS_PORT
    [portcullis-session]=$PORTCULLIS_PORT [portcullis-messenger]=$PORTCULLIS_PORT)
declare -A deployment_of=([direct-backend]=$DEPLOYMENT [bare-pingora]=$DEPLOYMENT
    [portcullis]=$DEPLOYMENT [portcullis-bearer]=$AUTH_DEPLOYMENT [portcullis-first-seen]=$AUTH_DEPLOYMENT
    [portcullis-session]=$SESSION_DEPLOYMENT [portcullis-messenger]=$MESSENGER_DEPLOYMENT)

# credential_args TARGET KIND (http|ws): the load tool's arguments for the
# target's credential, one a line.
credential_args() {
    case "$1" in
        portcullis-bearer) printf '%s\n' --header "$bearer" ;;
        portcullis-first-seen) printf '%s\n' --fresh-file "$work/fresh-$2" --fresh-count "$FRESH_COUNT" ;;
        portcullis-session) printf '%s\n' --header "$session_cookie" ;;
        portcullis-messenger) printf '%s\n' --header "$messenger_jwt" ;;
    esac
}

for target in "${targets[@]}"; do
    port=${port_of[$target]}
    deployment=${deployment_of[$target]}
    mapfile -t extra < <(credential_args "$target" http)
    # The proxy's own CPU time per request: what each path costs, whether or
    # not the proxy was the bottleneck (on two cores the load tool and the
    # backend share the other one).
    case "$target" in
        direct-backend) proxy_pid= ;;
        bare-pingora) proxy_pid=$bare_pid ;;
        *) proxy_pid=$portcullis_pid ;;
    esac
    cpu_before=$([ -n "$proxy_pid" ] && cpu_ns "$proxy_pid" || true)
    echo "$target: http, $HTTP_CONCURRENCY connections, ${DURATION}s" >&2
    perf_pid=
    if [ -n "${PERF_DIR:-}" ] && [ -n "$proxy_pid" ]; then
        mkdir -p "$PERF_DIR"
        "${other_cpus[@]}" perf record -q -g -p "$proxy_pid" -o "$PERF_DIR/$target.data" 2>>"$work/client.log" &
        perf_pid=$!
        sleep 0.5
        if ! kill -0 "$perf_pid" 2>/dev/null; then
            echo "perf record could not attach to the proxy (perf_event_paranoid?); its output:" >&2
            cat "$work/client.log" >&2
            exit 1
        fi
    fi
    if [ -n "${CALLGRIND_DIR:-}" ]; then
        case "$target" in portcullis* | bare-pingora) ;; *) continue ;; esac
        # Counting starts afresh for this run: what came before is dumped.
        if ! callgrind_control -z "$proxy_pid" >/dev/null 2>>"$work/client.log"; then
            echo "callgrind_control could not reset $target's counts; see $work/client.log" >&2
            exit 1
        fi
    fi
    http_result[$target]=$("${other_cpus[@]}" "$load_bin" http --url "http://$HOST:$port$(request_path "$deployment")" \
        --concurrency "$HTTP_CONCURRENCY" --duration "$DURATION" --header "Origin: $ORIGIN" \
        "${extra[@]}" 2>>"$work/client.log")
    if [ -n "${CALLGRIND_DIR:-}" ]; then
        dump=
        profile=portcullis
        if [ "$target" = bare-pingora ]; then profile=bare-pingora; fi
        if callgrind_control -d "$target" "$proxy_pid" >/dev/null 2>>"$work/client.log"; then
            dump=$(ls -t "$CALLGRIND_DIR/$profile".out.* 2>/dev/null | head -1)
        fi
        if [ -z "$dump" ] || ! grep -q "^desc: Trigger: dump $target\$" "$dump"; then
            echo "callgrind wrote no counts for $target; see $work/client.log" >&2
            exit 1
        fi
        http_ir[$target]=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$dump")
        continue
    fi
    if [ -n "$perf_pid" ]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" || true
    fi
    if [ -n "$proxy_pid" ]; then
        http_cpu[$target]=$(awk -v a="$cpu_before" -v b="$(cpu_ns "$proxy_pid")" \
            -v n="$(field "${http_result[$target]}" requests)" 'BEGIN { if (n > 0) printf "%.1f", (b - a) / 1000 / n }')
    fi
    sleep 1
    echo "$target: handshakes, $WS_CONCURRENCY at a time, ${DURATION}s" >&2
    mapfile -t extra < <(credential_args "$target" ws)
    ws_result[$target]=$("${other_cpus[@]}" "$load_bin" handshakes --url "ws://$HOST:$port$(ws_path "$deployment")" \
        --concurrency "$WS_CONCURRENCY" --duration "$DURATION" --origin "$ORIGIN" \
        "${extra[@]}" 2>>"$work/client.log")
    sleep 1
done

if [ -n "${CALLGRIND_DIR:-}" ]; then
    echo
    echo "portcullis $(git describe --always --dirty 2>/dev/null || echo '?') under callgrind; http ${HTTP_CONCURRENCY}x keep-alive GET, ${DURATION}s each;" \
        "instructions executed by the proxy (user space) per request; profiles in $CALLGRIND_DIR"
    echo
    echo "| target | requests | errors | instructions per request | auth-disabled's ÷ this |"
    echo "|---|---:|---:|---:|---:|"
    per_request() { awk -v ir="${http_ir[$1]:-0}" -v n="$(field "${http_result[$1]}" requests)" \
        'BEGIN { if (n > 0) printf "%.0f", ir / n; else print 0 }'; }
    for target in bare-pingora portcullis portcullis-bearer portcullis-session portcullis-messenger portcullis-first-seen; do
        echo "| $target | $(field "${http_result[$target]}" requests) | $(field "${http_result[$target]}" errors)" \
            "| $(per_request "$target") | $(ratio "$(per_request portcullis)" "$(per_request "$target")") |"
    done
    exit 0
fi

# Interleaved rounds (ROUNDS): the ratios with drift between targets'
# runs taken out as far as it goes.
round_targets=(portcullis portcullis-bearer portcullis-session portcullis-messenger)
declare -A round_rates round_cpu round_errors
for round in $(seq 1 "$ROUNDS"); do
    for i in "${!round_targets[@]}"; do
        target=${round_targets[$(((i + round - 1) % ${#round_targets[@]}))]}
        mapfile -t extra < <(credential_args "$target" http)
        echo "round $round/$ROUNDS, $target: http, ${DURATION}s" >&2
        cpu_before=$(cpu_ns "$portcullis_pid")
        result=$("${other_cpus[@]}" "$load_bin" http --url "http://$HOST:$PORTCULLIS_PORT$(request_path "${deployment_of[$target]}")" \
            --concurrency "$HTTP_CONCURRENCY" --duration "$DURATION" --header "Origin: $ORIGIN" \
            "${extra[@]}" 2>>"$work/client.log")
        round_rates[$target,$round]=$(field "$result" requests_per_s)
        errors=$(field "$result" errors)
        round_errors[$target]=$((${round_errors[$target]:-0} + ${errors:-1}))
        round_cpu[$target,$round]=$(awk -v a="$cpu_before" -v b="$(cpu_ns "$portcullis_pid")" \
            -v n="$(field "$result" requests)" 'BEGIN { if (n > 0) printf "%.2f", (b - a) / 1000 / n }')
    done
done

echo "portcullis: holding $HOLD_COUNT WebSockets" >&2
hold_result=$("$load_bin" hold --url "ws://$HOST:$PORTCULLIS_PORT$(ws_path "$DEPLOYMENT")" --count "$HOLD_COUNT" \
    --hold 2 --pid "$portcullis_pid" --origin "$ORIGIN" 2>>"$work/client.log")
hold_line=$(grep '^hold opened=' <<<"$hold_result")
close_line=$(grep '^hold closed=' <<<"$hold_result")

# How fast portcullis ends live connections when told to: sockets of the
# session deployment (the cookie), all closed at once by the admin endpoint
# (the same close path as logout, revocation and expiry), each timed from
# the moment the DELETE was sent to its close frame.
echo "portcullis: $FORCED_COUNT WebSockets closed by the admin endpoint" >&2
forced_result=$("$load_bin" hold --url "ws://$HOST:$PORTCULLIS_PORT$(ws_path "$SESSION_DEPLOYMENT")" \
    --count "$FORCED_COUNT" --hold 1 --origin "$ORIGIN" --header "$session_cookie" \
    --forced-close "http://$HOST:$ADMIN_PORT/admin/connections?deployment=$SESSION_DEPLOYMENT" 2>>"$work/client.log")
forced_line=$(grep '^forced-close ' <<<"$forced_result")

# cpu_ratio TARGET: the auth-disabled deployment's proxy CPU per request as a
# share of TARGET's (so, like the rates, 100% means "costs nothing more").
cpu_ratio() {
    ratio "${http_cpu[portcullis]:-0}" "${http_cpu[$1]:-0}"
}
# rate_ratio KIND TARGET: TARGET's rate as a share of the auth-disabled
# portcullis deployment's, measured in this same run.
rate_ratio() {
    if [ "$1" = ws ]; then
        ratio "$(field "${ws_result[$2]}" handshakes_per_s)" "$(field "${ws_result[portcullis]}" handshakes_per_s)"
    else
        ratio "$(field "${http_result[$2]}" requests_per_s)" "$(field "${http_result[portcullis]}" requests_per_s)"
    fi
}

echo
pinning="no CPU pinning"
if [ "$PINNED" = 1 ]; then pinning="proxies pinned to CPU 0, everything else to the other CPUs"; fi
echo "portcullis $(git describe --always --dirty 2>/dev/null || echo '?') on $(nproc) cores, $pinning;" \
    "servers 1 thread each; http ${HTTP_CONCURRENCY}x keep-alive GET, handshakes ${WS_CONCURRENCY}x, ${DURATION}s each;" \
    "portcullis-bearer: one RS256 access token on every request (token cache);" \
    "portcullis-first-seen: a distinct RS256 access token on every request and handshake (up to $FRESH_COUNT each);" \
    "portcullis-session: one session cookie on every request;" \
    "portcullis-messenger: one messenger token (token API) on every request"
echo
echo "| target | HTTP req/s | vs auth-disabled | proxy CPU µs/request | vs auth-disabled | HTTP p50 µs | HTTP p99 µs | HTTP max µs | HTTP errors | WS handshakes/s | vs auth-disabled | WS p50 µs | WS p99 µs | WS errors | WS closes unanswered |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for target in "${targets[@]}"; do
    h=${http_result[$target]}
    w=${ws_result[$target]}
    echo "| $target | $(field "$h" requests_per_s) | $(rate_ratio http "$target") | ${http_cpu[$target]:-—} | $(cpu_ratio "$target")" \
        "| $(field "$h" p50_us) | $(field "$h" p99_us)" \
        "| $(field "$h" max_us) | $(field "$h" errors) | $(field "$w" handshakes_per_s) | $(rate_ratio ws "$target")" \
        "| $(field "$w" p50_us) | $(field "$w" p99_us) | $(field "$w" errors) | $(field "$w" unanswered_closes) |"
done

echo
echo "portcullis / bare Pingora: HTTP req/s" \
    "$(ratio "$(field "${http_result[portcullis]}" requests_per_s)" "$(field "${http_result[bare-pingora]}" requests_per_s)"), handshakes/s" \
    "$(ratio "$(field "${ws_result[portcullis]}" handshakes_per_s)" "$(field "${ws_result[bare-pingora]}" handshakes_per_s)")"
echo "portcullis bearer (cached token) / auth-disabled: HTTP req/s $(rate_ratio http portcullis-bearer) (proxy CPU per request: $(cpu_ratio portcullis-bearer))," \
    "handshakes/s $(rate_ratio ws portcullis-bearer)"
echo "portcullis first-seen bearer / auth-disabled: HTTP req/s $(rate_ratio http portcullis-first-seen) (proxy CPU per request: $(cpu_ratio portcullis-first-seen))," \
    "handshakes/s $(rate_ratio ws portcullis-first-seen)"
echo "portcullis session cookie / auth-disabled: HTTP req/s $(rate_ratio http portcullis-session) (proxy CPU per request: $(cpu_ratio portcullis-session))," \
    "handshakes/s $(rate_ratio ws portcullis-session)"
echo "portcullis messenger token / auth-disabled: HTTP req/s $(rate_ratio http portcullis-messenger) (proxy CPU per request: $(cpu_ratio portcullis-messenger))," \
    "handshakes/s $(rate_ratio ws portcullis-messenger)"
if [ "$ROUNDS" -gt 0 ]; then
    echo
    echo "Interleaved: $ROUNDS rounds of ${DURATION}s HTTP runs over the portcullis targets, each round starting at the next;" \
        "req/s as a share of auth-disabled's in the same round"
    echo
    echo "| target | measure | per round | median | errors |"
    echo "|---|---|---|---:|---:|"
    for target in portcullis-bearer portcullis-session portcullis-messenger; do
        for measure in req/s cpu; do
            shares=()
            for round in $(seq 1 "$ROUNDS"); do
                if [ "$measure" = cpu ]; then
                    # As above: auth-disabled's CPU per request over TARGET's.
                    shares+=("$(ratio "${round_cpu[portcullis,$round]:-0}" "${round_cpu[$target,$round]:-0}")")
                else
                    shares+=("$(ratio "${round_rates[$target,$round]:-0}" "${round_rates[portcullis,$round]:-0}")")
                fi
            done
            # A round without requests ("n/a") has no share to take part.
            median=$(printf '%s\n' "${shares[@]}" | grep '%$' | tr -d '%' | sort -g | awk '{ v[NR] = $1 } END {
                if (NR == 0) print "n/a"; else if (NR % 2) printf "%.1f%%", v[(NR + 1) / 2];
                else printf "%.1f%%", (v[NR / 2] + v[NR / 2 + 1]) / 2 }' || true)
            label=$([ "$measure" = cpu ] && echo "proxy CPU per request (auth-disabled's ÷ this)" || echo "HTTP req/s")
            echo "| $target | $label | $(printf '%s · ' "${shares[@]}" | sed 's/ · $//') | $median | ${round_errors[$target]:-0} |"
        done
    done
    echo
    echo "auth-disabled per round: $(for round in $(seq 1 "$ROUNDS"); do printf '%s req/s at %s µs · ' \
        "${round_rates[portcullis,$round]}" "${round_cpu[portcullis,$round]}"; done | sed 's/ · $//')"
fi
echo
echo "| token API, one call at a time | calls | errors | client p50 µs | client p99 µs | client mean µs | portcullis's own mean µs (provider time left out) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for line in "$exchange_line" "$refresh_line"; do
    echo "| ${line%% *} | $(field "$line" calls) | $(field "$line" errors) | $(field "$line" p50_us) | $(field "$line" p99_us)" \
        "| $(field "$line" mean_us) | $(field "$line" portcullis_mean_us) |"
done
echo
echo "| portcullis, idle WebSockets | opened | errors | open time s | RSS before KiB | RSS after KiB | KiB per connection | closes answered | closes unanswered | close errors |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
echo "| $HOLD_COUNT requested | $(field "$hold_line" opened) | $(field "$hold_line" errors) | $(field "$hold_line" open_s)" \
    "| $(field "$hold_line" rss_before_kib) | $(field "$hold_line" rss_after_kib) | $(field "$hold_line" kib_per_conn)" \
    "| $(field "$close_line" closed) | $(field "$close_line" unanswered_closes) | $(field "$close_line" close_errors) |"

echo
echo "| portcullis, forced close of live WebSockets | closed | not closed within 10 s | close codes | p50 ms | p99 ms | max ms |"
echo "|---|---:|---:|---|---:|---:|---:|"
ms() { awk -v us="$1" 'BEGIN { printf "%.1f", us / 1000 }'; }
echo "| $FORCED_COUNT held, one admin DELETE | $(field "$forced_line" closed) | $(field "$forced_line" errors)" \
    "| $(field "$forced_line" codes) | $(ms "$(field "$forced_line" p50_us)") | $(ms "$(field "$forced_line" p99_us)")" \
    "| $(ms "$(field "$forced_line" max_us)") |"

if [ -s "$work/client.log" ]; then
    echo
    echo "load tool messages:"
    sed 's/^/    /' "$work/client.log"
fi
