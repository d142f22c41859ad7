#!/usr/bin/env bash
# Installs and configures podman on a fresh Debian 12 machine (see docs/podman.md),
# and makes the local base image that every E2E image starts FROM (no registry pulls).
# E2E_SKIP_BASE_IMAGE=1 skips the base image (a machine that only loads an archive).
set -euo pipefail

BASE_IMAGE="${E2E_BASE_IMAGE:-localhost/e2e-base:bookworm}"

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null || ! command -v iptables >/dev/null; then
  log "installing podman, runc, netavark, aardvark-dns, iptables, debootstrap"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq podman runc netavark aardvark-dns iptables uidmap debootstrap debian-archive-keyring zstd >/dev/null
fi

conf=/etc/containers/containers.conf
if ! grep -q 'e2e-xtask' "$conf" 2>/dev/null; then
  log "configuring $conf (runc, ulimits, netavark)"
  mkdir -p /etc/containers
  if [ -s "$conf" ]; then
    cp "$conf" "$conf.before-e2e"
    log "kept the previous one as $conf.before-e2e"
  fi
  cat >"$conf" <<'CONF'
# written by test/e2e/setup-podman.sh (e2e-xtask): see docs/podman.md in the e2e repository
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
[network]
network_backend = "netavark"
CONF
fi
# A podman that was used with the CNI backend keeps it until `podman system reset`, which
# removes every container and image: never done behind anyone's back.
backend=$(podman info --format '{{.Host.NetworkBackend}}' 2>/dev/null || true)
if [ -n "$backend" ] && [ "$backend" != netavark ]; then
  echo "podman still uses the $backend network backend; containers on one network will not resolve each other's names." >&2
  echo "fix: podman system reset -f   (removes ALL containers and images), then run this script again" >&2
  exit 1
fi

if [ "${E2E_SKIP_BASE_IMAGE:-0}" != 1 ] && ! podman image exists "$BASE_IMAGE"; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  root=$(mktemp -d /var/tmp/e2e-base.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  log "making base image $BASE_IMAGE with debootstrap from $mirror"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >/var/tmp/e2e-debootstrap.log 2>&1 \
    || { tail -n 30 /var/tmp/e2e-debootstrap.log; exit 1; }
  # Keep the image small: apt caches and docs are not needed at run time.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
  tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  log "base image $BASE_IMAGE ready"
fi
