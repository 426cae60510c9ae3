#!/usr/bin/env bash
# Runs the demo on a fresh machine: installs what is missing, then starts
# portcullis on 127.0.0.1:8080 in front of its built-in echo chat backend on
# 127.0.0.1:8081, with a development OpenID provider on 127.0.0.1:8082 and
# metrics on 127.0.0.1:9090/metrics. Open http://127.0.0.1:8080/ in a
# browser and log in as alice, bob or carol. Ctrl-C stops it.
#
# Arguments go to `portcullis demo`, e.g. `bash scripts/demo.sh -c my-demo.yaml`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
ulimit -n 20000 2>/dev/null || true
exec cargo run --features demo --bin portcullis -- demo "$@"
