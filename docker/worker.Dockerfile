# syntax=docker/dockerfile:1
# The CUDA worker image: candle's `cuda` feature, ONNX Runtime with its CUDA execution provider (audio,
# lipsync), espeak-ng (audio), FFmpeg. From the repository root, on an x86_64 host:
#   docker build -f docker/worker.Dockerfile --build-arg CUDA_COMPUTE_CAP=90 -t ainern2d-worker .
# CUDA_COMPUTE_CAP is the compute capability of the GPUs it will run on (the build has no GPU to ask):
# 80 = A100, 86 = A10 / RTX 30xx, 89 = L4 / RTX 40xx, 90 = H100 / H200. For a CPU-only image use
# docker/worker-cpu.Dockerfile (multi-arch, no CUDA base).
#
# CUDA 13: the `onnxruntime-gpu` 1.31.1 wheel's CUDA provider links libcudart.so.13, libcublas.so.13,
# libcublasLt.so.13 and libcurand.so.10 (read from the wheel with readelf) and wants cuDNN 9 (its `cudnn`
# extra is nvidia-cudnn-cu13), so the runtime base is the cudnn-runtime image of CUDA 13; the host needs a
# driver for CUDA 13 and the NVIDIA container toolkit (which mounts libcuda.so.1 and libnvidia-ml.so.1).
# Both CUDA stages are Ubuntu 24.04, so the FFmpeg (6.1) the binary links is the one the runtime installs.
# Not verified here (no Docker engine): that these nvidia/cuda tags exist as spelled, and that
# ffmpeg-next builds against Ubuntu 24.04's FFmpeg 6.1 (it is checked against Debian 12's 5.1).
#
# Runs as ainern2d (uid 1000, gid 1000; Ubuntu's own uid-1000 user `ubuntu` is removed) with a read-only
# root filesystem. Writable paths, to be volumes or tmpfs (compose/gpu.yml, deploy/kubernetes):
#   /var/lib/ainern2d/scratch   scratch_dir (AINERN2D_WORKER_SCRATCH_DIR is set to it): job inputs and
#                               outputs, the journal of open multipart uploads; keep it across restarts;
#   /var/cache/ainern2d/models  the model manifest's cache_dir must be this path (s3:// model files);
#   /tmp                        HOME=/tmp, for libraries that cache under $HOME.
# Config: AINERN2D_WORKER_CONFIG names a TOML file (e.g. /etc/ainern2d/worker.toml, mounted read-only);
# AINERN2D_WORKER_<SECTION>__<KEY> variables override it. Secrets (the broker URL, the S3 keys) come from
# the environment only: the worker has no *_file key for them.
ARG CUDA_VERSION=13.0.1
ARG UBUNTU=ubuntu24.04
ARG RUST_VERSION=1.95.0
ARG ORT_VERSION=1.31.1

# ONNX Runtime's shared libraries from the official `onnxruntime-gpu` wheel (PyPI), by the project's own
# script: libonnxruntime.so.<version> and, beside it where ONNX Runtime looks for them, the providers.
FROM python:3.12-slim-bookworm AS onnxruntime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG ORT_VERSION
COPY scripts/install-onnxruntime.sh /usr/local/bin/install-onnxruntime.sh
RUN --mount=type=cache,target=/root/.cache/pip \
    [ "$(uname -m)" = x86_64 ] || { echo "the CUDA image is built for x86_64 only" >&2; exit 1; } \
    && ORT_VERSION=${ORT_VERSION} install-onnxruntime.sh --gpu /opt/onnxruntime/lib \
    && test -f /opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION} \
    && test -f /opt/onnxruntime/lib/libonnxruntime_providers_cuda.so \
    && test -f /opt/onnxruntime/lib/libonnxruntime_providers_shared.so

FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl build-essential \
      pkg-config clang libclang-dev libavcodec-dev libavformat-dev libavutil-dev libswscale-dev \
      libswresample-dev libavfilter-dev libavdevice-dev \
    && rm -rf /var/lib/apt/lists/*
ARG RUST_VERSION
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --profile minimal --default-toolchain "${RUST_VERSION}"
ENV PATH=/root/.cargo/bin:$PATH
ARG CUDA_COMPUTE_CAP=80
ARG FEATURES=cuda
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/root/.cargo/registry \
    --mount=type=cache,target=/root/.cargo/git \
    --mount=type=cache,target=/src/target,id=ainern2d-worker-cuda-target \
    CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} cargo build --release --locked -p ainern2d-worker ${FEATURES:+--features "$FEATURES"} \
    && install -D target/release/ainern2d-worker /out/ainern2d-worker \
    && docker/runtime-packages.sh /out/ainern2d-worker > /out/runtime-packages.txt

FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-${UBUNTU}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG ORT_VERSION
COPY --from=build /out/runtime-packages.txt /tmp/runtime-packages.txt
# The libraries the binary links (runtime-packages.txt, from the build stage: FFmpeg 6.1's libav*), and
# what it loads at run time: libespeak-ng.so.1 and its data (in the library's built-in
# /usr/lib/x86_64-linux-gnu/espeak-ng-data, so tts.espeak_data stays unset). Ubuntu 24.04 has both
# libespeak-ng1 and espeak-ng-data (1.51, like Debian 12); the FFmpeg libraries are in `universe`, which
# the ubuntu base image enables.
# hadolint ignore=DL3008
RUN apt-get update \
    && xargs -a /tmp/runtime-packages.txt apt-get install -y --no-install-recommends \
         ca-certificates libespeak-ng1 espeak-ng-data \
    && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
    && if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
    && groupadd --gid 1000 ainern2d \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ainern2d \
    && install -d -m 0755 /etc/ainern2d \
    && install -d -o 1000 -g 1000 -m 0750 /var/lib/ainern2d/scratch /var/cache/ainern2d/models
COPY --from=onnxruntime /opt/onnxruntime/lib/ /opt/onnxruntime/lib/
COPY --from=build /out/ainern2d-worker /usr/local/bin/ainern2d-worker
COPY docker/healthcheck.sh /usr/local/bin/healthcheck.sh
# ORT_DYLIB_PATH: the library pipelines/src/onnx.rs loads when onnx.runtime_path is unset.
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION} \
    AINERN2D_WORKER_SCRATCH_DIR=/var/lib/ainern2d/scratch \
    HOME=/tmp \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 1000:1000
EXPOSE 9100
# /health on http.listen's default port: 503 while a job's pipeline has been silent for
# liveness.stall_after_s. A config that moves the port needs its own healthcheck (compose/gpu.yml has).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 CMD ["/usr/local/bin/healthcheck.sh", "9100"]
# SIGTERM is the drain: in-flight jobs run for shutdown.grace_s, the rest go back to their queues.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ainern2d-worker"]
CMD ["run"]
