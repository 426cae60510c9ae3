#!/bin/bash
# The container image's HEALTHCHECK: GET /healthz on portcullis's admin
# listener, exit 0 on a 200. The slim image has no curl, so this speaks
# HTTP/1.1 over bash's /dev/tcp. PORTCULLIS_HEALTH_ADDR is the admin
# listener as host:port (default 127.0.0.1:9090). tests/packaging.rs runs it
# against a live portcullis.
set -u
addr=${PORTCULLIS_HEALTH_ADDR:-127.0.0.1:9090}
exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}" || exit 1
printf 'GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$addr" >&3
IFS= read -r -t 5 status <&3 || exit 1
case $status in
"HTTP/1."?" 200 "*) exit 0 ;;
*) exit 1 ;;
esac
