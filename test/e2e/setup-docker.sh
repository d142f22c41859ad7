#!/usr/bin/env bash
# Installs docker (Debian's docker.io), starts dockerd when it is not running (there is no
# systemd on these machines), and loads the E2E base image into it from podman, so
# `cargo xtask prebuild-images --engine docker` needs no registry. Run after setup-podman.sh.
set -euo pipefail

BASE_IMAGE="${E2E_BASE_IMAGE:-localhost/e2e-base:bookworm}"
log() { printf '[setup-docker %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if ! command -v dockerd >/dev/null; then
  log "installing docker.io"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi

if ! docker version >/dev/null 2>&1; then
  log "starting dockerd (log: /var/log/dockerd.log)"
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  deadline=$((SECONDS + 60))
  until docker version >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 30 /var/log/dockerd.log
      echo "dockerd did not answer within 60 s" >&2
      exit 1
    fi
    sleep 0.2
  done
fi

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "loading base image $BASE_IMAGE from podman into docker"
  podman save "$BASE_IMAGE" | docker load >/dev/null
fi
log "docker $(docker version --format '{{.Server.Version}}') is ready with $BASE_IMAGE"
