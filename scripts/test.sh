#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this):
#
#   1. scripts/setup.sh          system packages (fast and offline when present)
#   2. cargo fmt --check         formatting
#   3. cargo clippy -D warnings  lints, every target
#   4. cargo test --all-targets  unit, integration and (in test mode) bench targets
#   5. npm test in tests/e2e     browser end-to-end tests, when that folder exists
#
# Debug builds only. Every step after setup runs even if an earlier one
# failed, so one run reports every problem; the exit status is non-zero if
# any step failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Load tests and end-to-end tests open thousands of sockets.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

names=()
results=()
failed=0

step() {
    local name=$1
    shift
    echo
    echo "==> $name: $*"
    local start=$SECONDS
    if "$@"; then
        results+=("ok      $name ($((SECONDS - start)) s)")
    else
        results+=("FAILED  $name ($((SECONDS - start)) s)")
        failed=$((failed + 1))
    fi
    names+=("$name")
}

summary() {
    echo
    echo "==> test summary (open file limit $(ulimit -n))"
    printf '    %s\n' "${results[@]}"
    if ((failed == 0)); then
        echo "==> every step succeeded"
    else
        echo "==> $failed of ${#names[@]} steps failed"
    fi
}

e2e() {
    if [[ ! -f tests/e2e/package.json ]]; then
        echo "tests/e2e/package.json does not exist: no end-to-end tests to run"
        return 0
    fi
    # Browsers cannot be downloaded here: the tests use the system chromium.
    export PUPPETEER_SKIP_DOWNLOAD=1 PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
    CHROMIUM_PATH=${CHROMIUM_PATH:-$(command -v chromium || command -v chromium-browser || true)}
    export CHROMIUM_PATH
    # The suite runs `portcullis demo` too: the debug build with the demo
    # feature (up to date after `cargo test`, which unifies it in; a plain
    # `cargo build` since would have left a binary without it).
    if [[ -z ${PORTCULLIS_BIN:-} ]]; then
        cargo build --bin portcullis --features demo || return 1
        export PORTCULLIS_BIN=$PWD/target/debug/portcullis
    fi
    (
        cd tests/e2e || exit 1
        if [[ -f package-lock.json ]]; then
            npm ci --no-audit --no-fund || exit 1
        else
            npm install --no-audit --no-fund || exit 1
        fi
        npm test
    )
}

step setup bash scripts/setup.sh
if ((failed > 0)); then
    summary
    exit 1
fi
step fmt cargo fmt --all -- --check
step clippy cargo clippy --all-targets -- -D warnings
step "cargo test" cargo test --all-targets
step e2e e2e   # (a function above)
summary
((failed == 0))
