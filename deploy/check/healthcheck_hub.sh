#!/usr/bin/env bash
# docker/healthcheck.sh against a real hub (scripts/check-compose.sh), after compose/hub/hub.toml has gone
# through the hub's --print-config. The hub runs on its in-memory SQLite
# store with a broker URL on a closed port, so /health answers 200 and /ready 503 (broker down). The
# script must exit 0 for the first, 1 for the second, and 1 for a closed port.
#   deploy/check/healthcheck_hub.sh HUB_BINARY
set -euo pipefail
hub=${1:?usage: healthcheck_hub.sh HUB_BINARY}
check=docker/healthcheck.sh
# compose/hub/hub.toml (cpu.yml's) through the hub's own parser first.
RUST_BACKTRACE=0 "$hub" --config compose/hub/hub.toml --print-config run >/dev/null \
  || { echo "healthcheck: FAIL compose/hub/hub.toml is not a valid hub config" >&2; exit 1; }
echo "healthcheck: ok    compose/hub/hub.toml parsed by $hub --print-config"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port) closed=$(free_port)
log=$(mktemp)
AINERN2D_HUB_HTTP__LISTEN="127.0.0.1:$port" AINERN2D_HUB_DATABASE__URL="sqlite::memory:" \
  AINERN2D_HUB_BROKER__URL="amqp://guest:guest@127.0.0.1:$closed/%2f" AINERN2D_HUB_LOG__FORMAT=json \
  "$hub" run >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
fail() { echo "healthcheck: FAIL $*" >&2; tail -n 20 "$log" >&2; exit 1; }
for _ in $(seq 1 60); do
  bash "$check" "$port" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || fail "the hub exited before serving /health"
  sleep 0.5
done
bash "$check" "$port" || fail "healthcheck.sh $port (/health, 200) did not exit 0"
echo "healthcheck: ok    healthcheck.sh $port -> 0 (hub /health 200)"
if bash "$check" "$port" /ready 2>/dev/null; then fail "healthcheck.sh $port /ready exited 0 with the broker down (503)"; fi
echo "healthcheck: ok    healthcheck.sh $port /ready -> 1 (hub /ready 503, broker down)"
if bash "$check" "$closed" 2>/dev/null; then fail "healthcheck.sh $closed exited 0 on a closed port"; fi
echo "healthcheck: ok    healthcheck.sh $closed -> 1 (closed port)"
