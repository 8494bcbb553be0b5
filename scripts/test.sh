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

export AINERN2D_TEST_AMQP_URL="${AINERN2D_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export AINERN2D_TEST_S3_ENDPOINT="${AINERN2D_TEST_S3_ENDPOINT:-http://127.0.0.1:${S3_PORT}}"
export AINERN2D_TEST_DATABASE_URL="${AINERN2D_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

# The end-to-end tests run the real binaries; build them first so the tests find them in the target dir.
# `--all-targets` resolves features as `cargo test` does, so the binaries and the tests are built once
# (`--bins` alone would build every dependency twice: without and with the dev-dependencies' features).
cargo build --workspace --all-targets
cargo test --workspace "$@"
