#!/usr/bin/env bash
# Makes the base image every E2E image starts FROM, without a registry: Debian bookworm
# (minbase) from the machine's Debian mirror with debootstrap on this machine, imported into
# the engine podman talks to: this machine's, or with CONTAINER_HOST (or CONTAINER_CONNECTION)
# set, a remote engine's own store through its API (nothing goes into this machine's store).
# `cargo xtask` runs it when neither the configured base image nor this one is in the engine
# and the configured one cannot be pulled; test/e2e/setup-podman.sh runs it too.
#
#   test/e2e/make-base-image.sh [IMAGE]     default: localhost/e2e-base:bookworm
#
# Needs root and debootstrap (apt-get install debootstrap debian-archive-keyring).
set -euo pipefail

image=${1:-localhost/e2e-base:bookworm}
log() { printf '[base %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
if [[ -n ${CONTAINER_HOST:-} || -n ${CONTAINER_CONNECTION:-} ]]; then
  where="the engine at ${CONTAINER_HOST:-connection $CONTAINER_CONNECTION}, through its API"
else
  where="this machine's podman"
fi

if podman image exists "$image"; then
  log "$image is there already, in $where"
  exit 0
fi
command -v debootstrap >/dev/null || { log "debootstrap is not installed: apt-get install -y debootstrap debian-archive-keyring"; exit 1; }
[ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 1; }
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d /var/tmp/e2e-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
log "making base image $image with debootstrap from $mirror, for $where"
debootstrap --variant=minbase bookworm "$root" "$mirror" >/var/tmp/e2e-debootstrap.log 2>&1 \
  || { tail -n 30 /var/tmp/e2e-debootstrap.log >&2; exit 1; }
# Keep the image small: apt caches and docs are not needed at run time.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
log "base image $image ready, in $where"
