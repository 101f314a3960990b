# Multi-stage build: compile with the Rust toolchain, ship only the binary on distroless.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY config config
COPY benches benches
RUN cargo build --release --locked && strip target/release/sluice

# distroless/cc: glibc and CA roots, no shell; `nonroot` runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
# The default policy, overridable by mounting a file over it (or passing -c).
COPY config/sluice.yaml /etc/sluice/sluice.yaml
USER nonroot:nonroot
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["/usr/local/bin/sluice", "health", "--admin", "127.0.0.1:9090"]
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["run", "-c", "/etc/sluice/sluice.yaml"]
