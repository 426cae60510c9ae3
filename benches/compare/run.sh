#!/usr/bin/env bash
# The published cross-proxy benchmark (issue 12). On loopback, in front of
# the same upstream (the load tool's echo backend) and the same OpenID
# provider (oidc-provider, benches/compare/idp.mjs), it brings up
#
#   portcullis                      (release build of this checkout)
#   bare Pingora                    (`load bare-proxy`: Pingora forwarding, nothing else)
#   nginx                           (nginx-light, plain reverse proxy; no OIDC in Debian)
#   Apache httpd + mod_auth_openidc (event MPM, mod_proxy_http with upgrade=websocket)
#
# drives them with the project's load tool (benches/load.rs) and writes one
# Markdown table (results.md), a PNG chart (chart.png) and the raw figures
# (raw.tsv) to the output folder:
#
#   - HTTP req/s (keep-alive GET) and WebSocket handshakes/s without auth,
#     with a cookie session (one real login per proxy), with a cached bearer
#     token (one token the provider issued, on every request) and with a
#     first-seen bearer token, RS256 and ES256 (a distinct token minted with
#     the provider's keys for every request, each seen once);
#   - idle WebSockets held (no auth) and the proxy's RSS per connection
#     (all of its processes: nginx's master and worker, Apache's children);
#   - the time from a session's logout to the close of its live WebSocket
#     (mod_auth_openidc never closes one: reported as "never within N s").
#
# and the issue's targets as ratios of figures taken in the same run.
#
# Usage: benches/compare/run.sh [--quick | --check-configs] [--out DIR]
#
#   (full)           each rate DURATION s (10), RUNS runs (3), HOLD_COUNT (5000) idle
#                    sockets; proxies pinned to CPU 0, everything else to the other
#                    CPUs (PINNED=1); release builds; results to benches/compare/results
#   --quick          every proxy, every row for ~1 s with small counts, debug-built or
#                    prebuilt binaries, results to a temporary folder unless --out;
#                    what the test suite runs (tests/compare.rs)
#   --check-configs  generate the configs and check them (apache2 -t, nginx -t,
#                    portcullis check), then stop
#
# Tunables (environment): DURATION, RUNS, HOLD_COUNT, FRESH_COUNT (first-seen
# tokens per rate, 20000: a rate ends early when they are used up; minted
# per run, two batches per algorithm shared by portcullis and Apache),
# HTTP_CONCURRENCY (32), WS_CONCURRENCY (16), LOGOUT_WAIT seconds (10),
# PINNED, SERVER_LIFETIME seconds (3600), BENCH_PORTCULLIS and BENCH_LOAD
# (prebuilt binaries), PROFILE (release | debug), APACHE_LOG_LEVEL (warn),
# KEEP_WORK=1 (keep the temporary folder: configs, logs, keys).
#
# Partial runs (environment; the memory and logout sections and the report
# are then skipped, and the raw figures are printed): PROXIES (a subset of
# `portcullis bare-pingora nginx apache`), ROWS (a subset of `none cookie
# cached fresh-rs256 fresh-es256`), and BASELINE_PORTCULLIS=BINARY: another
# portcullis build (e.g. of the commit before a change) as the proxy
# `portcullis-before`, pinned with the others and driven right after
# `portcullis` in every run, with the same config on port 27087 (no
# cookie row: the provider knows only one callback).
#
# Everything listens on 127.0.0.1, on fixed ports: 27080 portcullis (27090
# its admin), 27081 backend, 27082 bare Pingora, 27083 provider (27086
# over TLS), 27084 nginx, 27085 Apache (all below the kernel's ephemeral
# range, 32768 and up by default, so that no client socket of this or any
# other test already holds one). Every server runs under `timeout` (SERVER_LIFETIME),
# and the script stops exactly the processes it started.
set -euo pipefail

cd "$(dirname "$0")/../.."

MODE=full
OUT=
while (($#)); do
    case "$1" in
        --quick) MODE=quick ;;
        --check-configs) MODE=check ;;
        --out)
            OUT=${2:?--out needs a folder}
            shift
            ;;
        *)
            echo "usage: $0 [--quick | --check-configs] [--out DIR]" >&2
            exit 2
            ;;
    esac
    shift
done

if [ "$MODE" = quick ]; then
    DURATION=${DURATION:-1} RUNS=${RUNS:-1} HOLD_COUNT=${HOLD_COUNT:-100}
    FRESH_COUNT=${FRESH_COUNT:-300} LOGOUT_WAIT=${LOGOUT_WAIT:-2}
    PINNED=${PINNED:-0} PROFILE=${PROFILE:-debug}
    APACHE_SERVERS=2 APACHE_THREADS=128
    # A quick run is over in a minute: servers orphaned by a killed harness
    # free the fixed ports soon.
    SERVER_LIFETIME=${SERVER_LIFETIME:-300}
else
    DURATION=${DURATION:-10} RUNS=${RUNS:-3} HOLD_COUNT=${HOLD_COUNT:-5000}
    FRESH_COUNT=${FRESH_COUNT:-20000} LOGOUT_WAIT=${LOGOUT_WAIT:-10}
    PINNED=${PINNED:-1} PROFILE=${PROFILE:-release}
    # Room for HOLD_COUNT idle WebSockets, each holding a worker thread.
    APACHE_SERVERS=6 APACHE_THREADS=$(((HOLD_COUNT + 500) / 6 + 1))
fi
HTTP_CONCURRENCY=${HTTP_CONCURRENCY:-32}
WS_CONCURRENCY=${WS_CONCURRENCY:-16}
SERVER_LIFETIME=${SERVER_LIFETIME:-3600}

HOST=127.0.0.1
PORTCULLIS_PORT=27080
ADMIN_PORT=27090
BACKEND_PORT=27081
BARE_PORT=27082
IDP_PORT=27083
IDP_TLS_PORT=27086
NGINX_PORT=27084
APACHE_PORT=27085
BASELINE_PORT=27087
BASELINE_ADMIN_PORT=27091
ORIGIN=http://bench.localhost
ISSUER=http://$HOST:$IDP_PORT
folder=benches/compare

# apache2 and nginx live in /usr/sbin, which a non-root PATH may lack.
PATH="$PATH:/usr/sbin:/sbin"
for tool in apache2 nginx node taskset; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "$tool is missing: run scripts/setup.sh (it installs apache2, libapache2-mod-auth-openidc, nginx-light)" >&2
        exit 1
    fi
done
if [ ! -f /usr/lib/apache2/modules/mod_auth_openidc.so ]; then
    echo "mod_auth_openidc is missing: run scripts/setup.sh (libapache2-mod-auth-openidc)" >&2
    exit 1
fi

# Idle sockets: the load tool and the proxies need a descriptor each.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d)
# Apache's children run as another user and read nothing here but need to
# traverse the folder for their runtime files.
chmod 755 "$work"
server_pids=()

cleanup() {
    local status=$? pid
    # SIGINT through `timeout` to each server: Pingora's fast shutdown,
    # nginx's fast shutdown, Apache's stop, node's exit.
    for pid in "${server_pids[@]}"; do
        kill -INT "$pid" 2>/dev/null || true
    done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${server_pids[@]}" "${apache_pids[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then alive=1; fi
        done
        if [ "$alive" = 0 ]; then break; fi
        sleep 0.1
    done
    for pid in "${server_pids[@]}" "${apache_pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ "$status" != 0 ]; then
        for log in "$work"/*.log; do
            [ -s "$log" ] || continue
            echo "--- $(basename "$log") (last lines)" >&2
            tail -n 15 "$log" >&2
        done
    fi
    if [ "${KEEP_WORK:-0}" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
apache_pids=()
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh

# ---------------------------------------------------------------- configs

random_secret() { head -c 24 /dev/urandom | base64 | tr -d '+/='; }
COMPARE_PORTCULLIS_SECRET=$(random_secret)
COMPARE_APACHE_SECRET=$(random_secret)
export COMPARE_PORTCULLIS_SECRET COMPARE_APACHE_SECRET
if [ "$(id -u)" = 0 ]; then apache_user=www-data apache_group=www-data; else
    apache_user=$(id -un) apache_group=$(id -gn)
fi

# render TEMPLATE OUTPUT: the template with every @NAME@ filled in.
render() {
    sed -e "s|@WORK@|$work|g" -e "s|@ISSUER@|$ISSUER|g" -e "s|@ORIGIN@|$ORIGIN|g" \
        -e "s|@PORTCULLIS_PORT@|$PORTCULLIS_PORT|g" -e "s|@ADMIN_PORT@|$ADMIN_PORT|g" \
        -e "s|@BACKEND_PORT@|$BACKEND_PORT|g" -e "s|@NGINX_PORT@|$NGINX_PORT|g" \
        -e "s|@APACHE_PORT@|$APACHE_PORT|g" -e "s|@IDP_TLS_PORT@|$IDP_TLS_PORT|g" -e "s|@APACHE_USER@|$apache_user|g" \
        -e "s|@APACHE_GROUP@|$apache_group|g" -e "s|@APACHE_SECRET@|$COMPARE_APACHE_SECRET|g" \
        -e "s|@APACHE_PASSPHRASE@|$(random_secret)|g" -e "s|@APACHE_SERVERS@|$APACHE_SERVERS|g" \
        -e "s|@APACHE_THREADS@|$APACHE_THREADS|g" -e "s|@APACHE_LOG_LEVEL@|${APACHE_LOG_LEVEL:-warn}|g" \
        -e "s|@APACHE_WORKERS@|$((APACHE_SERVERS * APACHE_THREADS))|g" "$1" >"$2"
    if grep -q '@[A-Z_]*@' "$2"; then
        echo "$1: unfilled placeholders: $(grep -o '@[A-Z_]*@' "$2" | sort -u | tr '\n' ' ')" >&2
        exit 1
    fi
}
keys=$work/keys
mkdir -p "$keys"
render "$folder/apache.conf.in" "$work/apache.conf"
render "$folder/nginx.conf.in" "$work/nginx.conf"
render "$folder/portcullis.yaml.in" "$work/portcullis.yaml"
if [ -n "${BASELINE_PORTCULLIS:-}" ]; then
    PORTCULLIS_PORT=$BASELINE_PORT ADMIN_PORT=$BASELINE_ADMIN_PORT
    render "$folder/portcullis.yaml.in" "$work/portcullis-before.yaml"
    PORTCULLIS_PORT=27080 ADMIN_PORT=27090
fi
mkdir -p "$work/apache-run" "$work/nginx-tmp"

if [ "$MODE" = check ]; then
    portcullis_bin=${BENCH_PORTCULLIS:-}
    if [ -z "$portcullis_bin" ]; then
        cargo build --bin portcullis
        portcullis_bin=target/debug/portcullis
    fi
    failed=0
    echo "== apache2 -t" && apache2 -t -f "$work/apache.conf" || failed=1
    echo "== nginx -t" && nginx -t -c "$work/nginx.conf" -p "$work" || failed=1
    echo "== portcullis check" && "$portcullis_bin" check -c "$work/portcullis.yaml" || failed=1
    if [ "$failed" != 0 ]; then
        echo "a generated config is invalid" >&2
        exit 1
    fi
    echo "every generated config is valid"
    exit 0
fi

if [ ! -d tests/e2e/node_modules/oidc-provider ]; then
    echo "installing the provider (npm ci in tests/e2e)..." >&2
    (cd tests/e2e && PUPPETEER_SKIP_DOWNLOAD=1 PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund >&2)
fi

locate_binaries "$PROFILE"
if [ "$MODE" = full ] && [ -z "$OUT" ] && [ -z "${PROXIES:-}${ROWS:-}${BASELINE_PORTCULLIS:-}" ]; then
    OUT=$folder/results
fi
if [ -z "$OUT" ]; then OUT=$work/results; fi
mkdir -p "$OUT"

proxy_cpus=()
other_cpus=()
if [ "$PINNED" = 1 ]; then
    if [ "$(nproc)" -lt 2 ]; then
        echo "PINNED=1 needs at least two CPUs (PINNED=0 to run unpinned)" >&2
        exit 1
    fi
    proxy_cpus=(taskset -c 0)
    other_cpus=(taskset -c "1-$(($(nproc) - 1))")
fi

# ---------------------------------------------------------------- servers

# The machine is shared: its load before and after goes with the figures.
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)

start backend "$BACKEND_PORT" "${other_cpus[@]}" "$load_bin" backend --listen "$HOST:$BACKEND_PORT" --threads 1
# The provider's TLS certificate, for Apache's JWKS fetch.
"$load_bin" certs --dir "$keys"
chmod 755 "$keys"
start idp "$IDP_PORT" "${other_cpus[@]}" node "$folder/idp.mjs" "$IDP_PORT" "$IDP_TLS_PORT" "$keys" \
    "http://$HOST:$PORTCULLIS_PORT/.auth/callback" "http://$HOST:$APACHE_PORT/oidc/redirect_uri"
for _ in $(seq 100); do
    if [ -f "$keys/ready" ]; then break; fi
    sleep 0.1
done
if [ ! -f "$keys/ready" ]; then
    echo "the provider did not get ready" >&2
    exit 1
fi
start portcullis "$PORTCULLIS_PORT" "${proxy_cpus[@]}" "$portcullis_bin" run -c "$work/portcullis.yaml"
portcullis_pid=$STARTED_PID
if [ -n "${BASELINE_PORTCULLIS:-}" ]; then
    start portcullis-before "$BASELINE_PORT" "${proxy_cpus[@]}" "$BASELINE_PORTCULLIS" run -c "$work/portcullis-before.yaml"
fi
start bare-pingora "$BARE_PORT" "${proxy_cpus[@]}" "$load_bin" bare-proxy --listen "$HOST:$BARE_PORT" \
    --upstream "$HOST:$BACKEND_PORT" --threads 1
bare_pid=$STARTED_PID
start nginx "$NGINX_PORT" "${proxy_cpus[@]}" nginx -c "$work/nginx.conf" -p "$work" -g 'daemon off;'
nginx_pid=$STARTED_PID
start apache "$APACHE_PORT" "${proxy_cpus[@]}" apache2 -f "$work/apache.conf" -DFOREGROUND
apache_pid=$STARTED_PID
# Its children too: should the parent die first, they are stopped by pid.
mapfile -t apache_pids < <(echo "$apache_pid"; pgrep -P "$apache_pid")

# pids_of PROXY: the processes whose RSS is the proxy's.
pids_of() {
    case "$1" in
        portcullis) echo "$portcullis_pid" ;;
        bare-pingora) echo "$bare_pid" ;;
        nginx) echo "$nginx_pid" $(pgrep -P "$nginx_pid") ;;
        apache) echo "$apache_pid" $(pgrep -P "$apache_pid") ;;
    esac
}

# ---------------------------------------------------------------- credentials

# login START_URL: one browser login through a proxy; its Cookie header.
login() {
    "${other_cpus[@]}" node "$folder/login.mjs" "$1" 2>>"$work/login.log"
}
portcullis_login() { login "http://$HOST:$PORTCULLIS_PORT/.auth/login?deployment=authenticated&rd=/"; }
apache_login() { login "http://$HOST:$APACHE_PORT/cookie/v1/ping?deploymentId=open"; }
declare -A cookie_of
cookie_of[portcullis]=$(portcullis_login)
cookie_of[apache]=$(apache_login)
cached_bearer="Authorization: Bearer $(cat "$keys/cached-token")"

read -ra proxies <<<"${PROXIES:-portcullis bare-pingora nginx apache}"
read -ra rows <<<"${ROWS:-none cookie cached fresh-rs256 fresh-es256}"
partial=0
if [ -n "${PROXIES:-}${ROWS:-}${BASELINE_PORTCULLIS:-}" ]; then partial=1; fi
if [ -n "${BASELINE_PORTCULLIS:-}" ]; then
    for i in "${!proxies[@]}"; do
        if [ "${proxies[$i]}" = portcullis ]; then
            proxies=("${proxies[@]:0:$((i + 1))}" portcullis-before "${proxies[@]:$((i + 1))}")
            break
        fi
    done
fi
declare -A port_of=([portcullis]=$PORTCULLIS_PORT [portcullis-before]=$BASELINE_PORT [bare-pingora]=$BARE_PORT [nginx]=$NGINX_PORT [apache]=$APACHE_PORT)

# supports PROXY ROW: whether PROXY can authenticate that way at all.
supports() {
    case "$1:$2" in
        portcullis-before:cookie) return 1 ;;
        *:none | portcullis:* | portcullis-before:* | apache:*) return 0 ;;
        *) return 1 ;;
    esac
}

# target PROXY ROW KIND (http|ws): the URL the row's load goes to.
target() {
    local scheme=http resource=ping path
    if [ "$3" = ws ]; then scheme=ws resource=chat; fi
    case "$1:$2" in
        portcullis:none | portcullis-before:none) path="/v1/$resource?deploymentId=open" ;;
        portcullis:* | portcullis-before:*) path="/v1/$resource?deploymentId=authenticated" ;;
        apache:none) path="/open/v1/$resource?deploymentId=open" ;;
        apache:cookie) path="/cookie/v1/$resource?deploymentId=open" ;;
        apache:*) path="/bearer/v1/$resource?deploymentId=open" ;;
        *) path="/v1/$resource?deploymentId=open" ;;
    esac
    echo "$scheme://$HOST:${port_of[$1]}$path"
}

# credential PROXY ROW KIND: the load tool's arguments for the row's credential.
credential() {
    case "$2" in
        none) ;;
        cookie) printf '%s\n' --header "${cookie_of[$1]}" ;;
        cached) printf '%s\n' --header "$cached_bearer" ;;
        fresh-rs256) printf '%s\n' --fresh-file "$work/tokens-RS256-$3" --fresh-count "$FRESH_COUNT" ;;
        fresh-es256) printf '%s\n' --fresh-file "$work/tokens-ES256-$3" --fresh-count "$FRESH_COUNT" ;;
    esac
}

# Both authenticating proxies must refuse a forged token, or their rows
# would measure nothing: the provider's real token with its signature's
# last characters changed.
forged_bearer="$(sed 's/.....$/AAAAA/' "$keys/cached-token")"
for url in "$(target portcullis cached http)" "$(target apache cached http)"; do
    status=$(curl -s -o /dev/null -w '%{http_code}' -H "Origin: $ORIGIN" -H "Authorization: Bearer $forged_bearer" "$url")
    if [ "$status" != 401 ]; then
        echo "$url answered a forged bearer token with $status, not 401" >&2
        exit 1
    fi
done

raw=$work/raw.tsv
: >"$raw"
# record RUN PROXY METRIC VALUE ERRORS
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$raw"; }

# ---------------------------------------------------------------- rates

for run in $(seq "$RUNS"); do
    # This run's first-seen tokens, one batch for the HTTP rates and one for
    # the handshakes: each proxy sees each token once (portcullis and Apache
    # keep their own caches, so they share a batch). Minted on every CPU,
    # while the proxies are idle; the RS256 ones take a while.
    echo "run $run/$RUNS: minting first-seen tokens" >&2
    for alg in RS256 ES256; do
        for kind in http ws; do
            "$load_bin" mint --fresh-keys "$keys" --fresh-alg "$alg" --fresh-count "$FRESH_COUNT" \
                --out "$work/tokens-$alg-$kind" 2>>"$work/client.log"
        done
    done
    # Row by row, each row through every proxy in turn: a cross-proxy ratio
    # (first-seen tokens against Apache) compares figures taken seconds
    # apart, not minutes, and this machine drifts by ±20 % over minutes.
    for row in "${rows[@]}"; do
        for proxy in "${proxies[@]}"; do
            if ! supports "$proxy" "$row"; then
                record "$run" "$proxy" "http:$row" n/a -
                record "$run" "$proxy" "ws:$row" n/a -
                continue
            fi
            mapfile -t extra < <(credential "$proxy" "$row" http)
            echo "run $run/$RUNS: $proxy $row: http ${DURATION}s, handshakes ${DURATION}s" >&2
            line=$("${other_cpus[@]}" "$load_bin" http --url "$(target "$proxy" "$row" http)" \
                --concurrency "$HTTP_CONCURRENCY" --duration "$DURATION" --header "Origin: $ORIGIN" \
                "${extra[@]}" 2>>"$work/client.log")
            record "$run" "$proxy" "http:$row" "$(field "$line" requests_per_s)" "$(field "$line" errors)"
            mapfile -t extra < <(credential "$proxy" "$row" ws)
            line=$("${other_cpus[@]}" "$load_bin" handshakes --url "$(target "$proxy" "$row" ws)" \
                --concurrency "$WS_CONCURRENCY" --duration "$DURATION" --origin "$ORIGIN" \
                "${extra[@]}" 2>>"$work/client.log")
            record "$run" "$proxy" "ws:$row" "$(field "$line" handshakes_per_s)" "$(field "$line" errors)"
        done
    done
done

if [ "$partial" = 1 ]; then
    cp "$raw" "$OUT/raw.tsv"
    echo "partial run (PROXIES / ROWS / BASELINE_PORTCULLIS): raw figures, run proxy metric value errors; load average $load_at_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
    cat "$raw"
    exit 0
fi

# ---------------------------------------------------------------- memory

for proxy in "${proxies[@]}"; do
    echo "$proxy: holding $HOLD_COUNT idle WebSockets" >&2
    pid_args=()
    for pid in $(pids_of "$proxy"); do pid_args+=(--pid "$pid"); done
    out=$("${other_cpus[@]}" "$load_bin" hold --url "$(target "$proxy" none ws)" --count "$HOLD_COUNT" \
        --hold 2 --origin "$ORIGIN" "${pid_args[@]}" 2>>"$work/client.log")
    line=$(grep '^hold opened=' <<<"$out")
    record 1 "$proxy" hold:opened "$(field "$line" opened)" "$(field "$line" errors)"
    record 1 "$proxy" hold:kib_per_conn "$(field "$line" kib_per_conn)" "$(field "$line" errors)"
done

# ---------------------------------------------------------------- logout

# logout_figure LINE: the close time in ms, or never:SECONDS.
logout_figure() {
    if [ "$(field "$1" closed)" = 1 ]; then field "$1" close_ms; else echo "never:$(field "$1" waited_s)"; fi
}

# A fresh session for each (the rows above keep theirs).
echo "portcullis: logout, then the live socket's close" >&2
cookie=$(portcullis_login)
line=$("${other_cpus[@]}" "$load_bin" logout-close --url "$(target portcullis cookie ws)" --origin "$ORIGIN" \
    --header "$cookie" --logout "http://$HOST:$PORTCULLIS_PORT/.auth/logout" --method POST \
    --wait "$LOGOUT_WAIT" 2>>"$work/client.log")
record 1 portcullis logout:close_ms "$(logout_figure "$line")" 0
echo "apache: logout, then the live socket's close (waits up to ${LOGOUT_WAIT}s)" >&2
cookie=$(apache_login)
line=$("${other_cpus[@]}" "$load_bin" logout-close --url "$(target apache cookie ws)" --origin "$ORIGIN" \
    --header "$cookie" --logout "http://$HOST:$APACHE_PORT/oidc/redirect_uri?logout=http%3A%2F%2F$HOST%3A$APACHE_PORT%2F" \
    --wait "$LOGOUT_WAIT" 2>>"$work/client.log")
record 1 apache logout:close_ms "$(logout_figure "$line")" 0
for proxy in bare-pingora nginx; do record 1 "$proxy" logout:close_ms n/a -; done

# ---------------------------------------------------------------- report

pinning="unpinned"
if [ "$PINNED" = 1 ]; then pinning="proxies pinned to CPU 0, backend, provider and load tool to CPUs 1-$(($(nproc) - 1))"; fi
cat >"$work/meta" <<EOF
mode=$MODE
date=$(date -u '+%Y-%m-%d %H:%M UTC')
commit=$(git describe --always --dirty 2>/dev/null || echo '?')
machine=$(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr)
load_average=$load_at_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end
profile=$PROFILE
pinning=$pinning
versions=portcullis $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $(apache2 -v | sed -n 's/^Server version: //p'); mod_auth_openidc $(dpkg-query -W -f='${Version}' libapache2-mod-auth-openidc 2>/dev/null || echo '?'); $(nginx -v 2>&1 | sed 's/^nginx version: //'); oidc-provider $(node -p "require('./tests/e2e/node_modules/oidc-provider/package.json').version")
settings=${DURATION}s per rate, $RUNS run(s); HTTP $HTTP_CONCURRENCY keep-alive connections; handshakes $WS_CONCURRENCY at a time, each on a new connection; first-seen tokens: up to $FRESH_COUNT per rate (a rate ends early when they run out); $HOLD_COUNT idle sockets; logout wait ${LOGOUT_WAIT}s; one worker thread for portcullis, bare Pingora and nginx, Apache event MPM $APACHE_SERVERS x $APACHE_THREADS threads
command=benches/compare/run.sh$( [ "$MODE" = quick ] && echo " --quick")
EOF
cp "$raw" "$OUT/raw.tsv"
"$load_bin" compare-report --raw "$raw" --meta "$work/meta" --out "$OUT"
cat "$OUT/results.md"
if [ -s "$work/client.log" ]; then
    echo
    echo "load tool messages:"
    sed 's/^/    /' "$work/client.log"
fi
