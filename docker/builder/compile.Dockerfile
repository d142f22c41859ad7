# One compile of the workspace's binaries (and of the E2E suite's tests) in the engine, for
# engines whose platform this machine cannot compile for, or `--compile-in engine`.
# Build context: the workspace's sources, staged by the xtask (no target/, no .git).
# Cargo's registry and target directory are cache mounts: they stay in the engine between
# builds, so a one-line change recompiles one crate, not the dependencies.
ARG BUILDER_IMAGE=docker.io/library/rust:1.95-slim-bookworm
FROM ${BUILDER_IMAGE}
# The binaries the images package, as cargo arguments (`--bin gateway --bin data-storage`).
ARG BINARIES
# cargo's --jobs: as many rustc as the build's memory cap holds (the xtask computes it).
ARG JOBS=1
WORKDIR /src
COPY . .
# A network that intercepts TLS is trusted when the host trusts it: the xtask stages the
# host's CA bundle as ca-certificates.crt when there is one.
RUN --mount=type=cache,id=e2e-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=e2e-cargo-target,target=/src/target \
    if [ -s ca-certificates.crt ]; then \
      export CARGO_HTTP_CAINFO=/src/ca-certificates.crt SSL_CERT_FILE=/src/ca-certificates.crt; \
    fi \
 && cargo build --locked --jobs ${JOBS} --workspace ${BINARIES} \
 && cargo test --locked --jobs ${JOBS} -p e2e-suite --tests --no-run --message-format=json >/tmp/suite.json \
 && mkdir -p /out/suite \
 && for b in ${BINARIES}; do case "$b" in --bin) ;; *) cp "target/debug/$b" /out/ ;; esac; done \
 && grep -o '"executable":"[^"]*"' /tmp/suite.json | cut -d'"' -f4 | xargs -r -I{} cp {} /out/suite/
