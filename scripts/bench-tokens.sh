#!/usr/bin/env bash
# The bearer-token check against the machine's own crypto ceiling: criterion's
# token benches (benches/decisions.rs) beside `openssl speed`'s verify/s for
# RSA-2048 and ECDSA P-256, in the same run, pinned to the same core, with
# the ratio of each benched rate to its openssl ceiling.
#
#   scripts/bench-tokens.sh [RUNS]          # default 3 runs
#
# Environment:
#   BEFORE   a prebuilt decisions bench binary to run beside this tree's
#            (e.g. one built from an earlier commit with
#            `cargo bench --bench decisions --no-run` and copied aside), so
#            "before" and "after" are measured in the same run
#   CPU      the core both openssl and the benches are pinned to (default 1)
#   SECONDS_PER_BENCH  criterion measurement time and openssl's -seconds (default 5)
#
# Both count per second of CPU time (openssl speed by default, the token
# benches by the thread's CPU clock), so other work on the shared core
# moves the figures less than wall-clock rates would.
#
# Each row: one bench, its rate (verifications or requests per second, one
# core) and its share of the openssl verify rate for its algorithm
# (rs256 → rsa2048, es256 → ecdsap256; the cached rows have none), and with
# BEFORE, the change from before to after.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:-3}
CPU=${CPU:-1}
SECS=${SECONDS_PER_BENCH:-5}
FILTER='^token/(crypto_(rs|es)256|first_seen_(rs|es)256|first_seen_request_(distinct_)?(rs|es)256|cached_check|cached_request)$'

echo "# building the bench (release profile)" >&2
AFTER=$(cargo bench --bench decisions --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\/decisions-[^"]*\)".*/\1/p' | tail -n1)
[[ -x "$AFTER" ]] || { echo "could not build the decisions bench" >&2; exit 1; }

# verify/s of the last line `openssl speed` prints for one key type: the
# column after sign/s (openssl 3 prints sign verify [encr decr] then the
# per-second figures in the same order).
openssl_verify() {
    local what=$1
    taskset -c "$CPU" openssl speed -seconds "$SECS" "$what" 2>/dev/null |
        awk -v what="$what" '
            what == "rsa2048" && $1 == "rsa" && $2 == "2048" { line = $0 }
            what == "ecdsap256" && /ecdsa \(nistp256\)/ { line = $0 }
            END {
                n = split(line, f, /[ \t]+/)
                # The rates are the last fields: rsa has 4 (sign verify encr decr) or 2.
                if (what == "rsa2048" && n >= 10) print f[n-2]; else print f[n]
            }'
}

# "name rate" per bench, rate in elements per second (criterion's thrpt
# middle estimate).
criterion_rates() {
    local bin=$1
    taskset -c "$CPU" "$bin" --bench "$FILTER" --noplot --discard-baseline \
        --warm-up-time 2 --measurement-time "$SECS" 2>/dev/null |
        awk '
            /^token\// { name = $1 }
            /thrpt:/ && /elem\/s/ {
                sub(/.*\[/, ""); sub(/\].*/, "")
                value = $3; unit = $4
                scale = unit == "Kelem/s" ? 1e3 : unit == "Melem/s" ? 1e6 : unit == "Gelem/s" ? 1e9 : 1
                printf "%s %.0f\n", name, value * scale
            }'
}

for run in $(seq 1 "$RUNS"); do
    echo "# run $run of $RUNS ($(date -u +%FT%TZ), core $CPU)" >&2
    rsa=$(openssl_verify rsa2048)
    ec=$(openssl_verify ecdsap256)
    unset before after
    declare -A before after
    if [[ -n "${BEFORE:-}" ]]; then
        while read -r name rate; do before[$name]=$rate; done < <(criterion_rates "$BEFORE")
    fi
    while read -r name rate; do after[$name]=$rate; done < <(criterion_rates "$AFTER")
    echo
    echo "run $run: openssl speed rsa2048 verify/s = $rsa, ecdsap256 verify/s = $ec (taskset -c $CPU, -seconds $SECS)"
    printf '| %-32s | %12s | %7s | %12s | %7s | %7s |\n' bench "before /s" "ratio" "after /s" "ratio" "change"
    printf '|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..34})" "--------------" "---------" "--------------" "---------" "---------"
    for name in $(printf '%s\n' "${!after[@]}" | sort); do
        # Ratios only where an openssl figure is the ceiling of the row.
        ceiling=
        [[ $name == *rs256* ]] && ceiling=$rsa
        [[ $name == *es256* ]] && ceiling=$ec
        b=${before[$name]:-}
        a=${after[$name]}
        ratio() { [[ -n $1 && -n $ceiling ]] && awk -v r="$1" -v c="$ceiling" 'BEGIN { printf "%.0f %%", 100 * r / c }' || echo "-"; }
        change=-
        [[ -n $b ]] && change=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%+.0f %%", 100 * (a - b) / b }')
        printf '| %-32s | %12s | %7s | %12s | %7s | %7s |\n' "$name" "${b:--}" "$(ratio "$b")" "$a" "$(ratio "$a")" "$change"
    done
done
