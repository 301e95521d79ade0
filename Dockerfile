# Build stage: release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
RUN cargo build --release --locked --bin mfa-gateway

# Runtime stage: distroless (glibc, CA certificates for https key servers), non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/mfa-gateway /usr/local/bin/mfa-gateway
COPY config/gateway.toml /etc/mfa-gateway/gateway.toml
USER nonroot:nonroot
EXPOSE 8080 9901
# Mount your own config read-only over /etc/mfa-gateway/gateway.toml.
ENTRYPOINT ["/usr/local/bin/mfa-gateway"]
CMD ["run", "--config", "/etc/mfa-gateway/gateway.toml"]
