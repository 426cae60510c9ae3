#!/usr/bin/env bash
# Soak: one portcullis instance holding COUNT (default 9 000) authenticated
# WebSockets for DURATION seconds (default 600) with chat traffic, beside a
# steady trickle of logins and logouts, idle expiries and refreshing
# token-API clients (`load soak`, benches/load/soak.rs, says what each must
# do). Fails unless nothing was dropped that should stay and nothing kept
# that should go; prints the figures and the server's RSS, descriptors and
# live connections over time as markdown.
#
# Usage: bash benches/soak.sh
# Tunables (environment): COUNT (9000), DURATION seconds (600), STORE
# (memory or redis; default memory), REFRESHING (20), TRICKLE_EVERY seconds
# (2), MESSAGE_EVERY seconds (30).
#
# Bounded: every server runs under `timeout` (DURATION + 600 s) and listens
# on loopback, on fixed ports: 28090 portcullis, 28091 backend, 28093
# development OpenID provider, 28094 redis-server, 29092 admin.
set -euo pipefail

cd "$(dirname "$0")/.."

COUNT=${COUNT:-9000}
DURATION=${DURATION:-600}
STORE=${STORE:-memory}
REFRESHING=${REFRESHING:-20}
TRICKLE_EVERY=${TRICKLE_EVERY:-2}
MESSAGE_EVERY=${MESSAGE_EVERY:-30}
IDLE_TIMEOUT=60
SERVER_LIFETIME=$((DURATION + 600))

HOST=127.0.0.1
PORT=28090
BACKEND_PORT=28091
IDP_PORT=28093
REDIS_PORT=28094
ADMIN_PORT=29092
ORIGIN=http://soak.localhost
SITE_CALLBACK=http://127.0.0.1/callback

case $STORE in
    memory | redis) ;;
    *)
        echo "STORE=$STORE: expected memory or redis" >&2
        exit 2
        ;;
esac
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
for tool in openssl curl; do
    if ! command -v "$tool" >/dev/null; then
        echo "$tool is not installed" >&2
        exit 1
    fi
done
if [ "$STORE" = redis ] && ! command -v redis-server >/dev/null; then
    echo "redis-server is not installed (scripts/setup.sh installs it)" >&2
    exit 1
fi

work=$(mktemp -d)
server_pids=()
cleanup() {
    local pid
    for pid in "${server_pids[@]}"; do
        kill -INT "$pid" 2>/dev/null || true
    done
    sleep 1
    for pid in "${server_pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
locate_binaries release

store_config="store: memory"
if [ "$STORE" = redis ]; then
    mkdir "$work/redis"
    start redis "$REDIS_PORT" redis-server --port "$REDIS_PORT" --bind "$HOST" --save '' \
        --appendonly no --dir "$work/redis"
    store_config="store: redis
  redis: {url: \"redis://$HOST:$REDIS_PORT/0\"}"
fi
cat >"$work/portcullis.yaml" <<YAML
listen: [{address: "$HOST:$PORT"}]
public_url: "http://$HOST:$PORT"
threads: 1
admin: {address: "$HOST:$ADMIN_PORT"}
providers:
  dev:
    issuer: "http://$HOST:$IDP_PORT"
    client_id: portcullis-demo
    client_secret: {env: SOAK_CLIENT_SECRET}
    audiences: ["api://messaging"]
messengers:
  steady: {authentication: {enabled: true, provider: dev}, assertion: false}
  short:
    authentication: {enabled: true, provider: dev}
    assertion: false
    session: {idle_timeout: ${IDLE_TIMEOUT}s, token_lifetime: ${IDLE_TIMEOUT}s}
upstreams:
  backend: {servers: ["$HOST:$BACKEND_PORT"]}
deployments:
  - {id: soak-steady, messenger: steady, upstream: backend, allowed_origins: ["$ORIGIN"]}
  - {id: soak-short, messenger: short, upstream: backend, allowed_origins: ["$ORIGIN"],
     redirect_uris: ["$SITE_CALLBACK"]}
routes:
  - {path_prefix: /v1, deployment_from: {query: deploymentId}}
# One client address makes every login and token call here.
rate_limits:
  per_client: {per_minute: 1000000, burst: 100000}
  per_deployment: {per_minute: 1000000, burst: 100000}
sessions:
  $store_config
logging: {format: text, level: warn}
YAML

start backend "$BACKEND_PORT" "$load_bin" backend --listen "$HOST:$BACKEND_PORT" --threads 1
start idp "$IDP_PORT" "$load_bin" idp --listen "$HOST:$IDP_PORT" --token-file "$work/token"
SOAK_CLIENT_SECRET=demo-secret start portcullis "$PORT" "$portcullis_bin" run -c "$work/portcullis.yaml"
portcullis_pid=$STARTED_PID

echo "soak: $COUNT steady chats for $DURATION s (store: $STORE)..." >&2
set +e
out=$(timeout $((DURATION + 300)) "$load_bin" soak --url "http://$HOST:$PORT" \
    --admin "http://$HOST:$ADMIN_PORT" --provider "http://$HOST:$IDP_PORT" --pid "$portcullis_pid" \
    --steady-deployment soak-steady --short-deployment soak-short --redirect-uri "$SITE_CALLBACK" \
    --idle-timeout "$IDLE_TIMEOUT" --origin "$ORIGIN" --count "$COUNT" --duration "$DURATION" \
    --refreshing-clients "$REFRESHING" --trickle-every "$TRICKLE_EVERY" \
    --message-every "$MESSAGE_EVERY" 2>"$work/client.log")
status=$?
set -e
if [ "$status" != 0 ]; then
    echo "the soak run failed (exit $status):" >&2
    cat "$work/client.log" >&2
    exit 1
fi

opened=$(grep '^soak opened ' <<<"$out")
steady=$(grep '^soak steady ' <<<"$out")
logout=$(grep '^soak logout ' <<<"$out")
expiry=$(grep '^soak expiry ' <<<"$out")
refresh=$(grep '^soak refresh ' <<<"$out")

echo
echo "portcullis $(git describe --always --dirty 2>/dev/null || echo '?') (release), $(nproc) cores," \
    "$(date -u +%F); one instance (1 worker thread), store $STORE; the load tool, backend and provider" \
    "share the same cores; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| what | figures |"
echo "|---|---|"
echo "| steady chats opened | $(field "$opened" steady) over $(field "$opened" sessions) sessions, $(field "$opened" errors) errors, in $(field "$opened" open_s) s |"
echo "| steady chats dropped (must be 0) | $(field "$steady" dropped) |"
echo "| steady messages / echoes / echo missing | $(field "$steady" messages) / $(field "$steady" echoes) / $(field "$steady" echo_missing) |"
echo "| steady closes at the end answered / unanswered | $(field "$steady" closed_answered) / $(field "$steady" close_unanswered) |"
echo "| logouts: $(field "$logout" cases) cases | ${logout#soak logout cases=* } |"
echo "| idle expiries (${IDLE_TIMEOUT} s): $(field "$expiry" cases) cases | ${expiry#soak expiry cases=* } |"
echo "| refreshing token clients | $(field "$refresh" clients) clients, $(field "$refresh" refreshes) refreshes, $(field "$refresh" errors) errors, $(field "$refresh" dropped) sockets dropped |"
echo
echo "| t s | RSS MiB | descriptors | live WebSockets |"
echo "|---:|---:|---:|---:|"
while read -r line; do
    echo "| $(field "$line" t_s) | $(awk -v k="$(field "$line" rss_kib)" 'BEGIN { printf "%.1f", k / 1024 }')" \
        "| $(field "$line" fds) | $(field "$line" live) |"
done < <(grep '^sample ' <<<"$out")
if [ -s "$work/client.log" ]; then
    echo
    echo "load tool messages:"
    sort "$work/client.log" | uniq -c | sort -rn | head -20 | sed 's/^/    /'
fi

# The verdict: nothing dropped that should stay, nothing kept that should go.
verdict=0
check() {
    if [ "$2" != "$3" ]; then
        echo "FAILED: $1: $2 (expected $3)" >&2
        verdict=1
    fi
}
check "steady chats opened" "$(field "$opened" steady)" "$COUNT"
check "steady chats dropped" "$(field "$steady" dropped)" 0
check "steady echoes missing" "$(field "$steady" echo_missing)" 0
check "logouts not on time" "$(grep -oE ' (late|early|not_closed|error|code_[0-9]+)=[0-9]+' <<<"$logout" | tr -d '\n')" ""
check "expiries not on time" "$(grep -oE ' (late|early|not_closed|error|code_[0-9]+)=[0-9]+' <<<"$expiry" | tr -d '\n')" ""
check "refreshing clients dropped" "$(field "$refresh" dropped)" 0
check "refresh errors" "$(field "$refresh" errors)" 0
if [ "$verdict" = 0 ]; then
    echo
    echo "soak: every socket ended as its credential said"
fi
exit "$verdict"
