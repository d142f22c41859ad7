#!/usr/bin/env bash
# A stand-in for "podman machine" on a Linux host: a podman engine with its own memory
# (2 GiB), its own filesystem and its own ports, reached only through its remote API.
#
# It is podman's API service (`podman system service`) in a privileged container, `e2e-rig`,
# started with --memory 2g --memory-swap 2g, storing its images and containers on a disk of
# its own (an 8 GiB ext4 filesystem in a sparse file, /var/lib/e2e-rig/store.ext4, loop-mounted
# at /var/lib/e2e-rig/store: its free space is the rig's, not this machine's), serving its API
# on a unix socket in /run/e2e-rig (a directory bind-mounted from the host). lxcfs's /proc files make /proc/meminfo in the rig, and so
# `podman info`, report the 2 GiB limit. See test/rig/README.md.
#
#   test/rig/remote-engine.sh start    build the rig image if needed, start the rig, wait for
#                                      its API, load the base image into it, print
#                                      `export CONTAINER_HOST=unix:///run/e2e-rig/podman.sock`
#   test/rig/remote-engine.sh url      print the URL (unix:///run/e2e-rig/podman.sock)
#   test/rig/remote-engine.sh status   the rig's state and what its engine reports; exit 0 when
#                                      it answers
#   test/rig/remote-engine.sh stop     remove the rig container, its disk, its socket directory
#                                      and the lxcfs this script started (idempotent)
#   test/rig/remote-engine.sh purge    stop, and remove the rig images too
#
# Environment: E2E_RIG_MEMORY (default 2g), E2E_RIG_DISK (the disk's size, default 8g),
# E2E_RIG_NO_BASE=1 (start without loading the base image: the rig then has none), E2E_BASE_IMAGE (default
# localhost/e2e-base:bookworm), E2E_RIG_TIMEOUT (seconds to wait for the API, default 60),
# E2E_RIG_NO_LXCFS=1 (start without lxcfs: `podman info` then reports the host's memory).
# Run as root. Progress goes to stderr; `start` prints only the export line on stdout, so
# `eval "$(test/rig/remote-engine.sh start)"` works.
set -euo pipefail

readonly RIG_NAME=e2e-rig
readonly RIG_VOLUME=e2e-rig-storage
readonly RIG_IMAGE_REPO=localhost/e2e-rig
readonly SOCK_DIR=/run/e2e-rig
readonly SOCK=$SOCK_DIR/podman.sock
readonly URL=unix://$SOCK
readonly DISK_DIR=/var/lib/e2e-rig
readonly DISK_IMG=$DISK_DIR/store.ext4
readonly DISK_MNT=$DISK_DIR/store
readonly LXCFS_DIR=/var/lib/lxcfs
readonly LXCFS_PIDFILE=/run/e2e-rig-lxcfs.pid
readonly LXCFS_LOG=/run/e2e-rig-lxcfs.log
# Everything the rig image is made from: their content names the image's tag.
readonly RIG_FILES=(Containerfile containers.conf storage.conf rig-entrypoint.sh)

RIG_MEMORY=${E2E_RIG_MEMORY:-2g}
RIG_DISK=${E2E_RIG_DISK:-8g}
BASE_IMAGE=${E2E_BASE_IMAGE:-localhost/e2e-base:bookworm}
START_TIMEOUT=${E2E_RIG_TIMEOUT:-60}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# hpod, now, since, require_host, mounted, mount_disk, remove_disk, remove_images, lxcfs_*
# shellcheck source=test/rig/host.sh
source "$HERE/host.sh"
readonly RIG_MEMORY RIG_DISK BASE_IMAGE START_TIMEOUT HERE

log() { printf '[e2e-rig %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# The rig's podman, through its API only.
rpod() { env -u CONTAINER_HOST -u CONTAINER_CONNECTION podman --url "$URL" "$@"; }



rig_exists() { hpod container exists "$RIG_NAME"; }
rig_running() { [[ $(hpod container inspect --format '{{.State.Running}}' "$RIG_NAME" 2>/dev/null) == true ]]; }
api_ok() { rpod info --format '{{.Host.ServiceIsRemote}}' >/dev/null 2>&1; }

# localhost/e2e-rig:<16 hex digits of the SHA-256 of the rig's files and the base image's ID>.
rig_image_ref() {
    local base_id
    base_id=$(hpod image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null) ||
        die "the base image $BASE_IMAGE is not in the host's podman (test/e2e/setup-podman.sh makes it)"
    local fp
    fp=$({ (cd "$HERE" && sha256sum "${RIG_FILES[@]}"); echo "$BASE_IMAGE $base_id"; } | sha256sum | cut -c1-16)
    echo "$RIG_IMAGE_REPO:$fp"
}

ensure_rig_image() {
    local ref=$1
    if hpod image exists "$ref"; then
        log "rig image $ref is built"
        return
    fi
    log "building the rig image $ref (FROM $BASE_IMAGE, apt-get install podman ...)"
    local t0
    t0=$(now)
    hpod build --pull=never --build-arg "BASE_IMAGE=$BASE_IMAGE" --label "e2e-rig.image=$ref" \
        -t "$ref" -f "$HERE/Containerfile" "$HERE" >&2 || die "building the rig image failed (output above)"
    log "built $ref in $(since "$t0") s"
    # Older rig images are of no use any more.
    local old
    while read -r old; do
        [[ -n $old && $old != "$ref" ]] || continue
        if hpod rmi "$old" >/dev/null 2>&1; then
            log "removed the old rig image $old"
        fi
    done < <(hpod images --filter "reference=$RIG_IMAGE_REPO" --format '{{.Repository}}:{{.Tag}}')
}

# Makes sure lxcfs serves /var/lib/lxcfs: uses a running one, or starts one (recorded in
# LXCFS_PIDFILE, so that `stop` ends it and only it). Returns 1 when the rig goes without.
ensure_lxcfs() {
    if lxcfs_ok; then
        return 0
    fi
    if [[ ${E2E_RIG_NO_LXCFS:-} == 1 ]]; then
        log "warning: E2E_RIG_NO_LXCFS=1: the rig's podman info will report the host's memory, not $RIG_MEMORY"
        return 1
    fi
    command -v lxcfs >/dev/null ||
        die "lxcfs is not installed: apt-get install -y lxcfs (without it the rig's podman info reports the host's memory; E2E_RIG_NO_LXCFS=1 starts it anyway)"
    lxcfs_start
}

# Ends the lxcfs this script started, and only it.
stop_lxcfs() {
    [[ -f $LXCFS_PIDFILE ]] || return 0
    lxcfs_kill "the lxcfs this script started"
    if lxcfs_mounted && ! lxcfs_ok; then
        umount -l "$LXCFS_DIR"
    fi
    rm -f "$LXCFS_PIDFILE" "$LXCFS_LOG"
}

wait_for_api() {
    local deadline=$((SECONDS + START_TIMEOUT))
    until api_ok; do
        if ! rig_running; then
            hpod logs --tail 30 "$RIG_NAME" >&2 || true
            die "the rig container exited before its API answered (its last log lines above)"
        fi
        if ((SECONDS >= deadline)); then
            hpod logs --tail 30 "$RIG_NAME" >&2 || true
            die "the rig's API did not answer on $URL within ${START_TIMEOUT} s (its last log lines above)"
        fi
        sleep 0.1
    done
}

# The rig's disk: an ext4 filesystem of its own (no reserved blocks, so its free space is what
# df and podman info say), in a sparse file that takes only what is written.
ensure_disk() { mount_disk "$RIG_DISK" "the rig's"; }
release_disk() {
    remove_disk "the rig's disk $DISK_IMG (its images, containers, networks)"
    rmdir "$DISK_MNT" "$DISK_DIR" 2>/dev/null || true
}

# The base image, loaded through the API (`podman save | podman --remote load`) when the rig
# does not have it with the host's ID.
ensure_base_image() {
    local want have
    want=$(hpod image inspect --format '{{.Id}}' "$BASE_IMAGE")
    have=$(rpod image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)
    if [[ $want == "$have" ]]; then
        log "the rig has $BASE_IMAGE"
        return
    fi
    log "loading $BASE_IMAGE into the rig (podman save | podman --remote load)"
    local t0
    t0=$(now)
    hpod save "$BASE_IMAGE" | rpod load >&2 || die "loading $BASE_IMAGE into the rig failed"
    have=$(rpod image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)
    [[ $want == "$have" ]] || die "after loading, the rig's $BASE_IMAGE has ID '$have', not $want"
    log "loaded $BASE_IMAGE in $(since "$t0") s"
}

cmd_start() {
    require_host "the rig"
    local t0
    t0=$(now)
    local ref
    ref=$(rig_image_ref)
    if rig_running && [[ $(hpod container inspect --format '{{.ImageName}}' "$RIG_NAME") == "$ref" ]] && api_ok; then
        log "the rig is already running"
    else
        if rig_exists; then
            log "removing the rig container left from before (the rig's disk is kept)"
            hpod rm -f -t 0 "$RIG_NAME" >/dev/null
        fi
        ensure_rig_image "$ref"
        local proc_mounts=()
        if ensure_lxcfs; then
            local f
            for f in "${LXCFS_PROC_FILES[@]}"; do
                proc_mounts+=(-v "$LXCFS_DIR/proc/$f:/proc/$f:rw")
            done
        fi
        mkdir -p "$SOCK_DIR"
        rm -f "$SOCK"
        ensure_disk
        log "starting the rig container $RIG_NAME (--memory $RIG_MEMORY --memory-swap $RIG_MEMORY)"
        # --privileged: the engine inside makes mounts, cgroups, network namespaces and
        # iptables rules of its own. --pids-limit 0: no limit of the host's engine on the
        # processes of the rig's containers (podman's default is 2048).
        hpod run -d --name "$RIG_NAME" --hostname "$RIG_NAME" --label e2e-rig=1 \
            --privileged --memory "$RIG_MEMORY" --memory-swap "$RIG_MEMORY" --pids-limit 0 \
            "${proc_mounts[@]}" \
            -v "$SOCK_DIR:$SOCK_DIR" \
            -v "$DISK_MNT:/var/lib/containers" \
            "$ref" >/dev/null
        wait_for_api
        log "the rig's API answers on $URL ($(since "$t0") s after start)"
    fi
    if [[ ${E2E_RIG_NO_BASE:-} == 1 ]]; then
        log "E2E_RIG_NO_BASE=1: the base image is not loaded into the rig"
    else
        ensure_base_image
    fi
    local facts
    facts=$(rpod info --format 'memTotal={{.Host.MemTotal}} memFree={{.Host.MemFree}} cpus={{.Host.CPUs}} {{.Host.OS}}/{{.Host.Arch}} serviceIsRemote={{.Host.ServiceIsRemote}}')
    log "the rig's engine reports: $facts"
    log "ready in $(since "$t0") s; point podman (and cargo xtask) at it with:"
    echo "export CONTAINER_HOST=$URL"
}

cmd_stop() {
    require_host "the rig"
    if rig_exists; then
        log "removing the rig container $RIG_NAME (and everything running in it)"
        hpod rm -f -t 0 "$RIG_NAME" >/dev/null
    fi
    release_disk
    # The rig's disk was a named volume before it was a filesystem of its own.
    if hpod volume exists "$RIG_VOLUME"; then
        hpod volume rm -f "$RIG_VOLUME" >/dev/null
    fi
    rm -rf "$SOCK_DIR"
    stop_lxcfs
    log "stopped; nothing of the rig is left but its image ($RIG_IMAGE_REPO, removed by purge)"
}

cmd_purge() {
    cmd_stop
    remove_images "$RIG_IMAGE_REPO" "the rig image"
}

cmd_status() {
    require_host "the rig"
    local state
    state=$(hpod container inspect --format '{{.State.Status}} (image {{.ImageName}}, started {{.State.StartedAt}})' "$RIG_NAME" 2>/dev/null || echo absent)
    echo "container: $RIG_NAME $state"
    echo "url:       $URL"
    if lxcfs_ok; then
        if [[ -f $LXCFS_PIDFILE ]]; then
            echo "lxcfs:     serving $LXCFS_DIR (started by this script, pid $(cat "$LXCFS_PIDFILE"))"
        else
            echo "lxcfs:     serving $LXCFS_DIR (started elsewhere)"
        fi
    else
        echo "lxcfs:     not running"
    fi
    if api_ok; then
        rpod info --format 'engine:    podman {{.Version.Version}} on {{.Host.Hostname}}, {{.Host.OS}}/{{.Host.Arch}}, {{.Host.CPUs}} CPUs, memTotal {{.Host.MemTotal}} memFree {{.Host.MemFree}}, serviceIsRemote {{.Host.ServiceIsRemote}}'
        rpod info --format 'storage:   {{.Store.GraphDriverName}} on {{.Store.GraphRoot}}: {{.Store.ImageStore.Number}} images, {{.Store.ContainerStore.Number}} containers ({{.Store.ContainerStore.Running}} running); {{.Store.GraphRootUsed}} of {{.Store.GraphRootAllocated}} bytes used'
        echo "use:       export CONTAINER_HOST=$URL"
    else
        echo "engine:    not answering"
        return 1
    fi
}

main() {
    case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    purge) cmd_purge ;;
    status) cmd_status ;;
    url) echo "$URL" ;;
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
