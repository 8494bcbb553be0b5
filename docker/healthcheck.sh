#!/bin/bash
# The images' HEALTHCHECK: an HTTP GET of /health on this container's own port, with bash's /dev/tcp
# (the runtime images carry no curl or wget). Exit 0 only for a "200" status line; a refused connection,
# a 503 (the worker's stalled pipeline, a hub that cannot serve) or no answer within the timeout is 1.
#   healthcheck.sh PORT [PATH]        e.g. healthcheck.sh 9200, healthcheck.sh 9100 /ready
# HEALTHCHECK_HOST (default 127.0.0.1) and HEALTHCHECK_TIMEOUT_S (default 5) change the target and the wait.
set -u
port=${1:?usage: healthcheck.sh PORT [PATH]}
path=${2:-/health}
host=${HEALTHCHECK_HOST:-127.0.0.1}
timeout_s=${HEALTHCHECK_TIMEOUT_S:-5}
# A connection that cannot be made fails here (bash prints why on stderr).
exec 3<>"/dev/tcp/$host/$port" || exit 1
printf 'GET %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n' "$path" "$host" "$port" >&3
status=
IFS= read -r -t "$timeout_s" status <&3 || true
exec 3<&-
case "$status" in
  "HTTP/1."[01]" 200 "*) exit 0 ;;
esac
echo "healthcheck: GET http://$host:$port$path answered ${status:-nothing within ${timeout_s}s}" >&2
exit 1
