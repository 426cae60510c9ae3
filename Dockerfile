# syntax=docker/dockerfile:1
#
# The portcullis container image: a release build on Debian bookworm, run as
# an unprivileged user on debian:bookworm-slim.
#
#   docker build -t portcullis .
#   docker run --rm -v /path/to/portcullis.yaml:/etc/portcullis/portcullis.yaml:ro \
#     -p 8080:8080 -p 9090:9090 portcullis
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts,
# which keep the cargo registry and the target directory between builds, so a
# change to src/ recompiles portcullis, not its dependencies.
# tests/packaging.rs checks that the COPY lines below bring in everything
# `cargo build` reads (it derives the list from Cargo.toml and the
# include_str!/include_bytes! paths under src/).

ARG RUST_VERSION=1
FROM rust:${RUST_VERSION}-bookworm AS build
# cmake: aws-lc-sys and the vendored C code (zlib-ng, zstd) of Pingora's
# dependencies. The image already has a C compiler, make and pkg-config.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Least often changed first.
COPY Cargo.toml Cargo.lock ./
# [patch.crates-io] pingora-proxy = { path = "vendor/pingora-proxy" }
COPY vendor vendor
# Cargo.toml declares [[bench]] targets: cargo refuses a manifest whose
# declared targets are missing, even when building only the binary.
COPY benches benches
# Compiled in with include_str!: web/sdk.js always; web/demo.html,
# web/site.html and conf/demo.yaml with the `demo` feature only.
COPY web web
COPY conf conf
COPY src src
# The one build line: the production build, without the `demo` feature (no
# demo, echo backend or development provider in the image). Add
# `--features demo` here for an image that can run `portcullis demo`.
RUN --mount=type=cache,id=portcullis-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=portcullis-target,target=/src/target \
    cargo build --locked --release --bin portcullis \
 && install -D -m 0755 target/release/portcullis /out/portcullis

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 portcullis \
 && useradd --system --uid 10001 --gid portcullis --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin portcullis
COPY --from=build /out/portcullis /usr/local/bin/portcullis
# The documented example (every key); mount the real file at
# /etc/portcullis/portcullis.yaml.
COPY conf/portcullis.example.yaml /etc/portcullis/portcullis.example.yaml
# The image has no curl: the health probe is a bash script speaking HTTP/1.1
# over /dev/tcp to the admin listener's /healthz (PORTCULLIS_HEALTH_ADDR,
# default 127.0.0.1:9090, the admin address of conf/compose/portcullis.yaml).
COPY scripts/docker-healthcheck.sh /usr/local/bin/portcullis-healthcheck
USER portcullis:portcullis
# 8080: the proxy listener; 9090: the admin listener (/metrics, /healthz).
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/portcullis-healthcheck"]
# SIGTERM drains (shutdown.drain_grace, default 5 s), then closes live
# WebSockets with 1001 over shutdown.close_window (default 10 s): give
# `docker stop` more than its default 10 s (`-t 30`, compose
# stop_grace_period). SIGHUP reloads the configuration.
STOPSIGNAL SIGTERM
ENTRYPOINT ["portcullis"]
CMD ["run", "-c", "/etc/portcullis/portcullis.yaml"]
