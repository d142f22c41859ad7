# shellcheck shell=bash
# What the twin (twin.sh) and the VM (vm.sh) do alike: podman 5 reached as podman machine's
# engine is, over ssh with an identity file on two connections (core's rootless socket and
# root's), driven by trixie's podman client run through trixie's loader on this host. Each
# script sources this after setting SUITE, ROOTFS, KEY, CLIENT_DIR, KNOWN_HOSTS, ROOTLESS_SOCK,
# ROOTFUL_SOCK, MIRROR (E2E_*_MIRROR), ENGINE ("the twin", "the VM") and SCRIPT (its file
# name), and defines `engine_port` (the host's port for the engine's ssh), `api_ok`, `log`
# and `die`.

# The URL of a connection: rootless (core) or rootful (root).
url_of() {
    case $1 in
    rootless) echo "ssh://core@127.0.0.1:$(engine_port)$ROOTLESS_SOCK" ;;
    rootful) echo "ssh://root@127.0.0.1:$(engine_port)$ROOTFUL_SOCK" ;;
    *) die "a connection is rootless or rootful, not '$1'" ;;
    esac
}

# The podman 5 client through one connection.
tpod() {
    local conn=$1
    shift
    env -u CONTAINER_CONNECTION CONTAINER_HOST="$(url_of "$conn")" CONTAINER_SSHKEY="$KEY" \
        "$CLIENT_DIR/podman" "$@"
}

# The Debian mirror for debootstrap: MIRROR, else the URIs line of the host's sources.
mirror() {
    if [[ -n $MIRROR ]]; then
        echo "$MIRROR"
        return
    fi
    local m=
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        m=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

# The podman 5 client: trixie's /usr/bin/podman from ROOTFS, through trixie's own loader and
# libraries (its glibc is newer than this host's), as a script named podman.
ensure_client() {
    mkdir -p "$CLIENT_DIR"
    local wrapper=$CLIENT_DIR/podman
    cat >"$wrapper.new" <<WRAPPER
#!/bin/sh
# podman 5 (Debian $SUITE's) for this host, made by test/rig/$SCRIPT: remote use only
# (CONTAINER_HOST, --url or --connection). Runs through $SUITE's loader and libraries.
exec $ROOTFS/lib64/ld-linux-x86-64.so.2 --library-path $ROOTFS/lib/x86_64-linux-gnu:$ROOTFS/usr/lib/x86_64-linux-gnu $ROOTFS/usr/bin/podman "\$@"
WRAPPER
    chmod 0755 "$wrapper.new"
    mv "$wrapper.new" "$wrapper"
    "$wrapper" --remote --version >/dev/null 2>&1 || die "the podman 5 client $wrapper does not run"
}

# A key pair for root and core in the engine.
ensure_key() {
    [[ -f $KEY && -f $KEY.pub ]] && return
    mkdir -p "$(dirname "$KEY")"
    chmod 0700 "$(dirname "$KEY")"
    rm -f "$KEY" "$KEY.pub"
    ssh-keygen -q -t ed25519 -N '' -C "e2e-${SCRIPT%.sh}@$(hostname)" -f "$KEY" ||
        die "ssh-keygen failed"
    log "made the key pair $KEY (authorized for root and core in $ENGINE)"
}

# root's known_hosts without the lines of [127.0.0.1]:PORT (hashed ones too).
forget_host_keys() {
    local port=$1
    [[ -f $KNOWN_HOSTS ]] || return 0
    if ssh-keygen -F "[127.0.0.1]:$port" -f "$KNOWN_HOSTS" >/dev/null 2>&1; then
        ssh-keygen -R "[127.0.0.1]:$port" -f "$KNOWN_HOSTS" >/dev/null 2>&1
        rm -f "$KNOWN_HOSTS.old"
    fi
}

# Every host key type of the engine's sshd (`keys`, its `ssh_host_*_key.pub` files), unhashed,
# as `[127.0.0.1]:PORT <type> <key>`: what podman's ssh client checks (it fails on a type it
# does not find).
write_host_keys() {
    local port=$1 keys=$2
    mkdir -p "$(dirname "$KNOWN_HOSTS")"
    chmod 0700 "$(dirname "$KNOWN_HOSTS")"
    forget_host_keys "$port"
    awk -v h="[127.0.0.1]:$port" 'NF >= 2 { print h, $1, $2 }' <<<"$keys" >>"$KNOWN_HOSTS"
    chmod 0600 "$KNOWN_HOSTS"
    log "wrote $ENGINE's $(wc -l <<<"$keys") host keys for [127.0.0.1]:$port into $KNOWN_HOSTS"
}

port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The export lines for one connection (`env`).
print_env() {
    local conn=$1
    echo "export PATH=$CLIENT_DIR:\$PATH"
    echo "export CONTAINER_HOST=$(url_of "$conn")"
    echo "export CONTAINER_SSHKEY=$KEY"
}

# What each connection reports (`status`); status 1 when one does not answer, or when
# `answering` (the engine runs) is not 0.
status_connections() {
    local answering=$1 conn ok=0
    for conn in rootless rootful; do
        printf '%-10s %s\n' "$conn:" "$(url_of "$conn")"
        if [[ $answering == 0 ]] && api_ok "$conn"; then
            tpod "$conn" info --format '  engine:  podman {{.Version.Version}} on {{.Host.Hostname}}, {{.Host.OS}}/{{.Host.Arch}}, {{.Host.CPUs}} CPUs, memTotal {{.Host.MemTotal}} memFree {{.Host.MemFree}}, rootless {{.Host.Security.Rootless}}, cgroups {{.Host.CgroupsVersion}} {{.Host.CgroupManager}}, runtime {{.Host.OCIRuntime.Name}}'
            tpod "$conn" info --format '  storage: {{.Store.GraphDriverName}} on {{.Store.GraphRoot}}: {{.Store.ImageStore.Number}} images, {{.Store.ContainerStore.Number}} containers ({{.Store.ContainerStore.Running}} running); {{.Store.GraphRootUsed}} of {{.Store.GraphRootAllocated}} bytes used'
            echo "  use:     eval \"\$($HERE/$SCRIPT env $conn)\""
        else
            echo "  engine:  not answering"
            ok=1
        fi
    done
    return "$ok"
}
