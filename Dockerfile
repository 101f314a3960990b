# Multi-stage build: compile with the Rust toolchain, ship only the binary on distroless.
#
#   docker build -t sluice:0.1.0 .                       compile in the toolchain image
#   cargo build --release --locked
#   docker build --target prebuilt -t sluice:0.1.0 .     copy target/release/sluice instead
#
# Each base image is a build argument, so the image can be built from local copies where a
# registry is out of reach (scripts/container-test does, with podman): RUST_IMAGE for the
# toolchain, RUNTIME_IMAGE for the runtime (glibc, libgcc, CA roots, user 65532, no shell).
# podman needs `--format docker` to keep the HEALTHCHECK (OCI images have none).
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# Everything but the binary. The user is numeric so that Kubernetes' runAsNonRoot can verify it.
FROM ${RUNTIME_IMAGE} AS runtime
# The default policy (the demo's: it listens on 127.0.0.1, for a pod's or the host's network);
# mount a directory of your own over /etc/sluice, or pass -c.
COPY config/sluice.yaml /etc/sluice/sluice.yaml
USER 65532:65532
# Container logs go to collectors, not terminals: no ANSI colour codes in them.
ENV NO_COLOR=1
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["/usr/local/bin/sluice", "health", "--admin", "127.0.0.1:9090"]
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["run", "-c", "/etc/sluice/sluice.yaml"]

# A binary built on the host (the same glibc as Debian 12 or older); .dockerignore lets
# target/release/sluice, and nothing else of target/, into the build context. This stage comes
# before the toolchain's so that building it never needs the toolchain image.
FROM runtime AS prebuilt
COPY target/release/sluice /usr/local/bin/sluice

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY config config
COPY benches benches
RUN cargo build --release --locked && strip target/release/sluice

FROM runtime
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
