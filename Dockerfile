# syntax=docker/dockerfile:1

# Dependencies alone, from the manifest and lock file with stand-in sources: this layer is kept
# until Cargo.toml or Cargo.lock change, so an edit to src/ does not rebuild every crate.
FROM rust:1-bookworm AS deps
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/hot_paths.rs \
    && echo 'fn main() {}' > benches/e2e_load.rs \
    && cargo build --release --locked --bin mfa-gateway \
    && rm -rf src benches target/release/.fingerprint/mfa-gateway-* target/release/deps/mfa_gateway-* target/release/deps/libmfa_gateway-*

# The gateway itself, on the cached dependencies.
FROM deps AS build
COPY src ./src
COPY benches ./benches
COPY config ./config
RUN cargo build --release --locked --bin mfa-gateway

# Runtime: distroless (glibc, CA certificates for https key servers), as distroless's nonroot
# user by number, so that runAsNonRoot can verify it.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="mfa-gateway" \
      org.opencontainers.image.description="Reverse proxy that verifies bearer tokens and enforces MFA per route" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
COPY --from=build /src/target/release/mfa-gateway /usr/local/bin/mfa-gateway
COPY config/docker.toml /etc/mfa-gateway/gateway.toml
USER 65532:65532
EXPOSE 8080 9901
# Distroless has no shell or curl: the binary asks its own admin port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/mfa-gateway", "probe", "--admin", "127.0.0.1:9901", "--path", "/healthz"]
# Mount your own config read-only over /etc/mfa-gateway/gateway.toml.
ENTRYPOINT ["/usr/local/bin/mfa-gateway"]
CMD ["run", "--config", "/etc/mfa-gateway/gateway.toml"]
