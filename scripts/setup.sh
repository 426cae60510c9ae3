#!/usr/bin/env bash
# Installs what building, testing and demonstrating portcullis need on a
# Debian machine where only the Rust toolchain is present. Idempotent: every
# tool is probed first (`command -v`, `dpkg-query`), so a second run installs
# nothing, touches no network and takes well under a second.
#
#   cmake, pkg-config, C compiler  build the vendored C code (zlib-ng, zstd)
#   libssl-dev                     headers for crates that probe for OpenSSL
#   redis-server, redis-sentinel   the `redis` session store (its tests start both)
#   chromium                       browser end-to-end tests (tests/e2e)
#   prometheus                     `promtool check metrics` on /metrics output, and
#                                  `promtool check/test` of conf/prometheus (tests/packaging.rs)
#   docker-compose                 `docker-compose config` of docker-compose.yml (tests/packaging.rs;
#                                  Docker itself is not needed)
#   systemd                        `systemd-analyze verify` of conf/systemd/portcullis.service
#   libfaketime                    session-expiry tests move portcullis's wall clock
#   nodejs, npm                    the end-to-end test runner (only if no `node`)
#   apache2, libapache2-mod-auth-openidc, nginx-light
#                                  the cross-proxy benchmark (benches/compare; tests/compare.rs
#                                  checks its configs and runs its --quick mode). Installed
#                                  with services kept from starting: no system Apache or
#                                  nginx is left listening on port 80
#   fonts-dejavu-core              the text of that benchmark's PNG chart
#
# Runs as root without a terminal. Not root: uses sudo when it exists.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

missing=()

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# want PACKAGE [COMMAND...]: PACKAGE is missing unless one of the commands is
# on PATH (tools installed another way count) or the package is installed.
want() {
    local package=$1
    shift
    local cmd
    for cmd in "$@"; do
        if command -v "$cmd" >/dev/null 2>&1; then
            return 0
        fi
    done
    installed "$package" || missing+=("$package")
}

want cmake cmake
want pkg-config pkg-config pkgconf
want libssl-dev
if ! command -v cc >/dev/null 2>&1 || ! command -v c++ >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
    want build-essential
fi
want redis-server redis-server
want redis-sentinel redis-sentinel
want chromium chromium chromium-browser
want prometheus promtool
want docker-compose docker-compose
want systemd systemd-analyze
want libfaketime
want curl curl
want apache2 apache2
want libapache2-mod-auth-openidc
want nginx-light nginx
want fonts-dejavu-core
if ! command -v node >/dev/null 2>&1; then
    missing+=(nodejs npm)
elif ! command -v npm >/dev/null 2>&1; then
    # A node from outside Debian brings its own npm; Debian's npm package
    # would pull Debian's nodejs over it, so leave that choice to the operator.
    echo "setup: warning: node is installed but npm is not; end-to-end tests need npm" >&2
fi

if ((${#missing[@]} == 0)); then
    echo "setup: all system packages present"
else
    sudo=()
    if ((EUID != 0)); then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo --preserve-env=DEBIAN_FRONTEND)
        else
            echo "setup: missing ${missing[*]}, and installing them needs root" >&2
            exit 1
        fi
    fi
    echo "setup: installing ${missing[*]}"
    # Debian's maintainer scripts start the services they install (apache2,
    # nginx on port 80; also redis-server and prometheus): a policy-rc.d that
    # refuses (exit 101) keeps every one of them from starting during the
    # install (the tests start their own, on loopback ports of their own),
    # and is removed again, even if this script is killed, unless it was
    # there before.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# scripts/setup.sh: no service starts during its install\nexit 101\n' |
            "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 755 "$policy"
        own_policy=1
        trap '"${sudo[@]}" rm -f "$policy"' EXIT
    fi
    status=0
    "${sudo[@]}" apt-get update -q && "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" || status=$?
    if [ "$own_policy" = 1 ]; then
        "${sudo[@]}" rm -f "$policy"
        trap - EXIT
    fi
    if [ "$status" != 0 ]; then exit "$status"; fi
    # Nor at the next boot: the benchmark (benches/compare) runs its own
    # Apache and nginx from generated configs; the system's would take port 80.
    for service in apache2 apache-htcacheclean nginx; do
        if [ -e "/etc/init.d/$service" ]; then
            "${sudo[@]}" update-rc.d "$service" disable >/dev/null 2>&1 || true
            if command -v systemctl >/dev/null 2>&1; then
                "${sudo[@]}" systemctl disable "$service" >/dev/null 2>&1 || true
            fi
        fi
    done
    echo "setup: installed ${missing[*]}"
fi

# The Rust side: cargo must exist; rustfmt and clippy are needed by scripts/test.sh.
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install the Rust toolchain (1.85 or newer) first" >&2
    exit 1
fi
add_component() {
    if command -v rustup >/dev/null 2>&1; then
        echo "setup: adding the Rust component $1"
        rustup component add "$1"
    else
        echo "setup: warning: the Rust component $1 is missing and rustup is not available" >&2
    fi
}
cargo fmt --version >/dev/null 2>&1 || add_component rustfmt
cargo clippy --version >/dev/null 2>&1 || add_component clippy

# The npm packages of the end-to-end suite (oidc-provider, the WebSocket and
# browser clients), which the cross-proxy benchmark's test (tests/compare.rs)
# uses as well during `cargo test`: installed here, before any test runs.
e2e="$(dirname "$0")/../tests/e2e"
if [ -f "$e2e/package-lock.json" ] && [ ! -d "$e2e/node_modules/oidc-provider" ]; then
    echo "setup: installing the end-to-end suite's npm packages"
    (cd "$e2e" && PUPPETEER_SKIP_DOWNLOAD=1 PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi
