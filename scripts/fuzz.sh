#!/usr/bin/env bash
# Coverage-guided fuzzing of portcullis's hostile-input parsers with AFL++
# (through `cargo afl`, the `afl` crate). Not part of CI: run it by hand or
# on a schedule. Each target runs for a bounded time; a crash fails the run
# and is left in fuzz/out/<target>/default/crashes/ with the input that
# caused it.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 60; TARGET defaults to every target in
# fuzz/src/bin/. With FUZZ_UPDATE_CORPUS=1, the inputs of a run that
# reached new code are added to fuzz/corpus/<target>/, to commit.
#
# Needs: `cargo install cargo-afl` once (it builds AFL++ for the installed
# rustc; `cargo afl config --build --force` after a rustc upgrade).
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
shift || true
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in src/bin/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

if ! cargo afl --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-afl is missing: cargo install cargo-afl" >&2
    exit 2
fi
cargo afl build --bins

# The machine's core_pattern and CPU governor are not ours to change.
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_AFFINITY=1
mkdir -p out
failed=0
for target in "${targets[@]}"; do
    out="out/$target"
    rm -rf "$out"
    echo "== $target: ${seconds}s"
    cargo afl fuzz -V "$seconds" -i "corpus/$target" -o "$out" "target/debug/$target" \
        > "out-$target.log" 2>&1 || { tail -20 "out-$target.log"; failed=1; continue; }
    stats="$out/default/fuzzer_stats"
    grep -E '^(execs_done|corpus_count|saved_crashes|saved_hangs) ' "$stats" | tr -s ' ' | tr '\n' ' '
    echo
    crashes=$(find "$out/default/crashes" -type f -name 'id:*' 2>/dev/null | wc -l)
    if [ "$crashes" -gt 0 ]; then
        echo "fuzz.sh: $target: $crashes crashing input(s) in fuzz/$out/default/crashes/" >&2
        failed=1
    fi
    if [ "${FUZZ_UPDATE_CORPUS:-0}" = 1 ]; then
        # The inputs that reached new edges, named by their content so that
        # a rerun adds only what is new; the seeds stay.
        for input in "$out"/default/queue/id:*+cov*; do
            [ -f "$input" ] || continue
            name="$(sha256sum "$input" | cut -c1-16)"
            cp "$input" "corpus/$target/$name"
        done
    fi
    rm -f "out-$target.log"
done
exit "$failed"
