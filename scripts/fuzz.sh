#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, cargo-fuzz on nightly) for a while against its seed corpus and fails on any
# crash, panic or hang. What each target checks and the figures of longer runs: docs/FUZZING.md.
#
#   scripts/fuzz.sh [--full] [seconds-per-target] [target...]    (default: 20 s, every target)
#
# The default build is the quick one CI runs: unoptimised (`--dev`, with debug assertions and line tables
# only: fuzz/Cargo.toml), without a sanitizer, dead code stripped — the worker's whole dependency tree in a
# fraction of the time. `--full` is cargo-fuzz's default build (release, one codegen unit,
# AddressSanitizer), the one the 10-minute figures were measured with: many times the executions per
# second, and about 40 CPU-minutes cold.
#
# Installs what it needs when missing (the nightly toolchain, cargo-fuzz). Inputs a run finds go to
# fuzz/corpus-grown/<target> (not committed); a crash is written to fuzz/artifacts/<target>/ and
# reproduced with `cargo +nightly fuzz run <build flags> <target> <file>` (the flags are printed). The build
# goes to $FUZZ_TARGET_DIR, by default /var/tmp/ainern2d-fuzz-target where CI keeps the workspace's build
# (/var/tmp/ainern2d-target), else fuzz/target.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never

build=(--dev --sanitizer none --strip-dead-code)
if [ "${1:-}" = "--full" ]; then build=(); shift; fi
seconds="${1:-20}"
shift || true

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz: installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo +nightly install cargo-fuzz --locked
fi

if [ -z "${FUZZ_TARGET_DIR:-}" ]; then
    if [ -d /var/tmp/ainern2d-target ]; then FUZZ_TARGET_DIR=/var/tmp/ainern2d-fuzz-target; else FUZZ_TARGET_DIR=fuzz/target; fi
fi
FUZZ_TARGET_DIR="$(mkdir -p "$FUZZ_TARGET_DIR" && cd "$FUZZ_TARGET_DIR" && pwd)"

cd fuzz
if [ "$#" -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi

start=$SECONDS
echo "fuzz: build flags: ${build[*]:-none (cargo-fuzz defaults)}"
cargo +nightly fuzz build "${build[@]}" --target-dir "$FUZZ_TARGET_DIR"
echo "fuzz: built ${#targets[@]} targets in $((SECONDS - start)) s"

for target in "${targets[@]}"; do
    grown="corpus-grown/$target"
    mkdir -p "$grown"
    args=(-max_total_time="$seconds" -timeout=10 -print_final_stats=1)
    if [ -f "dict/$target.dict" ]; then args+=(-dict="dict/$target.dict"); fi
    log="$(mktemp)"
    # The first corpus directory receives new inputs; the committed seeds are only read.
    if ! cargo +nightly fuzz run "${build[@]}" --target-dir "$FUZZ_TARGET_DIR" "$target" "$grown" "corpus/$target" -- "${args[@]}" \
        >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/ (see the output above)" >&2
        rm -f "$log"
        exit 1
    fi
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")"
    cov="$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -n 1)"
    echo "fuzz: $target ok: $runs runs in ${seconds} s ($rate exec/s), $cov, corpus $(find "$grown" -type f | wc -l) grown"
    rm -f "$log"
done
