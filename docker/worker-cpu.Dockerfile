# syntax=docker/dockerfile:1
# The CPU worker image: no CUDA, for Macs (Docker Desktop on Apple silicon runs it as linux/arm64) and
# CPU-only servers; mock pipelines, llm on candle's CPU backend, audio and lipsync on ONNX Runtime's CPU
# provider. Multi-arch; from the repository root:
#   docker build -f docker/worker-cpu.Dockerfile -t ainern2d-worker-cpu .
#   docker buildx build --platform linux/amd64,linux/arm64 -f docker/worker-cpu.Dockerfile -t ... .
# Each stage runs on the target platform, so the onnxruntime wheel is the one for its `uname -m`.
# User, paths and config are those of docker/worker.Dockerfile (the CUDA image); see there.
ARG RUST_VERSION=1.95.0
ARG ORT_VERSION=1.31.1

# ONNX Runtime's shared library from the official `onnxruntime` wheel (PyPI), by the project's own script.
FROM python:3.12-slim-bookworm AS onnxruntime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG ORT_VERSION
COPY scripts/install-onnxruntime.sh /usr/local/bin/install-onnxruntime.sh
RUN --mount=type=cache,target=/root/.cache/pip \
    case "$(uname -m)" in x86_64|aarch64) ;; *) echo "no onnxruntime wheel for $(uname -m)" >&2; exit 1;; esac \
    && ORT_VERSION=${ORT_VERSION} install-onnxruntime.sh /opt/onnxruntime/lib \
    && test -f /opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION}

FROM rust:${RUST_VERSION}-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# FFmpeg 5.1 (Debian 12) for ffmpeg-next, libclang for its bindgen.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends pkg-config clang libclang-dev \
      libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev libavfilter-dev libavdevice-dev \
    && rm -rf /var/lib/apt/lists/*
# Empty: CPU only. `metal` does not apply in a Linux container.
ARG FEATURES=""
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,id=ainern2d-worker-cpu-target \
    cargo build --release --locked -p ainern2d-worker ${FEATURES:+--features "$FEATURES"} \
    && install -D target/release/ainern2d-worker /out/ainern2d-worker \
    && docker/runtime-packages.sh /out/ainern2d-worker > /out/runtime-packages.txt

FROM debian:bookworm-slim
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG ORT_VERSION
COPY --from=build /out/runtime-packages.txt /tmp/runtime-packages.txt
# The libraries the binary links (runtime-packages.txt: FFmpeg's, from the build stage's own Debian), and
# what it loads at run time: libespeak-ng.so.1 with its data (tts; found in the library's built-in
# /usr/lib/<arch>/espeak-ng-data, so tts.espeak_data stays unset).
# hadolint ignore=DL3008
RUN apt-get update \
    && xargs -a /tmp/runtime-packages.txt apt-get install -y --no-install-recommends \
         ca-certificates libespeak-ng1 espeak-ng-data \
    && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
    && groupadd --gid 1000 ainern2d \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ainern2d \
    && install -d -m 0755 /etc/ainern2d \
    && install -d -o 1000 -g 1000 -m 0750 /var/lib/ainern2d/scratch /var/cache/ainern2d/models
COPY --from=onnxruntime /opt/onnxruntime/lib/ /opt/onnxruntime/lib/
COPY --from=build /out/ainern2d-worker /usr/local/bin/ainern2d-worker
COPY docker/healthcheck.sh /usr/local/bin/healthcheck.sh
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION} \
    AINERN2D_WORKER_SCRATCH_DIR=/var/lib/ainern2d/scratch \
    HOME=/tmp
USER 1000:1000
EXPOSE 9100
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["/usr/local/bin/healthcheck.sh", "9100"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ainern2d-worker"]
CMD ["run"]
