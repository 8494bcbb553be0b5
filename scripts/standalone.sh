#!/usr/bin/env bash
# The local mode in one command on a fresh Debian/Ubuntu machine: installs FFmpeg's development files and
# libclang when missing (root or sudo), then builds and runs `ainern2d`, the local mode (hub and worker in
# one process, in-process queue, SQLite, outputs under .ainern2d/). Extra arguments go to `ainern2d`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
ensure_build_deps
exec cargo run --release --bin ainern2d -- "$@"
