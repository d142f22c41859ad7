#!/usr/bin/env bash
# The twin of podman machine on a Linux host: podman 5 (Debian trixie's 5.4.2) with 2 GiB of
# its own, reached as podman machine's engine is, over ssh with an identity file, on two
# connections: the rootless user core's (podman machine's default) and root's.
#
# It is a privileged container, `e2e-twin`, of the host's rootful podman, started with
# --memory 2g --memory-swap 2g from localhost/e2e-twin:<tag>, an image of a Debian trixie
# rootfs made here with debootstrap (no registry needed; the tag is a hash of the twin's files,
# so an edit rebuilds it). In it, under catatonit: sshd (port 22, published on
# 127.0.0.1:$E2E_TWIN_PORT of the host), root's `podman system service` on
# /run/podman/podman.sock and core's (uid 1000) on /run/user/1000/podman/podman.sock. Both
# stores are on a disk of the twin's own (a sparse ext4 file, loop-mounted). lxcfs's /proc
# files make podman info report the 2 GiB on both connections. The podman 5 client for this
# host is trixie's own binary run through trixie's loader. See test/rig/README.md.
#
#   test/rig/twin.sh start     make what is missing (rootfs, image, disk, key pair, client),
#                              start the twin, wait for both connections, load the base image
#                              into both stores, write the host keys into root's known_hosts
#   test/rig/twin.sh env [rootless|rootful]
#                              print the export lines (PATH, CONTAINER_HOST, CONTAINER_SSHKEY)
#                              for one connection (default rootless, as podman machine):
#                              eval "$(test/rig/twin.sh env rootless)"
#   test/rig/twin.sh client    print the directory of the podman 5 client (first on PATH)
#   test/rig/twin.sh status    the twin's state and what each connection reports; exit 0 when
#                              both answer podman info
#   test/rig/twin.sh stop      remove the twin and everything it made on the host but its
#                              image (idempotent)
#   test/rig/twin.sh purge     stop, and remove the twin's images too
#
# Environment: E2E_TWIN_PORT (the host's port for the twin's ssh, default 2223),
# E2E_TWIN_MEMORY (default 2g), E2E_TWIN_DISK (the disk's size, default 16g),
# E2E_TWIN_NO_BASE=1 (start without loading the base image), E2E_BASE_IMAGE (default
# localhost/e2e-base:bookworm), E2E_TWIN_TIMEOUT (seconds to wait for the connections,
# default 60), E2E_TWIN_MIRROR (the Debian mirror for debootstrap; default the URIs line of
# /etc/apt/sources.list.d/debian.sources, else http://deb.debian.org/debian).
# Run as root. Progress goes to stderr; stdout carries only what env and client print.
set -euo pipefail

readonly TWIN_NAME=e2e-twin
readonly TWIN_IMAGE_REPO=localhost/e2e-twin
readonly STATE_DIR=/var/lib/e2e-twin
readonly ROOTFS=$STATE_DIR/rootfs
readonly ROOTFS_STAMP=$STATE_DIR/rootfs.tag
readonly KEY=$STATE_DIR/ssh/id_ed25519
readonly CLIENT_DIR=$STATE_DIR/bin
readonly DISK_IMG=$STATE_DIR/store.ext4
readonly DISK_MNT=$STATE_DIR/store
readonly RUN_DIR=/run/e2e-twin
readonly LXCFS_DIR=$RUN_DIR/lxcfs
readonly LXCFS_PIDFILE=$RUN_DIR/lxcfs.pid
readonly LXCFS_LOG=$RUN_DIR/lxcfs.log
readonly SUITE=trixie
# What podman machine's image has that matters here, and sshd; catatonit is the init.
readonly PACKAGES=podman,conmon,runc,crun,netavark,aardvark-dns,iptables,nftables,catatonit,uidmap,fuse-overlayfs,slirp4netns,passt,openssh-server,ca-certificates,procps
# Everything the twin image is made from: their content names the image's tag.
readonly TWIN_FILES=(twin.sh twin-entrypoint.sh twin-containers.conf twin-storage.conf twin-sshd.conf)
readonly CORE_UID=1000
readonly ROOTLESS_SOCK=/run/user/$CORE_UID/podman/podman.sock
readonly ROOTFUL_SOCK=/run/podman/podman.sock

PORT=${E2E_TWIN_PORT:-2223}
TWIN_MEMORY=${E2E_TWIN_MEMORY:-2g}
TWIN_DISK=${E2E_TWIN_DISK:-16g}
BASE_IMAGE=${E2E_BASE_IMAGE:-localhost/e2e-base:bookworm}
START_TIMEOUT=${E2E_TWIN_TIMEOUT:-60}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# hpod, now, since, require_host, mounted, mount_disk, remove_disk, remove_images, lxcfs_*,
# usage
# shellcheck source=test/rig/host.sh
source "$HERE/host.sh"
KNOWN_HOSTS=$(getent passwd root | cut -d: -f6)/.ssh/known_hosts
readonly TWIN_MEMORY TWIN_DISK BASE_IMAGE START_TIMEOUT HERE KNOWN_HOSTS
readonly MIRROR=${E2E_TWIN_MIRROR:-} ENGINE="the twin" SCRIPT=twin.sh
# url_of, tpod, mirror, ensure_client, ensure_key, forget_host_keys, write_host_keys,
# port_free, print_env, status_connections
# shellcheck source=test/rig/ssh-engine.sh
source "$HERE/ssh-engine.sh"

log() { printf '[e2e-twin %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# The port the running twin publishes its ssh on, else the configured one.
engine_port() {
    local published
    published=$(hpod port "$TWIN_NAME" 22/tcp 2>/dev/null | head -n1 || true)
    if [[ $published =~ :([0-9]+)$ ]]; then
        echo "${BASH_REMATCH[1]}"
    else
        echo "$PORT"
    fi
}

twin_exists() { hpod container exists "$TWIN_NAME"; }
twin_running() { [[ $(hpod container inspect --format '{{.State.Running}}' "$TWIN_NAME" 2>/dev/null) == true ]]; }
api_ok() { [[ -x $CLIENT_DIR/podman && -f $KEY ]] && tpod "$1" info --format '{{.Host.ServiceIsRemote}}' >/dev/null 2>&1; }

# localhost/e2e-twin:<16 hex digits of the SHA-256 of the twin's files and its package list>.
twin_image_ref() {
    local fp
    fp=$({ (cd "$HERE" && sha256sum "${TWIN_FILES[@]}"); echo "$SUITE $PACKAGES"; } | sha256sum | cut -c1-16)
    echo "$TWIN_IMAGE_REPO:$fp"
}

# The twin's rootfs, debootstrapped (about 55 s) into a staging directory, then moved.
debootstrap_rootfs() {
    command -v debootstrap >/dev/null || die "debootstrap is not installed: apt-get install -y debootstrap debian-archive-keyring"
    local staging=$ROOTFS.new m t0
    m=$(mirror)
    rm -rf "$staging"
    log "debootstrap --variant=minbase $SUITE from $m (about 1 min; log in $STATE_DIR/debootstrap.log)"
    t0=$(now)
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$staging" "$m" >"$STATE_DIR/debootstrap.log" 2>&1 || {
        tail -n 15 "$STATE_DIR/debootstrap.log" >&2
        die "debootstrap failed (the end of its log above)"
    }
    rm -rf "$ROOTFS"
    mv "$staging" "$ROOTFS"
    rm -f "$STATE_DIR/debootstrap.log"
    log "debootstrapped $SUITE in $(since "$t0") s"
}

# The twin's files in the rootfs, and the user core (uid 1000, subordinate IDs, no password
# but not locked: sshd without PAM refuses locked accounts). Idempotent.
configure_rootfs() {
    install -m 0644 "$HERE/twin-containers.conf" "$ROOTFS/etc/containers/containers.conf"
    install -m 0644 "$HERE/twin-storage.conf" "$ROOTFS/etc/containers/storage.conf"
    install -m 0644 "$HERE/twin-sshd.conf" "$ROOTFS/etc/ssh/sshd_config.d/e2e-twin.conf"
    install -m 0755 "$HERE/twin-entrypoint.sh" "$ROOTFS/usr/local/bin/twin-entrypoint"
    if ! grep -q '^core:' "$ROOTFS/etc/passwd"; then
        chroot "$ROOTFS" useradd -m -u "$CORE_UID" -s /bin/bash core
    fi
    chroot "$ROOTFS" usermod -p '*' core
    install -d -m 0755 -o "$CORE_UID" -g "$CORE_UID" "$ROOTFS/home/core/.local" \
        "$ROOTFS/home/core/.local/share" "$ROOTFS/home/core/.local/share/containers"
    echo "$TWIN_NAME" >"$ROOTFS/etc/hostname"
    # debootstrap's root is 0700 (mktemp-like); images whose / is not 0755 break non-root users.
    chmod 0755 "$ROOTFS"
}

# The rootfs back from the image (when `stop` removed it but kept the image): podman export.
export_rootfs() {
    local ref=$1 staging=$ROOTFS.new tmp=e2e-twin-export
    log "extracting the rootfs from $ref (for the podman 5 client)"
    rm -rf "$staging"
    mkdir -p "$staging"
    hpod rm -f "$tmp" >/dev/null 2>&1 || true
    hpod create --name "$tmp" --entrypoint /bin/true "$ref" >/dev/null
    hpod export "$tmp" | tar -C "$staging" --numeric-owner -xpf - || {
        hpod rm -f "$tmp" >/dev/null 2>&1 || true
        die "podman export of $ref failed"
    }
    hpod rm -f "$tmp" >/dev/null
    chmod 0755 "$staging"
    rm -rf "$ROOTFS"
    mv "$staging" "$ROOTFS"
}

# The twin image and the rootfs it is made of, both of the current tag.
ensure_twin_image() {
    local ref=$1
    mkdir -p "$STATE_DIR"
    if hpod image exists "$ref"; then
        log "twin image $ref is built"
        if [[ ! -d $ROOTFS || $(cat "$ROOTFS_STAMP" 2>/dev/null) != "$ref" ]]; then
            export_rootfs "$ref"
            echo "$ref" >"$ROOTFS_STAMP"
        fi
        return
    fi
    # A rootfs of the same package list is reused (an edit of the twin's files re-imports it).
    local packages_tag
    packages_tag=$(echo "$SUITE $PACKAGES" | sha256sum | cut -c1-16)
    if [[ ! -d $ROOTFS || ! -f $ROOTFS/usr/bin/podman || $(cat "$ROOTFS.packages" 2>/dev/null) != "$packages_tag" ]]; then
        debootstrap_rootfs
        echo "$packages_tag" >"$ROOTFS.packages"
    fi
    configure_rootfs
    log "importing the rootfs as $ref"
    local t0
    t0=$(now)
    tar -C "$ROOTFS" --numeric-owner -cf - . |
        hpod import --quiet \
            --change 'ENTRYPOINT ["/usr/bin/catatonit", "--", "/usr/local/bin/twin-entrypoint"]' \
            --change "LABEL e2e-twin.image=$ref" - "$ref" >/dev/null ||
        die "podman import of $ROOTFS failed"
    echo "$ref" >"$ROOTFS_STAMP"
    log "imported $ref in $(since "$t0") s"
    # Older twin images are of no use any more.
    local old
    while read -r old; do
        [[ -n $old && $old != "$ref" ]] || continue
        if hpod rmi "$old" >/dev/null 2>&1; then
            log "removed the old twin image $old"
        fi
    done < <(hpod images --filter "reference=$TWIN_IMAGE_REPO" --format '{{.Repository}}:{{.Tag}}')
}

# An lxcfs of the twin's own on $LXCFS_DIR (not the rig's /var/lib/lxcfs, which the rig's
# stop ends): its /proc files are computed from the reader's cgroup, the twin's.
ensure_lxcfs() {
    lxcfs_ok && return
    command -v lxcfs >/dev/null ||
        die "lxcfs is not installed: apt-get install -y lxcfs (without it the twin's podman info reports the host's memory)"
    lxcfs_start
}

# Ends the twin's lxcfs, and only it.
stop_lxcfs() {
    lxcfs_kill "the twin's lxcfs"
    if lxcfs_mounted; then
        umount "$LXCFS_DIR" 2>/dev/null || umount -l "$LXCFS_DIR"
    fi
    rm -f "$LXCFS_PIDFILE" "$LXCFS_LOG"
}

# The twin's disk: an ext4 filesystem of its own (no reserved blocks) in a sparse file; root's
# store in its root/, core's in its core/ (owned by core's uid).
ensure_disk() {
    mount_disk "$TWIN_DISK" "the twin's"
    install -d -m 0755 "$DISK_MNT/root"
    install -d -m 0700 -o "$CORE_UID" -g "$CORE_UID" "$DISK_MNT/core"
}
release_disk() {
    remove_disk "the twin's disk $DISK_IMG (both stores: images, containers, networks)"
    if [[ -d $DISK_MNT ]]; then
        rmdir "$DISK_MNT"
    fi
}

wait_for_api() {
    local conn deadline=$((SECONDS + START_TIMEOUT))
    for conn in rootful rootless; do
        until api_ok "$conn"; do
            if ! twin_running; then
                hpod logs --tail 30 "$TWIN_NAME" >&2 || true
                die "the twin exited before its $conn connection answered (its last log lines above)"
            fi
            if ((SECONDS >= deadline)); then
                hpod logs --tail 30 "$TWIN_NAME" >&2 || true
                tpod "$conn" info >/dev/null || true
                die "the twin's $conn connection $(url_of "$conn") did not answer within ${START_TIMEOUT} s (the twin's last log lines and the client's error above)"
            fi
            sleep 0.2
        done
    done
}

# The base image, loaded into a store through its connection (`podman save | podman load`)
# when that store does not have it with the host's image ID.
ensure_base_image() {
    local conn=$1 want have t0
    want=$(hpod image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null) ||
        die "the base image $BASE_IMAGE is not in the host's podman (test/e2e/setup-podman.sh makes it; E2E_TWIN_NO_BASE=1 starts without it)"
    have=$(tpod "$conn" image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)
    if [[ $want == "$have" ]]; then
        log "the $conn store has $BASE_IMAGE"
        return
    fi
    log "loading $BASE_IMAGE into the $conn store (podman save | podman load, over ssh)"
    t0=$(now)
    hpod save "$BASE_IMAGE" | tpod "$conn" load >/dev/null || die "loading $BASE_IMAGE into the $conn store failed"
    have=$(tpod "$conn" image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)
    [[ $want == "$have" ]] || die "after loading, the $conn store's $BASE_IMAGE has ID '$have', not $want"
    log "loaded $BASE_IMAGE into the $conn store in $(since "$t0") s"
}

cmd_start() {
    require_host "the twin"
    local t0 ref keys
    t0=$(now)
    ref=$(twin_image_ref)
    if twin_running && [[ $(hpod container inspect --format '{{.ImageName}}' "$TWIN_NAME") == "$ref" ]] &&
        api_ok rootful && api_ok rootless; then
        log "the twin is already running"
    else
        if twin_exists; then
            log "removing the twin container left from before (its disk is kept)"
            hpod rm -f -t 0 "$TWIN_NAME" >/dev/null
        fi
        port_free "$PORT" || die "127.0.0.1:$PORT is in use: E2E_TWIN_PORT=<another port> picks another"
        ensure_twin_image "$ref"
        ensure_client
        ensure_key
        ensure_lxcfs
        local proc_mounts=() f
        for f in "${LXCFS_PROC_FILES[@]}"; do
            proc_mounts+=(-v "$LXCFS_DIR/proc/$f:/proc/$f:rw")
        done
        ensure_disk
        log "starting the twin container $TWIN_NAME (--memory $TWIN_MEMORY --memory-swap $TWIN_MEMORY, ssh on 127.0.0.1:$PORT)"
        # --privileged: the engines inside make mounts, cgroups, namespaces and firewall rules
        # of their own. --pids-limit 0: no limit of the host's engine on the twin's processes.
        hpod run -d --name "$TWIN_NAME" --hostname "$TWIN_NAME" --label e2e-twin=1 \
            --privileged --memory "$TWIN_MEMORY" --memory-swap "$TWIN_MEMORY" --pids-limit 0 \
            "${proc_mounts[@]}" \
            -p "127.0.0.1:$PORT:22" \
            -v "$DISK_MNT/root:/var/lib/containers" \
            -v "$DISK_MNT/core:/home/core/.local/share/containers" \
            -v "$KEY.pub:/etc/ssh/e2e-twin-authorized_keys:ro" \
            "$ref" >/dev/null
        keys=$(hpod exec "$TWIN_NAME" sh -c 'cat /etc/ssh/ssh_host_*_key.pub') ||
            die "reading the twin's host keys failed"
        write_host_keys "$PORT" "$keys"
        wait_for_api
        log "both connections answer ($(since "$t0") s after start)"
    fi
    local conn
    for conn in rootless rootful; do
        if [[ ${E2E_TWIN_NO_BASE:-} == 1 ]]; then
            log "E2E_TWIN_NO_BASE=1: the base image is not loaded into the $conn store"
        else
            ensure_base_image "$conn"
        fi
        log "$conn: $(tpod "$conn" info --format 'podman {{.Version.Version}}, memTotal {{.Host.MemTotal}}, {{.Host.CPUs}} CPUs, storage {{.Store.GraphDriverName}}, rootless {{.Host.Security.Rootless}}')"
    done
    log "ready in $(since "$t0") s; point podman (and cargo xtask) at it with:"
    log "  eval \"\$($HERE/twin.sh env rootless)\"   # or: env rootful"
}

cmd_env() {
    local conn=${1:-rootless}
    url_of "$conn" >/dev/null
    if ! twin_running; then
        log "warning: the twin is not running (test/rig/twin.sh start)"
    fi
    print_env "$conn"
}

cmd_stop() {
    require_host "the twin"
    local port
    port=$(engine_port)
    if twin_exists; then
        log "removing the twin container $TWIN_NAME (and everything running in it)"
        hpod rm -f -t 0 "$TWIN_NAME" >/dev/null
    fi
    hpod rm -f e2e-twin-export >/dev/null 2>&1 || true
    release_disk
    forget_host_keys "$port"
    if [[ $port != "$PORT" ]]; then
        forget_host_keys "$PORT"
    fi
    stop_lxcfs
    rm -rf "$RUN_DIR" "$ROOTFS" "$ROOTFS.new" "$ROOTFS_STAMP" "$ROOTFS.packages" \
        "$CLIENT_DIR" "$(dirname "$KEY")" "$STATE_DIR/debootstrap.log"
    if [[ -d $STATE_DIR ]]; then
        rmdir "$STATE_DIR"
    fi
    log "stopped; nothing of the twin is left but its image ($TWIN_IMAGE_REPO, removed by purge)"
}

cmd_purge() {
    cmd_stop
    remove_images "$TWIN_IMAGE_REPO" "the twin image"
}

cmd_status() {
    require_host "the twin"
    local state
    state=$(hpod container inspect --format '{{.State.Status}} (image {{.ImageName}}, started {{.State.StartedAt}})' "$TWIN_NAME" 2>/dev/null || echo absent)
    echo "container: $TWIN_NAME $state"
    echo "client:    $CLIENT_DIR/podman"
    if lxcfs_ok; then
        echo "lxcfs:     serving $LXCFS_DIR (pid $(cat "$LXCFS_PIDFILE" 2>/dev/null || echo '?'))"
    else
        echo "lxcfs:     not running"
    fi
    status_connections 0
}

main() {
    case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    purge) cmd_purge ;;
    status) cmd_status ;;
    env) cmd_env "${2:-rootless}" ;;
    client) echo "$CLIENT_DIR" ;;
    -h | --help | help)
        usage
        ;;
    *)
        usage
        exit 2
        ;;
    esac
}

main "$@"
