#!/usr/bin/env bash
# Installs and configures podman (and kubectl, where missing) on a fresh Debian 12 machine (see docs/podman.md),
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

# `cargo test` parses the Kind manifests with kubectl (offline); Debian 12 ships it as
# kubernetes-client. Only where no kubectl is on PATH: an upstream one is kept.
if ! command -v kubectl >/dev/null; then
  log "installing kubectl (Debian's kubernetes-client)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq kubernetes-client >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq kubernetes-client >/dev/null; }
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

if [ "${E2E_SKIP_BASE_IMAGE:-0}" != 1 ]; then
  bash "$(dirname "$0")/make-base-image.sh" "$BASE_IMAGE"
fi
