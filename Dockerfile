# The service image, built where a registry is reachable:
#
#   docker build -t redis-postgres-sync .
#
# Compiles in the official Rust image and runs on distroless/cc (glibc, CA certificates, no
# shell) as the numeric non-root user 65532. Without a registry, deploy/container/build makes
# the same image from a static musl binary and a scratch base (README, "Container").
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit, buildah); the binary leaves
# the cached target dir in the same step, its line tables (for backtraces) compressed.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin redis-postgres-sync \
 && objcopy --compress-debug-sections=zlib target/release/redis-postgres-sync /redis-postgres-sync

FROM ${RUNTIME_IMAGE}
COPY --from=builder /redis-postgres-sync /usr/local/bin/redis-postgres-sync
# distroless ships the CA bundle here; rustls (system roots) reads SSL_CERT_FILE.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
# /health, /ready and /metrics (HTTP_PORT); every setting comes from the environment.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/redis-postgres-sync"]
CMD ["sync"]
