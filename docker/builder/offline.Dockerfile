# A Rust builder image made without a registry: the local base image, a C toolchain from
# Debian, and the Rust toolchain of the machine that makes it (test/e2e/make-builder-image.sh
# stages it into the build context). Where a registry answers, the images file's default,
# the official rust image, is used instead.
ARG BASE_IMAGE=localhost/e2e-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev pkg-config ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY toolchain /usr/local/rust
ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:$PATH CARGO_HOME=/usr/local/cargo RUSTUP_TOOLCHAIN=
