# The E2E suite's test binaries, for an engine whose published ports this machine cannot
# reach (a remote engine): `cargo xtask e2e` runs them in a container on the run's network.
# Build context: a directory holding only the test binaries (the xtask stages it).
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
FROM ${BASE_IMAGE}
COPY . /suite/
USER 65534:65534
WORKDIR /suite
