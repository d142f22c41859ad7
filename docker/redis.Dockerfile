# Redis from Debian's package, on the shared E2E base image.
# Build context: docker/redis/ (the configuration file).
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/*
COPY redis.conf /etc/redis/e2e.conf
USER redis
EXPOSE 6379
CMD ["redis-server", "/etc/redis/e2e.conf"]
