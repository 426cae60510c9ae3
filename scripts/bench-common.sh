# Shared by the benchmark scripts (scripts/bench-load.sh,
# scripts/bench-scale.sh, benches/soak.sh); sourced, not run. Expects HOST,
# SERVER_LIFETIME, work (a temporary directory) and the array server_pids.

port_open() {
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# start NAME PORT COMMAND...: runs a server in the background under a
# lifetime bound and waits until its port accepts connections (START_WAIT
# tenths of a second, 100 unless set). Sets STARTED_PID to the server's own
# pid (the child of `timeout`).
start() {
    local name=$1 port=$2
    shift 2
    if port_open "$port"; then
        echo "port $port is already in use; stop whatever listens there first" >&2
        exit 1
    fi
    # timeout passes SIGINT on to the server.
    timeout -s INT "$SERVER_LIFETIME" "$@" >"$work/$name.log" 2>&1 &
    local wrapper=$!
    server_pids+=("$wrapper")
    for _ in $(seq "${START_WAIT:-100}"); do
        if port_open "$port"; then
            STARTED_PID=$(pgrep -P "$wrapper")
            # The server itself too: a cleanup's KILL must reach it even
            # when `timeout` (which only forwards signals) is gone first.
            server_pids+=("$STARTED_PID")
            return 0
        fi
        if ! kill -0 "$wrapper" 2>/dev/null; then break; fi
        sleep 0.1
    done
    echo "$name did not start listening on port $port; its output:" >&2
    cat "$work/$name.log" >&2
    exit 1
}

# ratio A B: A as a percentage of B ("n/a" when B is zero or missing).
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f%%", 100 * a / b; else print "n/a" }'
}

# field LINE KEY: the value of KEY=value in a result line.
field() {
    sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"
}

# locate_binaries PROFILE (release or debug): sets portcullis_bin and
# load_bin, building them unless BENCH_PORTCULLIS and BENCH_LOAD name
# prebuilt binaries (e.g. kept from an earlier build of the commit under
# test).
locate_binaries() {
    if [ -n "${BENCH_PORTCULLIS:-}" ] && [ -n "${BENCH_LOAD:-}" ]; then
        portcullis_bin=$BENCH_PORTCULLIS load_bin=$BENCH_LOAD
        echo "using prebuilt $portcullis_bin and $load_bin" >&2
    elif [ "$1" = release ]; then
        echo "building (release profile; the first build takes several minutes)..." >&2
        cargo build --release --bin portcullis
        portcullis_bin=target/release/portcullis
        load_bin=$(cargo bench --bench load --no-run --message-format=json |
            sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | grep '/load-' | tail -n1)
    else
        echo "building (debug profile)..." >&2
        cargo build --bin portcullis
        portcullis_bin=target/debug/portcullis
        load_bin=$(cargo test --bench load --no-run --message-format=json |
            sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | grep '/load-' | tail -n1)
    fi
    if [ ! -x "${load_bin:-}" ] || [ ! -x "$portcullis_bin" ]; then
        echo "could not locate the built load tool or portcullis" >&2
        exit 1
    fi
}
