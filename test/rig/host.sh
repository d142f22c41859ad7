# shellcheck shell=bash
# What the engines of test/rig (remote-engine.sh, twin.sh, vm.sh: each sources this) do alike
# on the host: their disk, a filesystem of their own in a sparse file; their lxcfs, started and
# ended by the script (and only the one it started); their image's removal; their usage. The script sets
# DISK_IMG, DISK_MNT, LXCFS_DIR, LXCFS_PIDFILE and LXCFS_LOG, and defines `log` and `die`.

# The host's own podman, whatever CONTAINER_HOST says (it may point at the engine).
hpod() { env -u CONTAINER_HOST -u CONTAINER_CONNECTION -u CONTAINER_SSHKEY podman "$@"; }

# Seconds since the epoch, with milliseconds, for timings.
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# `what` (the rig, the twin) is a privileged container of the host's rootful podman.
require_host() {
    [[ $EUID -eq 0 ]] || die "run as root: $1 is a privileged container of the host's rootful podman"
    command -v podman >/dev/null || die "podman is not installed (test/e2e/setup-podman.sh)"
}

# From the mount table, not stat(): a dead lxcfs leaves a mount whose stat fails (ENOTCONN).
mounted() { awk -v d="$1" '$2 == d { found = 1 } END { exit !found }' /proc/self/mounts; }

# The engine's disk: a sparse ext4 file of `size` (no reserved blocks), made when missing, on
# $DISK_MNT; `whose` names it (`the rig's`).
mount_disk() {
    local size=$1 whose=$2
    mkdir -p "$DISK_MNT"
    mounted "$DISK_MNT" && return
    if [[ ! -f $DISK_IMG ]]; then
        command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 is not installed: apt-get install e2fsprogs"
        log "making $whose disk: $DISK_IMG, a sparse $size ext4 filesystem"
        truncate -s "$size" "$DISK_IMG"
        mkfs.ext4 -q -m 0 "$DISK_IMG" || die "mkfs.ext4 $DISK_IMG failed"
    fi
    mount -o loop "$DISK_IMG" "$DISK_MNT" ||
        die "mounting $whose disk $DISK_IMG failed (it needs a loop device: modprobe loop)"
}

# Unmounts and removes the engine's disk, `what` saying what goes with it; the mount point is
# left to the caller.
remove_disk() {
    local what=$1
    if mounted "$DISK_MNT"; then
        umount "$DISK_MNT" || umount -l "$DISK_MNT"
    fi
    if [[ -e $DISK_IMG ]]; then
        log "removing $what"
        rm -f "$DISK_IMG"
    fi
}

# Every tag of the image repository `repo` in the host's podman, `what` naming it in the log.
remove_images() {
    local repo=$1 what=$2 img
    while read -r img; do
        [[ -n $img ]] || continue
        hpod rmi -f "$img" >/dev/null
        log "removed $what $img"
    done < <(hpod images --filter "reference=$repo" --format '{{.Repository}}:{{.Tag}}')
}

# The /proc files lxcfs virtualizes for a container (lxcfs's documented set).
# shellcheck disable=SC2034 # read by the scripts that source this
readonly LXCFS_PROC_FILES=(cpuinfo diskstats meminfo stat swaps uptime)

lxcfs_mounted() { mounted "$LXCFS_DIR"; }
lxcfs_ok() { lxcfs_mounted && head -c1 "$LXCFS_DIR/proc/meminfo" >/dev/null 2>&1; }

# Starts lxcfs on $LXCFS_DIR (its pid in $LXCFS_PIDFILE), after unmounting what a dead one
# left there, and waits until it answers (10 s at most).
lxcfs_start() {
    if lxcfs_mounted; then
        log "the lxcfs mount at $LXCFS_DIR no longer answers (its lxcfs died): unmounting it"
        umount -l "$LXCFS_DIR"
    fi
    mkdir -p "$LXCFS_DIR"
    log "starting lxcfs on $LXCFS_DIR (pid file $LXCFS_PIDFILE, log $LXCFS_LOG)"
    setsid lxcfs -p "$LXCFS_PIDFILE" "$LXCFS_DIR" >"$LXCFS_LOG" 2>&1 </dev/null &
    local pid=$! deadline=$((SECONDS + 10))
    until lxcfs_ok; do
        if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
            tail -n 5 "$LXCFS_LOG" >&2 || true
            die "lxcfs did not come up on $LXCFS_DIR (its log above, all of it in $LXCFS_LOG)"
        fi
        sleep 0.05
    done
}

# Ends the lxcfs $LXCFS_PIDFILE names while it is still an lxcfs, and waits (10 s at most);
# `what` names it in the log.
lxcfs_kill() {
    local what=$1 pid
    [[ -f $LXCFS_PIDFILE ]] || return 0
    pid=$(cat "$LXCFS_PIDFILE")
    if [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == lxcfs ]]; then
        log "stopping $what (pid $pid)"
        kill "$pid"
        local deadline=$((SECONDS + 10))
        while kill -0 "$pid" 2>/dev/null; do
            ((SECONDS < deadline)) || die "lxcfs (pid $pid) did not exit within 10 s"
            sleep 0.05
        done
    fi
}

# The usage: the main script's header comment, from its second line to `set -euo`.
usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[-1]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
}
