# The worker image with CUDA inference (candle's `cuda` feature). Build from the repository root:
#   docker build -f docker/worker.Dockerfile --build-arg CUDA_COMPUTE_CAP=90 -t ainern2d-worker .
# CUDA_COMPUTE_CAP is the compute capability of the GPUs it will run on (the build has no GPU to ask):
# 80 = A100, 86 = A10 / RTX 30xx, 89 = L4 / RTX 40xx, 90 = H100 / H200. FEATURES="" builds a CPU-only image.
# Both stages use the same Ubuntu, so the FFmpeg the binary links is the one the runtime stage installs.
ARG CUDA_VERSION=12.6.3
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04 AS build
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl build-essential pkg-config       clang libclang-dev libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev       libavfilter-dev libavdevice-dev     && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
ENV PATH=/root/.cargo/bin:$PATH
ARG CUDA_COMPUTE_CAP=80
ARG FEATURES=cuda
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
WORKDIR /src
COPY . .
RUN cargo build --release -p ainern2d-worker --features "${FEATURES}" && cp target/release/ainern2d-worker /ainern2d-worker

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates ffmpeg && rm -rf /var/lib/apt/lists/* \
    && (id -u 1000 >/dev/null 2>&1 || useradd -u 1000 -m worker) \
    && mkdir -p /var/cache/ainern2d/models && chown 1000 /var/cache/ainern2d/models
COPY --from=build /ainern2d-worker /usr/local/bin/ainern2d-worker
USER 1000
EXPOSE 9100
HEALTHCHECK CMD ["sh", "-c", "exec 3<>/dev/tcp/127.0.0.1/9100"]
ENTRYPOINT ["ainern2d-worker"]
CMD ["run"]
