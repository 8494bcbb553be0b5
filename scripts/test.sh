#!/usr/bin/env bash
# Runs every test of the workspace against real services. Starts RabbitMQ, PostgreSQL and an S3 server
# (s3s-fs) on loopback when they are not already reachable, installing them (and the FFmpeg/libclang
# build dependencies) from Debian's packages and crates.io when missing. Needs root (or sudo) only for
# installs. Extra arguments go to `cargo test` (e.g. `scripts/test.sh -p ainern2d-contract`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh

ensure_build_deps
ensure_rabbitmq
ensure_postgres
ensure_s3
ensure_onnx_fixtures
ensure_chromium

export_service_urls

# The end-to-end tests run the real binaries; build them first so the tests find them in the target dir.
# `--all-targets` resolves features as `cargo test` does, so the binaries and the tests are built once
# (`--bins` alone would build every dependency twice: without and with the dev-dependencies' features).
cargo build --workspace --all-targets
cargo test --workspace "$@"
