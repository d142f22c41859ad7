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
# Needs root and debootstrap (apt-get install debootstrap debian-archive-keyring). A rootless
# user copies root's image into their own store (the message below says how).
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
if [ "$(id -u)" != 0 ]; then
  log "debootstrap needs root. With rootless podman, make the image in root's store and copy it into yours:"
  log "  sudo $0 $image && sudo podman save $image | podman load"
  log "(test/e2e/setup-rootless.sh USER does both for USER; see docs/podman.md, \"Rootless podman\")"
  exit 1
fi
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d /var/tmp/e2e-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
log "making base image $image with debootstrap from $mirror, for $where"
debootstrap --variant=minbase bookworm "$root" "$mirror" >/var/tmp/e2e-debootstrap.log 2>&1 \
  || { tail -n 30 /var/tmp/e2e-debootstrap.log >&2; exit 1; }
# Keep the image small: apt caches and docs are not needed at run time.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
# mktemp -d made the root 0700: the image's `/` must be 0755 as in any distribution's image, or
# every non-root container fails on a `vfs` store (`stat /bin/ls: permission denied`; overlay
# hides it behind its own 0555 mount root).
chmod 0755 "$root"
tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
log "base image $image ready, in $where"
