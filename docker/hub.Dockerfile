# syntax=docker/dockerfile:1
# The slim hub image: no inference libraries (the hub never links them). From the repository root:
#   docker build -f docker/hub.Dockerfile -t ainern2d-hub .
# Runs as ainern2d (uid 1000, gid 1000, as deploy/kubernetes' runAsUser) and needs no writable path of its
# own: run it with a read-only root filesystem and a tmpfs on /tmp. Config: AINERN2D_HUB_CONFIG names a TOML
# file (e.g. /etc/ainern2d/hub.toml, mounted read-only), AINERN2D_HUB_<SECTION>__<KEY> variables override
# it. Secrets: the broker and database URLs come from the environment only (the hub has no *_file key for
# them); the admin and read tokens can be files (api.admin_token_file, api.read_token_file, e.g. under
# /run/secrets/), else AINERN2D_HUB_ADMIN_TOKEN / AINERN2D_HUB_READ_TOKEN.
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY . .
# The caches keep the registry and the target directory between builds (BuildKit); the binary is copied
# out of the cached target directory, which the next stage cannot see.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,id=ainern2d-hub-target \
    cargo build --release --locked -p ainern2d-hub \
    && install -D target/release/ainern2d-hub /out/ainern2d-hub \
    && docker/runtime-packages.sh /out/ainern2d-hub > /out/runtime-packages.txt

FROM debian:bookworm-slim
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=build /out/runtime-packages.txt /tmp/runtime-packages.txt
# Version pins would break on every Debian point release; the base image tag is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
    && xargs -a /tmp/runtime-packages.txt apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
    && groupadd --gid 1000 ainern2d \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ainern2d \
    && install -d -m 0755 /etc/ainern2d
COPY --from=build /out/ainern2d-hub /usr/local/bin/ainern2d-hub
COPY docker/healthcheck.sh /usr/local/bin/healthcheck.sh
# A read-only root: anything that caches under $HOME writes to the /tmp tmpfs.
ENV HOME=/tmp
USER 1000:1000
EXPOSE 9200
# /health on http.listen's default port; a config that moves the port needs its own healthcheck (compose/).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["/usr/local/bin/healthcheck.sh", "9200"]
# The hub stops on SIGTERM: the batch in hand is committed, then the HTTP server closes.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ainern2d-hub"]
CMD ["run"]
