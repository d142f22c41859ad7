#!/usr/bin/env bash
# A VM built like podman machine's, on this Linux host: Debian trixie with its own kernel,
# systemd and cgroup v2, podman 5 (trixie's 5.4.2) with crun, netavark and pasta, 2 GiB and
# 2 vCPUs, reached as podman machine's engine is, over ssh with an identity file, on two
# connections: the rootless user core's (uid 1000, podman machine's default) and root's.
#
# qemu (bookworm's packages, unpacked here with `apt-get download` and `dpkg -x`, not
# installed) boots the kernel and initrd of a trixie rootfs made with debootstrap; the VM's
# disk is an ext4 filesystem made from that rootfs (`mkfs.ext4 -d`: no loop device). In the
# VM: systemd, systemd-networkd (DHCP on qemu's user network), sshd (port 22, forwarded to
# 127.0.0.1:$E2E_VM_PORT of the host), root's podman.socket, and core lingering (its systemd
# starts at boot) with podman.socket as a user unit and `cpu memory pids` delegated to it
# (systemd's default, as on Fedora CoreOS). No containers.conf: podman's defaults. This host's
# /dev/kvm cannot boot a stock kernel, so qemu emulates the CPU (TCG): 5-20 times slower than
# native, a boot of about 100 s. A by-hand tool, not a CI step. See test/rig/README.md.
#
#   test/rig/vm.sh start       make what is missing (qemu, rootfs, key pair, disk, client), boot
#                              the VM, wait for both connections, load the base image into
#                              both stores, write the VM's host keys into root's known_hosts
#   test/rig/vm.sh env [rootless|rootful]
#                              print the export lines (PATH, CONTAINER_HOST, CONTAINER_SSHKEY)
#                              for one connection (default rootless, as podman machine):
#                              eval "$(test/rig/vm.sh env rootless)"
#   test/rig/vm.sh client      print the directory of the podman 5 client (first on PATH)
#   test/rig/vm.sh ssh [root|core] [COMMAND...]
#                              a shell (or a command) in the VM, as root by default
#   test/rig/vm.sh status      the VM's state and what each connection reports; exit 0 when
#                              both answer podman info
#   test/rig/vm.sh stop        power the VM off (its disk, and so both stores, are kept, as
#                              with podman machine stop) and forget its host keys (idempotent)
#   test/rig/vm.sh purge       stop, and remove everything the VM is made of ($STATE_DIR)
#
# Environment: E2E_VM_PORT (the host's port for the VM's ssh, default 2224), E2E_VM_MEMORY
# (MiB, default 2048), E2E_VM_CPUS (default 2), E2E_VM_DISK (the disk's size, default 16G),
# E2E_VM_NO_BASE=1 (start without loading the base image), E2E_BASE_IMAGE (default
# localhost/e2e-base:bookworm), E2E_VM_TIMEOUT (seconds to wait for the boot and the
# connections, default 600), E2E_VM_MIRROR (the Debian mirror for debootstrap; default the
# URIs line of /etc/apt/sources.list.d/debian.sources, else http://deb.debian.org/debian).
# Run as root. Progress goes to stderr; stdout carries only what env, client and ssh print.
set -euo pipefail

readonly STATE_DIR=/var/lib/e2e-vm
readonly ROOTFS=$STATE_DIR/rootfs
readonly DISK=$STATE_DIR/disk.raw
readonly KEY=$STATE_DIR/ssh/id_ed25519
readonly CLIENT_DIR=$STATE_DIR/bin
readonly QEMU_DIR=$STATE_DIR/qemu
readonly QEMU_ROOT=$QEMU_DIR/root
readonly QEMU_BIN=$QEMU_ROOT/usr/bin/qemu-system-x86_64
readonly RUN_DIR=$STATE_DIR/run
readonly PIDFILE=$RUN_DIR/qemu.pid
readonly PORTFILE=$RUN_DIR/port
readonly CONSOLE_LOG=$RUN_DIR/console.log
readonly QEMU_LOG=$RUN_DIR/qemu.log
readonly SUITE=trixie
readonly VM_NAME=e2e-vm
# What podman machine's image has that matters here: its own kernel, systemd (logind for
# lingering, user units), sshd, podman with crun, netavark (nftables) and pasta.
readonly PACKAGES=linux-image-amd64,systemd-sysv,udev,dbus,dbus-user-session,libpam-systemd,systemd-container,openssh-server,podman,conmon,crun,catatonit,netavark,aardvark-dns,nftables,iptables,uidmap,passt,fuse-overlayfs,ca-certificates,iproute2,procps
# qemu and what it needs beyond this host's libraries (`apt-get install qemu-system-x86`
# conflicts with the backported qemu-utils here, so they are unpacked, not installed).
readonly QEMU_PACKAGES=(qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu
    libbrlapi0.8 libcacard0 libcapstone4 libdaxctl1 libepoxy0 libexecs0 libfdt1 liborc-0.4-0
    libgstreamer-plugins-base1.0-0 libnl-route-3-200 libibverbs1 libndctl6 libopus0 libpmem1
    librdmacm1 libsndio7.0 libspice-server1 libusb-1.0-0 libusbredirparser1 libvdeplug2)
readonly CORE_UID=1000
readonly ROOTLESS_SOCK=/run/user/$CORE_UID/podman/podman.sock
readonly ROOTFUL_SOCK=/run/podman/podman.sock

PORT=${E2E_VM_PORT:-2224}
VM_MEMORY=${E2E_VM_MEMORY:-2048}
VM_CPUS=${E2E_VM_CPUS:-2}
DISK_SIZE=${E2E_VM_DISK:-16G}
BASE_IMAGE=${E2E_BASE_IMAGE:-localhost/e2e-base:bookworm}
START_TIMEOUT=${E2E_VM_TIMEOUT:-600}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# hpod, now, since, usage (the rest of host.sh is for the container engines)
# shellcheck source=test/rig/host.sh disable=SC1091
source "$HERE/host.sh"
KNOWN_HOSTS=$(getent passwd root | cut -d: -f6)/.ssh/known_hosts
readonly PORT VM_MEMORY VM_CPUS DISK_SIZE BASE_IMAGE START_TIMEOUT HERE KNOWN_HOSTS
readonly MIRROR=${E2E_VM_MIRROR:-} ENGINE="the VM" SCRIPT=vm.sh
# url_of, tpod, mirror, ensure_client, ensure_key, forget_host_keys, write_host_keys,
# port_free, print_env, status_connections
# shellcheck source=test/rig/ssh-engine.sh
source "$HERE/ssh-engine.sh"

log() { printf '[e2e-vm %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

require_root() {
    [[ $EUID -eq 0 ]] || die "run as root: the VM's files are under $STATE_DIR and its host keys go into root's known_hosts"
}

# The pid of the running VM's qemu, else nothing (and status 1).
vm_pid() {
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == qemu-system-x86* ]] || return 1
    echo "$pid"
}
vm_running() { vm_pid >/dev/null; }

# The port the running VM's ssh is forwarded from, else the configured one.
engine_port() {
    if vm_running && [[ -f $PORTFILE ]]; then
        cat "$PORTFILE"
    else
        echo "$PORT"
    fi
}

api_ok() {
    [[ -x $CLIENT_DIR/podman && -f $KEY ]] &&
        timeout 120 env -u CONTAINER_CONNECTION CONTAINER_HOST="$(url_of "$1")" CONTAINER_SSHKEY="$KEY" \
            "$CLIENT_DIR/podman" info --format '{{.Host.ServiceIsRemote}}' >/dev/null 2>&1
}

# ssh into the VM as a user (root or core), checking its host key against root's known_hosts.
vm_ssh() {
    local user=$1
    shift
    ssh -i "$KEY" -p "$(engine_port)" -o BatchMode=yes -o StrictHostKeyChecking=yes \
        -o UserKnownHostsFile="$KNOWN_HOSTS" -o ConnectTimeout=5 -o LogLevel=ERROR \
        "$user@127.0.0.1" "$@"
}

# qemu with its own libraries and firmware.
qemu_run() {
    LD_LIBRARY_PATH=$QEMU_ROOT/usr/lib/x86_64-linux-gnu:$QEMU_ROOT/lib/x86_64-linux-gnu "$QEMU_BIN" "$@"
}

# qemu-system-x86_64 from this host's Debian packages, unpacked into $QEMU_DIR (not installed).
ensure_qemu() {
    if [[ -x $QEMU_BIN ]] && qemu_run --version >/dev/null 2>&1; then
        return
    fi
    local t0 deb missing
    t0=$(now)
    log "downloading and unpacking qemu (${#QEMU_PACKAGES[@]} packages) into $QEMU_DIR"
    rm -rf "$QEMU_DIR"
    mkdir -p "$QEMU_DIR/debs" "$QEMU_ROOT"
    # apt-get download runs as _apt, which must be able to write there.
    chown _apt "$QEMU_DIR/debs" 2>/dev/null || true
    (cd "$QEMU_DIR/debs" && apt-get download "${QEMU_PACKAGES[@]}") >"$QEMU_DIR/download.log" 2>&1 || {
        tail -n 10 "$QEMU_DIR/download.log" >&2
        die "apt-get download of qemu's packages failed (the end of its log above; apt-get update may help)"
    }
    for deb in "$QEMU_DIR"/debs/*.deb; do
        dpkg -x "$deb" "$QEMU_ROOT"
    done
    rm -rf "$QEMU_DIR/debs"
    missing=$(LD_LIBRARY_PATH=$QEMU_ROOT/usr/lib/x86_64-linux-gnu:$QEMU_ROOT/lib/x86_64-linux-gnu ldd "$QEMU_BIN" | awk '/not found/ { print $1 }' | tr '\n' ' ')
    [[ -z $missing ]] || die "qemu lacks these libraries: $missing(add their packages to QEMU_PACKAGES)"
    qemu_run --version >/dev/null || die "$QEMU_BIN does not run"
    log "qemu $(qemu_run --version | awk 'NR == 1 { print $4 }') ready in $(since "$t0") s"
}

# The VM's rootfs, debootstrapped (about 4 min) into a staging directory, then moved. A new
# rootfs means a new disk.
ensure_rootfs() {
    [[ -f $ROOTFS/usr/bin/podman && -f $ROOTFS/.e2e-vm-packages && $(cat "$ROOTFS/.e2e-vm-packages") == "$SUITE $PACKAGES" ]] && return
    command -v debootstrap >/dev/null || die "debootstrap is not installed: apt-get install -y debootstrap debian-archive-keyring"
    local staging=$ROOTFS.new m t0
    m=$(mirror)
    mkdir -p "$STATE_DIR"
    rm -rf "$staging"
    log "debootstrap --variant=minbase $SUITE from $m (about 4 min; log in $STATE_DIR/debootstrap.log)"
    t0=$(now)
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$staging" "$m" >"$STATE_DIR/debootstrap.log" 2>&1 || {
        tail -n 15 "$STATE_DIR/debootstrap.log" >&2
        die "debootstrap failed (the end of its log above)"
    }
    echo "$SUITE $PACKAGES" >"$staging/.e2e-vm-packages"
    rm -rf "$ROOTFS" "$DISK"
    mv "$staging" "$ROOTFS"
    rm -f "$STATE_DIR/debootstrap.log"
    log "debootstrapped $SUITE in $(since "$t0") s"
}

# What podman machine's first boot (its Ignition config) sets up, in the rootfs: the host
# name, the network, sshd with the key, root's podman.socket, the user core (uid 1000,
# subordinate IDs) lingering with podman.socket as a user unit. Idempotent.
configure_rootfs() {
    local r=$ROOTFS
    chmod 0755 "$r"
    echo "$VM_NAME" >"$r/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$VM_NAME" >"$r/etc/hosts"
    echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' >"$r/etc/fstab"
    # qemu's user network: DHCP, and its DNS forwarder at 10.0.2.3.
    mkdir -p "$r/etc/systemd/network"
    printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n' >"$r/etc/systemd/network/20-e2e-vm.network"
    rm -f "$r/etc/resolv.conf"
    echo 'nameserver 10.0.2.3' >"$r/etc/resolv.conf"
    # (systemctl warns that /proc is not mounted in the chroot; enabling needs no /proc)
    local out
    out=$(chroot "$r" systemctl enable --quiet systemd-networkd.service ssh.service podman.socket 2>&1) || {
        echo "$out" >&2
        die "systemctl enable in the rootfs failed (above)"
    }
    printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n' \
        >"$r/etc/ssh/sshd_config.d/e2e-vm.conf"
    install -d -m 0700 "$r/root/.ssh"
    install -m 0600 "$KEY.pub" "$r/root/.ssh/authorized_keys"
    if ! grep -q '^core:' "$r/etc/passwd"; then
        chroot "$r" useradd -m -u "$CORE_UID" -s /bin/bash core
    fi
    chroot "$r" usermod -p '*' core
    if ! grep -q '^core:' "$r/etc/subuid"; then
        echo 'core:100000:65536' >>"$r/etc/subuid"
    fi
    if ! grep -q '^core:' "$r/etc/subgid"; then
        echo 'core:100000:65536' >>"$r/etc/subgid"
    fi
    local home=$r/home/core
    install -d -m 0700 -o "$CORE_UID" -g "$CORE_UID" "$home/.ssh"
    install -m 0600 -o "$CORE_UID" -g "$CORE_UID" "$KEY.pub" "$home/.ssh/authorized_keys"
    install -d -o "$CORE_UID" -g "$CORE_UID" "$home/.config" "$home/.config/systemd" \
        "$home/.config/systemd/user" "$home/.config/systemd/user/sockets.target.wants"
    ln -sfn /usr/lib/systemd/user/podman.socket "$home/.config/systemd/user/sockets.target.wants/podman.socket"
    chown -h "$CORE_UID:$CORE_UID" "$home/.config/systemd/user/sockets.target.wants/podman.socket"
    mkdir -p "$r/var/lib/systemd/linger"
    touch "$r/var/lib/systemd/linger/core"
}

# The VM's disk: an ext4 filesystem made from the rootfs (`mkfs.ext4 -d`, sparse), made when
# missing; it then lives on (root's and core's stores are on it) until purge.
ensure_disk() {
    [[ -f $DISK ]] && return
    command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 is not installed: apt-get install e2fsprogs"
    configure_rootfs
    local t0
    t0=$(now)
    log "making the VM's disk $DISK: a sparse $DISK_SIZE ext4 filesystem of the rootfs"
    rm -f "$DISK.new"
    mkfs.ext4 -F -q -m 0 -L "$VM_NAME" -d "$ROOTFS" "$DISK.new" "$DISK_SIZE" || die "mkfs.ext4 -d $ROOTFS failed"
    mv "$DISK.new" "$DISK"
    log "made the disk in $(since "$t0") s"
}

# Boots the VM in the background (qemu daemonizes; its pid in $PIDFILE, the serial console
# in $CONSOLE_LOG).
boot() {
    local kernel initrd
    kernel=$(find "$ROOTFS/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n 1)
    [[ -n $kernel ]] || die "the rootfs has no kernel in $ROOTFS/boot"
    initrd=$ROOTFS/boot/initrd.img-${kernel##*/vmlinuz-}
    [[ -f $initrd ]] || die "the rootfs has no $initrd"
    mkdir -p "$RUN_DIR"
    rm -f "$PIDFILE" "$CONSOLE_LOG"
    echo "$PORT" >"$PORTFILE"
    log "booting the VM (qemu TCG, ${VM_MEMORY} MiB, $VM_CPUS vCPUs, kernel ${kernel##*/}, ssh on 127.0.0.1:$PORT; console in $CONSOLE_LOG)"
    # -accel tcg: this host's /dev/kvm (kvm_pvm) does not boot a stock kernel.
    qemu_run -name "$VM_NAME" \
        -accel tcg,thread=multi,tb-size=512 -m "$VM_MEMORY" -smp "$VM_CPUS" \
        -kernel "$kernel" -initrd "$initrd" -append 'root=/dev/vda rw console=ttyS0' \
        -drive "file=$DISK,format=raw,if=virtio,discard=unmap" \
        -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$PORT-:22" -device virtio-net-pci,netdev=net0 \
        -device virtio-rng-pci \
        -display none -monitor none -serial "file:$CONSOLE_LOG" \
        -L "$QEMU_ROOT/usr/share/qemu" -L "$QEMU_ROOT/usr/share/seabios" -L "$QEMU_ROOT/usr/lib/ipxe/qemu" \
        -daemonize -pidfile "$PIDFILE" 2>"$QEMU_LOG" || {
        cat "$QEMU_LOG" >&2
        die "qemu did not start (its messages above)"
    }
}

# Waits for the VM's sshd, then for its systemd to finish booting (t0: when qemu started).
wait_for_boot() {
    local t0=$1 deadline=$((SECONDS + START_TIMEOUT)) state
    until vm_ssh root true 2>/dev/null; do
        if ! vm_running; then
            tail -n 30 "$CONSOLE_LOG" >&2 || true
            cat "$QEMU_LOG" >&2 || true
            die "the VM's qemu exited before its ssh answered (its console's last lines above)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 30 "$CONSOLE_LOG" >&2 || true
            die "the VM's ssh did not answer within $START_TIMEOUT s (its console's last lines above)"
        fi
        sleep 2
    done
    log "ssh answers ($(since "$t0") s after boot)"
    state=$(vm_ssh root systemctl is-system-running --wait 2>/dev/null || true)
    log "systemd: $state ($(since "$t0") s after boot)"
    if [[ $state != running ]]; then
        vm_ssh root systemctl --failed --no-legend >&2 || true
    fi
}

wait_for_api() {
    local conn deadline=$((SECONDS + START_TIMEOUT))
    for conn in rootful rootless; do
        until api_ok "$conn"; do
            if ((SECONDS >= deadline)); then
                tpod "$conn" info >/dev/null || true
                die "the VM's $conn connection $(url_of "$conn") did not answer within $START_TIMEOUT s (the client's error above)"
            fi
            sleep 2
        done
    done
}

# The base image, loaded into both stores at once through their connections (`podman save`
# on the host, `podman load` through the API) where a store lacks it with the host's image ID.
ensure_base_images() {
    local want have conn conns=() pids=() t0 tar=$STATE_DIR/base.tar i failed=0
    want=$(hpod image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null) ||
        die "the base image $BASE_IMAGE is not in the host's podman (test/e2e/setup-podman.sh makes it; E2E_VM_NO_BASE=1 starts without it)"
    for conn in rootless rootful; do
        have=$(tpod "$conn" image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)
        if [[ $want == "$have" ]]; then
            log "the $conn store has $BASE_IMAGE"
        else
            conns+=("$conn")
        fi
    done
    ((${#conns[@]} > 0)) || return 0
    t0=$(now)
    rm -f "$tar"
    hpod save -q -o "$tar" "$BASE_IMAGE" || die "podman save $BASE_IMAGE failed"
    log "loading $BASE_IMAGE ($(du -m "$tar" | cut -f1) MB) into the ${conns[*]} store(s) (podman load over ssh; slow under emulation)"
    for conn in "${conns[@]}"; do
        tpod "$conn" load -i "$tar" >"$RUN_DIR/load-$conn.log" 2>&1 &
        pids+=($!)
    done
    for i in "${!conns[@]}"; do
        conn=${conns[$i]}
        if ! wait "${pids[$i]}"; then
            cat "$RUN_DIR/load-$conn.log" >&2
            log "loading $BASE_IMAGE into the $conn store failed (above)"
            failed=1
            continue
        fi
        have=$(tpod "$conn" image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)
        if [[ $want != "$have" ]]; then
            log "after loading, the $conn store's $BASE_IMAGE has ID '$have', not $want"
            failed=1
        fi
        rm -f "$RUN_DIR/load-$conn.log"
    done
    rm -f "$tar"
    ((failed == 0)) || die "the base image did not get into every store"
    log "loaded $BASE_IMAGE in $(since "$t0") s"
}

cmd_start() {
    require_root
    local t0 keys
    t0=$(now)
    if vm_running && api_ok rootful && api_ok rootless; then
        log "the VM is already running (qemu pid $(vm_pid))"
    else
        if vm_running; then
            log "the VM is running (qemu pid $(vm_pid)); waiting for it"
        else
            port_free "$PORT" || die "127.0.0.1:$PORT is in use: E2E_VM_PORT=<another port> picks another"
            ensure_qemu
            ensure_rootfs
            # A new key means a new disk (the old one authorizes the old key).
            [[ -f $KEY && -f $KEY.pub ]] || rm -f "$DISK"
            ensure_key
            ensure_client
            ensure_disk
            # The disk is made from the rootfs, so its host keys are the rootfs's.
            keys=$(cat "$ROOTFS"/etc/ssh/ssh_host_*_key.pub) || die "the rootfs has no ssh host keys"
            write_host_keys "$PORT" "$keys"
            boot
        fi
        wait_for_boot "$(now)"
        wait_for_api
        log "both connections answer ($(since "$t0") s after start)"
    fi
    local conn
    if [[ ${E2E_VM_NO_BASE:-} == 1 ]]; then
        log "E2E_VM_NO_BASE=1: the base image is not loaded"
    else
        ensure_base_images
    fi
    for conn in rootless rootful; do
        log "$conn: $(tpod "$conn" info --format 'podman {{.Version.Version}}, kernel {{.Host.Kernel}}, cgroups {{.Host.CgroupsVersion}}, runtime {{.Host.OCIRuntime.Name}}, memTotal {{.Host.MemTotal}}, {{.Host.CPUs}} CPUs, storage {{.Store.GraphDriverName}}, rootless {{.Host.Security.Rootless}}')"
    done
    log "ready in $(since "$t0") s; point podman (and cargo xtask) at it with:"
    log "  eval \"\$($HERE/vm.sh env rootless)\"   # or: env rootful"
}

cmd_env() {
    local conn=${1:-rootless}
    url_of "$conn" >/dev/null
    if ! vm_running; then
        log "warning: the VM is not running (test/rig/vm.sh start)"
    fi
    print_env "$conn"
}

cmd_ssh() {
    require_root
    local user=${1:-root}
    [[ $user == root || $user == core ]] || die "ssh as root or core, not '$user'"
    shift || true
    vm_running || die "the VM is not running (test/rig/vm.sh start)"
    if (($# == 0)); then
        exec ssh -t -i "$KEY" -p "$(engine_port)" -o StrictHostKeyChecking=yes \
            -o UserKnownHostsFile="$KNOWN_HOSTS" -o LogLevel=ERROR "$user@127.0.0.1"
    fi
    vm_ssh "$user" "$@"
}

cmd_stop() {
    require_root
    local port pid deadline
    port=$(engine_port)
    if pid=$(vm_pid); then
        log "powering the VM off (qemu pid $pid)"
        vm_ssh root systemctl poweroff >/dev/null 2>&1 || true
        deadline=$((SECONDS + 90))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "the VM did not power off within 90 s: ending its qemu"
            kill "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 10))
            while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
                sleep 0.2
            done
            if kill -0 "$pid" 2>/dev/null; then
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
    fi
    forget_host_keys "$port"
    if [[ $port != "$PORT" ]]; then
        forget_host_keys "$PORT"
    fi
    rm -f "$PIDFILE" "$PORTFILE" "$STATE_DIR/base.tar"
    log "stopped; the VM's disk (both stores) is kept in $DISK (purge removes everything)"
}

cmd_purge() {
    cmd_stop
    if [[ -d $STATE_DIR ]]; then
        rm -rf "$STATE_DIR"
        log "removed $STATE_DIR (qemu, rootfs, disk, key pair, client)"
    fi
}

cmd_status() {
    require_root
    local ok=0 pid inside
    if pid=$(vm_pid); then
        echo "vm:        running (qemu pid $pid, up $(ps -o etime= -p "$pid" | tr -d ' '), ssh on 127.0.0.1:$(engine_port), disk $DISK: $(du -h "$DISK" | cut -f1) used of $DISK_SIZE)"
        # shellcheck disable=SC2016 # expanded in the VM
        inside='echo "kernel $(uname -r), $(nproc) CPUs, $(awk "/MemTotal/ { print \$2 \" kB\" }" /proc/meminfo), systemd $(systemctl is-system-running), delegated to core: $(cat /sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/cgroup.controllers), lingering: $(ls /var/lib/systemd/linger)"'
        echo "inside:    $(vm_ssh root "$inside" 2>/dev/null || echo 'ssh does not answer')"
    else
        echo "vm:        not running"
        ok=1
    fi
    echo "client:    $CLIENT_DIR/podman"
    status_connections "$ok"
}

main() {
    case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    purge) cmd_purge ;;
    status) cmd_status ;;
    env) cmd_env "${2:-rootless}" ;;
    client) echo "$CLIENT_DIR" ;;
    ssh)
        shift
        cmd_ssh "$@"
        ;;
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
