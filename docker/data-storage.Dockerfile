# The DataStorage image: packages a binary compiled on the host by `cargo xtask`.
# Build context: a directory holding only the `data-storage` binary (the xtask stages it).
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
FROM ${BASE_IMAGE}
COPY data-storage /usr/local/bin/data-storage
USER 65534:65534
EXPOSE 8080
ENV LISTEN_ADDR=0.0.0.0:8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/data-storage"]
