#!/usr/bin/env bash
# Validates every file under deploy/ without a cluster, a Docker engine, Nomad or a booted systemd, and
# then proves the checks can fail (deploy/check/check_deploy.py's self-test breaks copies of the files
# on purpose). Installs what it needs when missing, from PyPI, npm and Debian only:
#   - a Python venv with kubernetes-validate (the Kubernetes OpenAPI schemas), python-hcl2 (Nomad's HCL),
#     promql-parser (the KEDA queries);
#   - @kubernetes-models/keda from npm (KEDA's ScaledObject CRD schema), run by node;
#   - systemd-analyze (Debian's systemd) for the units;
#   - compose/ and docker/ first, by scripts/check-compose.sh (docker compose and hadolint from PyPI).
# Kubernetes is validated in the committed renders of the overlays, deploy/kubernetes/rendered/<overlay>.yaml
# (deploy/check/render.py), so no kustomize is needed. When one is at hand (the kustomize that kubectl
# embeds, `kubectl kustomize`, else a `kustomize` binary; neither is in Debian 12's or PyPI's packages in a
# usable version) the overlays are also rendered again and a committed render that differs fails (drift);
# without one the drift check and the self-test cases that need a renderer are skipped, and it says so.
# AINERN2D_DEPLOY_NO_RENDERER=1 hides kubectl and kustomize from it (to test that mode).
# Idempotent: a second run reuses the tools (a stamp per pinned set). Exit status 0 only when every file
# is valid (and, with a renderer, the renders are current) and every deliberate break was caught.
#   scripts/check-deploy.sh              # all checks and the self-test
#   scripts/check-deploy.sh --no-self-test
#   scripts/check-deploy.sh --render     # regenerate deploy/kubernetes/rendered/ (needs kubectl or kustomize)
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${SERVICES_DIR:-${TMPDIR:-/tmp}/ainern2d-services}/deploy-tools"
PY_PKGS="kubernetes-validate==1.37.0 python-hcl2==8.1.4 promql-parser==0.11.0"
NPM_PKGS="@kubernetes-models/keda@2.0.0"

say() { echo "check-deploy: $*" >&2; }
die() { say "$*"; exit 1; }

# The renderer: kubectl's embedded kustomize, else a kustomize binary, each only at v5 or later (older
# ones cannot build these overlays, and would read as drift); else none, and why.
kustomize= no_renderer= too_old=
is_v5() { case "$1" in v[5-9].*|v[1-9][0-9].*|kustomize/v[5-9].*) return 0;; *) return 1;; esac; }
if [ -n "${AINERN2D_DEPLOY_NO_RENDERER:-}" ] && [ "${AINERN2D_DEPLOY_NO_RENDERER}" != 0 ]; then
  no_renderer="AINERN2D_DEPLOY_NO_RENDERER=$AINERN2D_DEPLOY_NO_RENDERER hides kubectl and kustomize"
else
  if command -v kubectl >/dev/null; then
    v=$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: *//p' || true)
    if is_v5 "$v" && kubectl kustomize --help >/dev/null 2>&1; then kustomize="kubectl kustomize"
    else too_old="the kubectl on PATH embeds kustomize ${v:-of no stated version}, not v5 or later; "; fi
  fi
  if [ -z "$kustomize" ] && command -v kustomize >/dev/null; then
    v=$(kustomize version 2>/dev/null | head -n1 | sed 's/^{Version://; s/ .*//' || true)
    if is_v5 "$v"; then kustomize="kustomize build"
    else too_old="${too_old}the kustomize on PATH is ${v:-of no stated version}, not v5 or later; "; fi
  fi
  [ -n "$kustomize" ] || no_renderer="${too_old}no kubectl with an embedded kustomize v5 nor a kustomize v5 binary is on PATH"
fi

if [ "${1:-}" = --render ]; then
  [ $# = 1 ] || die "--render takes no other argument"
  [ -n "$kustomize" ] || die "--render needs a renderer, and $no_renderer: install kubectl or a kustomize v5 binary (Debian 12's kubernetes-client, 1.20, embeds one too old for these overlays)"
  command -v python3 >/dev/null || die "--render needs python3"
  exec python3 deploy/check/render.py --repo . --kustomize "$kustomize"
fi
sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
apt_install() {
  command -v apt-get >/dev/null || die "missing $*, and there is no apt-get to install it"
  [ -n "$apt_updated" ] || { sudo_if_needed apt-get update -qq >/dev/null; apt_updated=1; }
  say "installing $* (Debian)"
  DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Python 3.11+ (tomllib) with venv.
command -v python3 >/dev/null || apt_install python3
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python3 is older than 3.11 (tomllib is needed)"
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
py="$TOOLS/py"
if [ "$(cat "$py/.stamp" 2>/dev/null)" != "$PY_PKGS" ]; then
  say "installing $PY_PKGS into $py (PyPI)"
  rm -rf "$py"
  python3 -m venv "$py"
  "$py/bin/pip" install --quiet --disable-pip-version-check $PY_PKGS
  echo "$PY_PKGS" > "$py/.stamp"
fi

# node and npm, then KEDA's schema.
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
npm_dir="$TOOLS/npm"
if [ "$(cat "$npm_dir/.stamp" 2>/dev/null)" != "$NPM_PKGS" ]; then
  say "installing $NPM_PKGS into $npm_dir (npm)"
  rm -rf "$npm_dir" && mkdir -p "$npm_dir"
  (cd "$npm_dir" && npm install --silent --no-audit --no-fund --no-save $NPM_PKGS >/dev/null)
  echo "$NPM_PKGS" > "$npm_dir/.stamp"
fi

command -v systemd-analyze >/dev/null || apt_install systemd

# compose/ and docker/: scripts/check-compose.sh (its own tools, its own self-test, which follows
# --no-self-test), before the manifests.
compose_args=()
for a in "$@"; do [ "$a" != --no-self-test ] || compose_args+=(--no-self-test); done
scripts/check-compose.sh ${compose_args[@]+"${compose_args[@]}"}

export PYTHONDONTWRITEBYTECODE=1
exec "$py/bin/python" deploy/check/check_deploy.py --repo . --kustomize "$kustomize" \
  --no-renderer-reason "${no_renderer:-}" --npm-dir "$npm_dir" "$@"
