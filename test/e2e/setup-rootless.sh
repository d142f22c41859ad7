#!/usr/bin/env bash
# Sets rootless podman up for one user on a Debian 12 machine already set up by
# test/e2e/setup-podman.sh, so that the user runs `cargo xtask e2e` from a clone of their own
# (podman 4.3 rootless: slirp4netns networking, netavark and aardvark-dns on the run's network).
# As root; safe to run again, and needed again after a reboot (/run/user and the device modes
# below do not survive one).
#
#   test/e2e/setup-rootless.sh USER
#
# It creates USER when missing (with subuid/subgid ranges), its runtime directory, a storage
# configuration (native rootless overlay: kernel 5.13 or later, no FUSE), a read-only snapshot
# of root's Rust toolchain for it, and copies the base image from root's store into USER's.
# E2E_ROOTLESS_DRIVER=fuse-overlayfs or vfs picks another storage driver for a new store.
set -euo pipefail

user=${1:?usage: setup-rootless.sh USER}
BASE_IMAGE="${E2E_BASE_IMAGE:-localhost/e2e-base:bookworm}"
RUST_DIR=/opt/e2e-rust
driver=${E2E_ROOTLESS_DRIVER:-overlay}

log() { printf '[rootless %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[rootless] %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run this as root"
case $driver in overlay | fuse-overlayfs | vfs) ;; *) die "E2E_ROOTLESS_DRIVER must be overlay, fuse-overlayfs or vfs, not $driver" ;; esac

# podman 4.3 networks rootless containers through slirp4netns (it has no pasta, so passt
# would not be used); newuidmap/newgidmap (uidmap) map the user's subordinate IDs.
packages=()
command -v slirp4netns >/dev/null || packages+=(slirp4netns)
command -v newuidmap >/dev/null || packages+=(uidmap)
if [ "$driver" = fuse-overlayfs ] && ! command -v fuse-overlayfs >/dev/null; then packages+=(fuse-overlayfs); fi
if [ ${#packages[@]} -gt 0 ]; then
  log "installing ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${packages[@]}" >/dev/null
fi

# This machine kind creates /dev/net/tun and /dev/fuse with mode 0600 (distributions ship
# 0666): slirp4netns then fails `open("/dev/net/tun"): Permission denied` and fuse-overlayfs
# `failed to open /dev/fuse`. /dev is a devtmpfs without udev here, so this lasts until reboot.
open_device() {
  if [ ! -e "$1" ]; then
    mkdir -p "$(dirname "$1")"
    mknod -m 0666 "$1" c "$2" "$3"
    log "created $1"
  elif [ "$(stat -c %a "$1")" != 666 ]; then
    chmod 0666 "$1"
    log "$1 was not usable by other users: now mode 0666"
  fi
}
open_device /dev/net/tun 10 200
if [ "$driver" = fuse-overlayfs ]; then open_device /dev/fuse 10 229; fi

# The user, with subordinate IDs for its containers (useradd gives new users a range).
if ! id "$user" >/dev/null 2>&1; then
  log "creating user $user"
  useradd -m -s /bin/bash "$user"
fi
next_id() { awk -F: 'BEGIN { n = 100000 } $2 + $3 > n { n = $2 + $3 } END { print n }' /etc/subuid /etc/subgid; }
if ! grep -q "^$user:" /etc/subuid || ! grep -q "^$user:" /etc/subgid; then
  start=$(next_id)
  log "giving $user subordinate IDs $start-$((start + 65535))"
  grep -q "^$user:" /etc/subuid || usermod --add-subuids "$start-$((start + 65535))" "$user"
  grep -q "^$user:" /etc/subgid || usermod --add-subgids "$start-$((start + 65535))" "$user"
fi
uid=$(id -u "$user")
group=$(id -gn "$user")
home=$(getent passwd "$user" | cut -d: -f6)
# No logind here to make the runtime directory podman keeps its state and sockets in.
runtime_dir=/run/user/$uid
install -d -m 0700 -o "$user" -g "$group" "$runtime_dir"

# Runs a command as the user, with the environment of a login of theirs.
as_user() {
  runuser -u "$user" -- env -C "$home" -i HOME="$home" USER="$user" LOGNAME="$user" \
    PATH=/usr/local/bin:/usr/bin:/bin XDG_RUNTIME_DIR="$runtime_dir" "$@"
}

# The storage driver. Without a storage.conf podman 4.3 picks vfs rootless: full copies of
# every layer (a redis image build 8-10 s against 5-6 s on overlay, and 7x the disk).
conf=$home/.config/containers/storage.conf
wanted="# written by test/e2e/setup-rootless.sh (e2e-xtask)
[storage]
$(case $driver in
  overlay) echo 'driver = "overlay"' ;;
  vfs) echo 'driver = "vfs"' ;;
  fuse-overlayfs) printf 'driver = "overlay"\n[storage.options.overlay]\nmount_program = "/usr/bin/fuse-overlayfs"' ;;
esac)"
if [ -e "$conf" ] && ! grep -q 'e2e-xtask' "$conf"; then
  log "$conf is the user's own: left as it is"
elif [ "$(cat "$conf" 2>/dev/null)" != "$wanted" ]; then
  log "configuring $conf ($driver)"
  as_user mkdir -p "$(dirname "$conf")"
  printf '%s\n' "$wanted" | as_user tee "$conf.new" >/dev/null
  as_user mv "$conf.new" "$conf"
fi
# A store made with another driver keeps it (podman only logs an error): never reset behind
# the user's back.
want=$([ "$driver" = vfs ] && echo vfs || echo overlay)
have=$(as_user podman info --format '{{.Store.GraphDriverName}}' 2>/dev/null) ||
  die "podman info fails as $user (as $user: podman info); before kernel 5.13, E2E_ROOTLESS_DRIVER=fuse-overlayfs"
if [ "$have" != "$want" ]; then
  echo "$user's podman store uses $have, not $want." >&2
  echo "fix: as $user: podman system reset -f   (removes ALL of $user's containers and images), then run this script again" >&2
  exit 1
fi

# Rust for the user: root's rustup toolchain lives under /root (0700). Rather than open /root,
# the user gets a read-only snapshot of root's default toolchain in $RUST_DIR, hard links where
# it is on the same filesystem (no space), and a CARGO_HOME of their own (~/.cargo).
rustup_home=${RUSTUP_HOME:-/root/.rustup}
cargo_bin=${CARGO_HOME:-/root/.cargo}/bin
rust_env=""
if [ -x "$cargo_bin/rustup" ] && [ -f "$rustup_home/settings.toml" ]; then
  toolchain=$(sed -n 's/^default_toolchain = "\(.*\)"$/\1/p' "$rustup_home/settings.toml")
  [ -n "$toolchain" ] || die "no default toolchain in $rustup_home/settings.toml"
  src=$rustup_home/toolchains/$toolchain
  dst=$RUST_DIR/rustup/toolchains/$toolchain
  if [ ! -x "$dst/bin/rustc" ] || [ "$("$dst/bin/rustc" -vV)" != "$("$src/bin/rustc" -vV)" ]; then
    log "snapshotting root's Rust toolchain $toolchain into $RUST_DIR"
    rm -rf "$RUST_DIR.new"
    mkdir -p "$RUST_DIR.new/rustup/toolchains" "$RUST_DIR.new/rustup/update-hashes" "$RUST_DIR.new/bin"
    # (a failed hard-link copy is removed first: copying over its links would write root's files)
    cp -alL "$src" "$RUST_DIR.new/rustup/toolchains/" 2>/dev/null ||
      { rm -rf "${RUST_DIR:?}.new/rustup/toolchains/$toolchain" && cp -aL "$src" "$RUST_DIR.new/rustup/toolchains/"; }
    printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "default"\nauto_self_update = "disable"\n\n[overrides]\n' \
      "$toolchain" >"$RUST_DIR.new/rustup/settings.toml"
    # rustup's proxies (cargo, rustc, ...) are links to one binary; they need update-hashes/.
    cp -al "$cargo_bin/." "$RUST_DIR.new/bin/" 2>/dev/null ||
      { rm -rf "${RUST_DIR:?}.new/bin" && cp -a "$cargo_bin" "$RUST_DIR.new/bin"; }
    chmod -R a+rX "$RUST_DIR.new"
    rm -rf "$RUST_DIR"
    mv "$RUST_DIR.new" "$RUST_DIR"
  fi
  rust_env="export RUSTUP_HOME=$RUST_DIR/rustup
export PATH=$RUST_DIR/bin:\$PATH"
  # The user's crates start as a copy of root's (downloaded again otherwise, or offline not at all).
  if [ -d "${CARGO_HOME:-/root/.cargo}/registry" ] && [ ! -e "$home/.cargo/registry" ]; then
    log "copying root's cargo registry to $home/.cargo/registry"
    install -d -o "$user" -g "$group" "$home/.cargo"
    cp -a "${CARGO_HOME:-/root/.cargo}/registry" "$home/.cargo/"
    chown -R "$user:$group" "$home/.cargo/registry"
  fi
elif ! as_user sh -c 'command -v cargo' >/dev/null; then
  log "no rustup toolchain of root's found and no cargo on $user's PATH: install Rust for $user"
fi

# What the user's shells need, in a file their ~/.profile reads.
env_file=$home/.config/e2e/rootless.env
as_user mkdir -p "$(dirname "$env_file")"
printf '# written by test/e2e/setup-rootless.sh: rootless podman and Rust for cargo xtask\nexport XDG_RUNTIME_DIR=%s\n%s\n' \
  "$runtime_dir" "$rust_env" | as_user tee "$env_file" >/dev/null
if ! grep -qs 'e2e/rootless.env' "$home/.profile"; then
  as_user tee -a "$home/.profile" >/dev/null <<'PROFILE'

[ -f "$HOME/.config/e2e/rootless.env" ] && . "$HOME/.config/e2e/rootless.env"
PROFILE
fi

# The base image, from root's store (made there by setup-podman.sh); debootstrap needs root.
if as_user podman image exists "$BASE_IMAGE"; then
  log "$BASE_IMAGE is in $user's store already"
else
  bash "$(dirname "$0")/make-base-image.sh" "$BASE_IMAGE"
  log "copying $BASE_IMAGE from root's store into $user's"
  podman save "$BASE_IMAGE" | as_user podman load -q >/dev/null
fi

# A container on the default rootless network (slirp4netns), as a non-root user like the
# services' (on vfs that fails where the image's `/` is 0700: remake it with make-base-image.sh).
as_user podman run --rm --pull=never --user 65534:65534 "$BASE_IMAGE" /bin/true 2>/dev/null ||
  die "a rootless container fails: as $user: podman run --rm --user 65534:65534 $BASE_IMAGE /bin/true
  (on vfs, an image whose / is 0700 fails so: podman rmi $BASE_IMAGE as root and as $user, then run this again)"
log "rootless podman works for $user (storage: $have)"

if [ "$(as_user podman info --format '{{.Host.CgroupsVersion}}' 2>/dev/null)" = v1 ]; then
  log "note: cgroup v1: rootless podman cannot cap memory (\`podman build --memory\` fails 'cannot set memory"
  log "  limit'); cargo xtask then builds images one at a time without caps (cargo xtask doctor says so)."
fi
log "$user's environment (in $env_file, read by ~/.profile):"
printf '%s\n' "export XDG_RUNTIME_DIR=$runtime_dir" "$rust_env"
