#!/usr/bin/env bash
# Makes the Rust builder image for `cargo xtask ... --compile-in engine` on a machine that
# reaches no container registry: the local base image, gcc from Debian, and this machine's own
# Rust toolchain (hard-linked into the build context, so staging takes no time; its docs left
# out). Where a registry answers, the images file's default (the official rust image) is
# pulled instead and this script is not needed.
#
#   test/e2e/make-builder-image.sh [IMAGE]     default: localhost/e2e-rust:<rustc version>
#
# Environment: E2E_BASE_IMAGE (default localhost/e2e-base:bookworm), CONTAINER_HOST (an engine
# elsewhere: the context is sent through its API).
set -euo pipefail
cd "$(dirname "$0")/../.."

version=$(rustc --version | awk '{print $2}')
image=${1:-localhost/e2e-rust:$version}
base=${E2E_BASE_IMAGE:-localhost/e2e-base:bookworm}
sysroot=$(rustc --print sysroot)

log() { printf '[builder %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if podman image exists "$image"; then
  log "$image is there already"
  echo "$image"
  exit 0
fi
context=$(mktemp -d /var/tmp/e2e-builder.XXXXXX)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/toolchain"
# Hard links where the filesystem allows, copies elsewhere.
cp -al "$sysroot/bin" "$sysroot/lib" "$context/toolchain/" 2>/dev/null \
  || cp -a "$sysroot/bin" "$sysroot/lib" "$context/toolchain/"
log "building $image from $base and rustc $version ($(du -sh "$context/toolchain" | cut -f1))"
podman build --pull=never --build-arg "BASE_IMAGE=$base" \
  --file docker/builder/offline.Dockerfile --tag "$image" "$context" >&2
log "$image ready"
echo "$image"
