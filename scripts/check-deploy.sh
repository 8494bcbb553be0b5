#!/usr/bin/env bash
# Validates every file under deploy/ without a cluster, a Docker engine, Nomad or a booted systemd, and
# then proves the checks can fail (deploy/check/check_deploy.py's self-test breaks copies of the files
# on purpose). Installs what it needs when missing, from PyPI, npm and Debian only:
#   - a Python venv with kubernetes-validate (the Kubernetes OpenAPI schemas), python-hcl2 (Nomad's HCL),
#     promql-parser (the KEDA queries);
#   - @kubernetes-models/keda from npm (KEDA's ScaledObject CRD schema), run by node;
#   - systemd-analyze (Debian's systemd) for the units;
#   - kustomize: the one kubectl embeds (`kubectl kustomize`), else a `kustomize` binary. Neither is in
#     Debian 12's or PyPI's packages in a usable version, so without one this fails and says so.
# Idempotent: a second run reuses the tools (a stamp per pinned set). Exit status 0 only when every file
# is valid and every deliberate break was caught.
#   scripts/check-deploy.sh              # all checks and the self-test
#   scripts/check-deploy.sh --no-self-test
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${SERVICES_DIR:-${TMPDIR:-/tmp}/ainern2d-services}/deploy-tools"
PY_PKGS="kubernetes-validate==1.37.0 python-hcl2==8.1.4 promql-parser==0.11.0"
NPM_PKGS="@kubernetes-models/keda@2.0.0"

say() { echo "check-deploy: $*" >&2; }
die() { say "$*"; exit 1; }
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

if kubectl kustomize --help >/dev/null 2>&1; then
  kustomize="kubectl kustomize"
elif command -v kustomize >/dev/null; then
  kustomize="kustomize build"
else
  die "no kustomize: install kubectl (it embeds kustomize v5) or a kustomize v5 binary; Debian 12's kubernetes-client (1.20) embeds one too old for these overlays"
fi

export PYTHONDONTWRITEBYTECODE=1
exec "$py/bin/python" deploy/check/check_deploy.py --repo . --kustomize "$kustomize" --npm-dir "$npm_dir" "$@"
