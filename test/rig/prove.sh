#!/usr/bin/env bash
# Shows, through the rig's remote API only, that the rig behaves like an engine in a machine
# of its own (test/rig/README.md lists the claims):
#   a. `podman info`: the rig's memory (about 2 GiB), serviceIsRemote true
#   b. a build capped at 256m works, and a step allocating 600 MB under that cap is killed (137)
#   c. an uncapped step allocating 3 GB is killed by the rig's own 2 GiB limit
#   d. `run -v HOST_PATH:/x` fails: the engine cannot see the host's files
#   e. a network and `kube play --network` of two pods: one resolves and reaches the other
#   f. ports published inside the rig are not on the host's loopback; save and load work
# Needs a running rig (test/rig/remote-engine.sh start), jq, and root. Removes everything it
# made, in the rig and on the host. Exit 0 when every claim held.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
URL=$("$HERE/remote-engine.sh" url)
BASE_IMAGE=${E2E_BASE_IMAGE:-localhost/e2e-base:bookworm}
readonly HERE URL BASE_IMAGE
export CONTAINER_HOST=$URL
WORK=$(mktemp -d /tmp/e2e-rig-prove.XXXXXX)
readonly WORK
FAILED=0

say() { printf '\n== %s\n' "$*"; }
ok() { printf 'PASS: %s\n' "$*"; }
bad() {
    printf 'FAIL: %s\n' "$*"
    FAILED=1
}
# The rig's engine, through the API (CONTAINER_HOST).
r() { podman --remote "$@"; }
# The host's own engine.
hpod() { env -u CONTAINER_HOST -u CONTAINER_CONNECTION podman "$@"; }

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    r kube down "$WORK/stack.yaml" >/dev/null 2>&1 || true
    r rm -f -t 0 rigprove-lo rigprove-any rigprove-hostpath >/dev/null 2>&1 || true
    r network rm -f rigprove-net >/dev/null 2>&1 || true
    # Every image the rig did not have before (the builds' layers, kube play's pause image).
    local id
    for _ in 1 2 3; do
        while read -r id; do
            if [[ -n $id ]] && ! grep -qx "$id" "$WORK/images-before"; then
                r rmi -f "$id" >/dev/null 2>&1 || true
            fi
        done < <(r images -a -q --no-trunc 2>/dev/null)
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

r info >/dev/null 2>&1 || {
    echo "the rig does not answer on $URL: test/rig/remote-engine.sh start" >&2
    exit 1
}
r image exists "$BASE_IMAGE" || {
    echo "the rig has no $BASE_IMAGE: test/rig/remote-engine.sh start loads it" >&2
    exit 1
}

r images -a -q --no-trunc >"$WORK/images-before"

say "a. CONTAINER_HOST=$URL podman --remote info --format json"
r info --format json | jq '{memTotal: .host.memTotal, memFree: .host.memFree,
    serviceIsRemote: .host.serviceIsRemote, arch: .host.arch, os: .host.os, cpus: .host.cpus,
    hostname: .host.hostname, graphDriver: .store.graphDriverName, graphRoot: .store.graphRoot}' |
    tee "$WORK/info.json"
mem_total=$(jq .memTotal "$WORK/info.json")
host_total=$(($(awk '/^MemTotal:/ { print $2 }' /proc/meminfo) * 1024))
echo "(the host's own MemTotal: $host_total)"
if ((mem_total <= 2147483648 && mem_total > 1900000000)) && [[ $(jq .serviceIsRemote "$WORK/info.json") == true ]]; then
    ok "memTotal $mem_total (about 2 GiB, the host has $host_total), serviceIsRemote true"
else
    bad "memTotal $mem_total / serviceIsRemote $(jq .serviceIsRemote "$WORK/info.json")"
fi

say "b. podman --remote build --memory 256m --memory-swap 256m (100 MB step, then a 600 MB step)"
mkdir -p "$WORK/capped"
cat >"$WORK/capped/Containerfile" <<EOF
FROM $BASE_IMAGE
RUN echo "a 100 MB step under the 256m cap" && head -c 100M /dev/zero | tail | wc -c
RUN head -c 600M /dev/zero | tail >/dev/null
EOF
set +e
r build --memory 256m --memory-swap 256m -t localhost/rigprove-capped "$WORK/capped" >"$WORK/capped.log" 2>&1
rc=$?
set -e
cat "$WORK/capped.log"
echo "exit status: $rc"
if [[ $rc -eq 137 ]] && grep -qx Killed "$WORK/capped.log" && grep -q '^104857600$' "$WORK/capped.log"; then
    ok "the 100 MB step ran, the 600 MB step was killed under the 256m cap (137, Killed)"
else
    bad "expected the 100 MB step to pass and the 600 MB one to end in 137 / Killed"
fi
dmesg 2>/dev/null | grep 'oom-kill:' | tail -n1 || true

say "c. podman --remote build, no cap, a 3 GB step: the rig's own 2 GiB runs out"
mkdir -p "$WORK/uncapped"
cat >"$WORK/uncapped/Containerfile" <<EOF
FROM $BASE_IMAGE
RUN head -c 3G /dev/zero | tail >/dev/null
EOF
set +e
r build -t localhost/rigprove-uncapped "$WORK/uncapped" >"$WORK/uncapped.log" 2>&1
rc=$?
set -e
cat "$WORK/uncapped.log"
echo "exit status: $rc"
rig_id=$(hpod container inspect --format '{{.Id}}' e2e-rig)
oom_line=$(dmesg 2>/dev/null | grep 'oom-kill:' | tail -n1 || true)
echo "kernel: ${oom_line:-<dmesg not readable>}"
if [[ $rc -eq 137 ]] && grep -qx Killed "$WORK/uncapped.log"; then
    if [[ -z $oom_line || $oom_line == *"oom_memcg=/libpod_parent/libpod-$rig_id,"* ]]; then
        ok "killed (137, Killed) by the OOM killer of the rig's own cgroup (libpod-${rig_id:0:12}, the 2 GiB limit)"
    else
        bad "killed, but the kernel's last OOM kill was not for the rig's cgroup"
    fi
else
    bad "expected 137 / Killed"
fi
r info --format 'the rig answers afterwards: memTotal {{.Host.MemTotal}} memFree {{.Host.MemFree}}'

say "d. podman --remote run -v HOST_PATH:/x (a directory that exists only on the host)"
mkdir -p "$WORK/hostonly"
echo "a file on the host" >"$WORK/hostonly/file"
set +e
r run --rm --name rigprove-hostpath -v "$WORK/hostonly:/x" "$BASE_IMAGE" cat /x/file >"$WORK/hostpath.log" 2>&1
rc=$?
set -e
cat "$WORK/hostpath.log"
echo "exit status: $rc"
if [[ $rc -ne 0 ]] && grep -q 'no such file or directory' "$WORK/hostpath.log"; then
    ok "the engine cannot see $WORK/hostonly (exit $rc)"
else
    bad "the host path was visible to the engine"
fi

say "e. podman --remote build (apt-get inside the rig), network create, kube play --network"
mkdir -p "$WORK/redis"
cat >"$WORK/redis/Containerfile" <<EOF
FROM $BASE_IMAGE
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*
EOF
r build -t localhost/rigprove-redis "$WORK/redis" 2>&1 | tail -n 3
cat >"$WORK/stack.yaml" <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: redis
spec:
  containers:
  - name: redis
    image: localhost/rigprove-redis:latest
    command: ["redis-server", "--port", "6379", "--protected-mode", "no", "--save", ""]
---
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  containers:
  - name: client
    image: localhost/rigprove-redis:latest
    command: ["sleep", "infinity"]
EOF
r network create rigprove-net
r kube play --network rigprove-net "$WORK/stack.yaml" >/dev/null
r pod ps --format '{{.Name}} {{.Status}} {{.NumberOfContainers}} containers'
resolved=$(r exec client-client getent hosts redis || true)
echo "client: getent hosts redis -> $resolved"
# Wait (with a deadline) for redis to accept connections.
pong=""
for _ in $(seq 50); do
    pong=$(r exec client-client redis-cli -h redis -p 6379 ping 2>/dev/null || true)
    [[ $pong == PONG ]] && break
    sleep 0.1
done
echo "client: redis-cli -h redis ping -> $pong"
if [[ -n $resolved && $pong == PONG ]]; then
    ok "pod client resolves pod redis by name on rigprove-net and reaches it"
else
    bad "pods did not reach each other by name"
fi
r kube down "$WORK/stack.yaml" >/dev/null
r network rm rigprove-net >/dev/null

say "f. ports: -p 127.0.0.1:PORT:80 inside the rig, probed from the host"
probe() { # host port -> 0 when a redis PING gets +PONG
    # shellcheck disable=SC2016 # $1 and $2 are the inner bash's arguments
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf "PING\r\n" >&3 && head -c 5 <&3' _ "$1" "$2" 2>/dev/null | grep -q PONG
}
port=18080
while probe 127.0.0.1 "$port" || probe 127.0.0.1 $((port + 1)); do port=$((port + 2)); done
r run -d --name rigprove-lo -p "127.0.0.1:$port:80" localhost/rigprove-redis redis-server --port 80 --protected-mode no >/dev/null
r run -d --name rigprove-any -p "$((port + 1)):80" localhost/rigprove-redis redis-server --port 80 --protected-mode no >/dev/null
r ps --format '{{.Names}} {{.Ports}}'
rig_ip=$(hpod container inspect --format '{{.NetworkSettings.IPAddress}}' e2e-rig)
for _ in $(seq 50); do # until redis listens, seen from inside the rig
    hpod exec e2e-rig bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null && break
    sleep 0.1
done
report() { if probe "$1" "$2"; then echo "reachable"; else echo "NOT reachable"; fi; }
lo_host=$(report 127.0.0.1 "$port")
any_host=$(report 127.0.0.1 $((port + 1)))
lo_rigip=$(report "$rig_ip" "$port")
any_rigip=$(report "$rig_ip" $((port + 1)))
lo_inside=$(hpod exec e2e-rig timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port && echo reachable" 2>/dev/null || echo "NOT reachable")
echo "from the host: 127.0.0.1:$port (published on the rig's 127.0.0.1) -> $lo_host"
echo "from the host: 127.0.0.1:$((port + 1)) (published on the rig's 0.0.0.0) -> $any_host"
echo "from the host: $rig_ip:$port (the rig's address, loopback-published port) -> $lo_rigip"
echo "from the host: $rig_ip:$((port + 1)) (the rig's address, 0.0.0.0-published port) -> $any_rigip"
echo "inside the rig (podman exec e2e-rig): 127.0.0.1:$port -> $lo_inside"
if [[ $lo_host == "NOT reachable" && $any_host == "NOT reachable" && $lo_inside == reachable ]]; then
    ok "ports published in the rig are the rig's, not the host's loopback"
else
    bad "a port published in the rig showed up on the host's loopback (or not in the rig)"
fi
r rm -f -t 0 rigprove-lo rigprove-any >/dev/null

say "f. podman --remote save / load (the archive goes through the API to the host's disk)"
want=$(r image inspect --format '{{.Id}}' localhost/rigprove-redis)
r save -o "$WORK/redis.tar" localhost/rigprove-redis
ls -l "$WORK/redis.tar"
r rmi localhost/rigprove-redis >/dev/null
r load -i "$WORK/redis.tar"
got=$(r image inspect --format '{{.Id}}' localhost/rigprove-redis)
if [[ $want == "$got" ]] && ! hpod image exists localhost/rigprove-redis; then
    ok "saved to the host, removed, loaded back with the same ID (${got:0:12}); the host's own engine never had it"
else
    bad "the round trip changed the image ($want -> $got)"
fi

say "result"
if ((FAILED)); then
    echo "some claims did not hold (FAIL above)"
else
    echo "every claim held"
fi
exit "$FAILED"
