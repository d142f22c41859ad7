#!/bin/bash
# Entry point of the e2e-twin container (under catatonit; there is no systemd in it): sshd and
# the two API services of a podman machine, root's (unix:///run/podman/podman.sock) and the
# rootless user core's (unix:///run/user/1000/podman/podman.sock). Made by test/rig/twin.sh.
set -euo pipefail

log() { printf '[e2e-twin-entrypoint %s] %s\n' "$(date +%T)" "$*" >&2; }

readonly CORE_UID=1000
readonly CORE_RUN=/run/user/$CORE_UID
readonly CLEAN_PROC=/run/e2e-twin/proc

# A proc of the twin's own with nothing mounted over it. /proc has lxcfs's files bind-mounted
# over meminfo, cpuinfo, ... (so that podman info reports the twin's memory), and the kernel
# lets a user namespace mount a new proc (every rootless container does) only where a proc
# mount of the same namespace is fully visible (fs/namespace.c, mnt_already_visible): this one.
mkdir -p "$CLEAN_PROC"
if ! mountpoint -q "$CLEAN_PROC"; then
    mount -t proc -o nosuid,nodev,noexec proc "$CLEAN_PROC"
fi

# Rootless networking (pasta) opens /dev/net/tun and fuse-overlayfs /dev/fuse as core; this
# host creates both 0600. The twin's /dev is its own, so this changes nothing on the host.
for dev in /dev/net/tun:10:200 /dev/fuse:10:229; do
    IFS=: read -r path major minor <<<"$dev"
    if [[ ! -e $path ]]; then
        mkdir -p "$(dirname "$path")"
        mknod "$path" c "$major" "$minor"
    fi
    chmod 0666 "$path"
done

# Mounts propagate as on a machine booted by systemd (rootless podman warns otherwise, and
# its containers can miss mounts).
mount --make-rshared /

# A previous twin's runtime state (pids, locks, sockets) must not survive into this one.
rm -rf /run/containers/storage /run/libpod /run/podman "$CORE_RUN"
install -d -m 0755 /run/podman /run/sshd
install -d -m 0700 -o core -g core "$CORE_RUN" "$CORE_RUN/podman"
# core's store is a directory of the twin's disk, mounted over ~core/.local/share/containers.
chown core:core /home/core/.local /home/core/.local/share /home/core/.local/share/containers

export PODMAN_IGNORE_CGROUPSV1_WARNING=1

/usr/sbin/sshd -D -e &
log "sshd started (pid $!)"

podman system service --time=0 unix:///run/podman/podman.sock &
log "root's podman API service started (pid $!): unix:///run/podman/podman.sock"

setpriv --reuid="$CORE_UID" --regid="$CORE_UID" --init-groups --reset-env \
    env HOME=/home/core USER=core LOGNAME=core PATH=/usr/local/bin:/usr/bin:/bin \
    XDG_RUNTIME_DIR="$CORE_RUN" PODMAN_IGNORE_CGROUPSV1_WARNING=1 \
    podman system service --time=0 "unix://$CORE_RUN/podman/podman.sock" &
log "core's podman API service started (pid $!): unix://$CORE_RUN/podman/podman.sock"

# One of them ending ends the twin (its log says which), as a machine whose engine died.
set +e
wait -n
status=$?
log "a service exited (status $status): stopping the twin"
exit "$status"
