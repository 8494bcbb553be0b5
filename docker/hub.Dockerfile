# Slim hub image (no inference libraries). Build from the repository root:
#   docker build -f docker/hub.Dockerfile -t ainern2d-hub .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p ainern2d-hub && cp target/release/ainern2d-hub /ainern2d-hub

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd -u 1000 -m hub
COPY --from=build /ainern2d-hub /usr/local/bin/ainern2d-hub
USER hub
EXPOSE 9200
ENTRYPOINT ["ainern2d-hub"]
CMD ["run"]
