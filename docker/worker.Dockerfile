# CUDA worker image. Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t ainern2d-worker .
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends pkg-config clang libclang-dev \
      libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev libavfilter-dev libavdevice-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p ainern2d-worker && cp target/release/ainern2d-worker /ainern2d-worker

FROM nvidia/cuda:12.4.1-runtime-ubuntu22.04
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates ffmpeg && rm -rf /var/lib/apt/lists/* \
    && useradd -u 1000 -m worker
COPY --from=build /ainern2d-worker /usr/local/bin/ainern2d-worker
USER worker
EXPOSE 9100
HEALTHCHECK CMD ["sh", "-c", "exec 3<>/dev/tcp/127.0.0.1/9100"]
ENTRYPOINT ["ainern2d-worker"]
CMD ["run"]
