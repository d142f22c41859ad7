#!/usr/bin/env bash
# The seed's failure, reproduced in the rig: "the old way" is what the team ran before
# `cargo xtask`: both service images compile their binary inside the image build (the usual
# multi-stage Dockerfile, `cargo build --release` in a Rust image), started at once, with
# PostgreSQL and Redis built and started beside them, and no memory cap on anything. In a
# machine of 2 GiB the compilers and the databases together want more than there is, and the
# kernel's OOM killer ends something inside the engine.
#
# cargo in each build runs as many rustc jobs as the engine's machine has CPUs. podman machine
# gives its VM half the Mac's cores (podman 4.8+; 4 on an 8-core Mac), while the rig has only
# this host's CPUs: the builds run `cargo build --jobs $E2E_OLD_WAY_JOBS` (default 4), the
# parallelism, and so the memory, of the seed's 2 GB, 4-CPU VM.
#
#   test/rig/old-way.sh        exit 0 when the OOM killer of the rig's own memory limit
#                              killed something while the old way ran (the claim held),
#                              1 when nothing was killed
#
# Prints what each build did, the rig's peak memory (cgroup v1 memory.max_usage_in_bytes, or
# v2 memory.peak) and the number of OOM kills inside it (memory.oom_control / memory.events).
# Needs a running rig (test/rig/remote-engine.sh start) and a Rust builder image in it
# (E2E_BUILDER_IMAGE, default localhost/e2e-rust:<rustc version>; test/e2e/make-builder-image.sh
# with CONTAINER_HOST set makes it there). Removes what it made in the rig.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
URL=$("$HERE/remote-engine.sh" url)
BASE_IMAGE=${E2E_BASE_IMAGE:-localhost/e2e-base:bookworm}
BUILDER_IMAGE=${E2E_BUILDER_IMAGE:-localhost/e2e-rust:$(rustc --version | awk '{print $2}')}
JOBS=${E2E_OLD_WAY_JOBS:-4}
readonly HERE ROOT URL BASE_IMAGE BUILDER_IMAGE JOBS
export CONTAINER_HOST=$URL
WORK=$(mktemp -d /tmp/e2e-old-way.XXXXXX)
readonly WORK
readonly IMAGES=(localhost/oldway-gateway localhost/oldway-data-storage localhost/oldway-postgres localhost/oldway-redis)

r() { podman --remote "$@"; }
hpod() { env -u CONTAINER_HOST -u CONTAINER_CONNECTION podman "$@"; }
log() { printf '[old-way %s] %s\n' "$(date +%T)" "$*"; }

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    jobs -p | xargs -r kill 2>/dev/null || true
    r rm -f -t 0 oldway-postgres oldway-redis >/dev/null 2>&1 || true
    r rmi -f "${IMAGES[@]}" >/dev/null 2>&1 || true
    r image prune -f >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

r info >/dev/null 2>&1 || {
    echo "the rig does not answer on $URL: test/rig/remote-engine.sh start" >&2
    exit 1
}
r image exists "$BUILDER_IMAGE" || {
    echo "the rig has no $BUILDER_IMAGE: CONTAINER_HOST=$URL test/e2e/make-builder-image.sh" >&2
    exit 1
}

# The rig's memory cgroup, from the host (the rig is a container of the host's podman).
rig_id=$(hpod container inspect --format '{{.Id}}' e2e-rig)
cg=$(find /sys/fs/cgroup/memory /sys/fs/cgroup -maxdepth 3 -type d -name "*$rig_id*" 2>/dev/null | head -n1)
[[ -n $cg ]] || {
    echo "the rig's memory cgroup was not found under /sys/fs/cgroup" >&2
    exit 1
}
oom_kills() {
    if [[ -f $cg/memory.oom_control ]]; then
        awk '$1 == "oom_kill" { print $2 }' "$cg/memory.oom_control"
    else
        awk '$1 == "oom_kill" { print $2 }' "$cg/memory.events"
    fi
}
peak_bytes() { cat "$cg/memory.max_usage_in_bytes" 2>/dev/null || cat "$cg/memory.peak"; }
# Memory the rig's processes hold that the kernel cannot drop (anonymous: heaps, stacks; no
# swap here), unlike the page cache the peak above includes.
anon_bytes() { awk '$1 == "total_rss" || $1 == "anon" { print $2; exit }' "$cg/memory.stat"; }
sample_anon() {
    local max=0 now
    while :; do
        now=$(anon_bytes)
        ((now > max)) && max=$now && echo "$max" >"$WORK/anon-peak"
        sleep 0.2
    done
}
limit_bytes() { cat "$cg/memory.limit_in_bytes" 2>/dev/null || cat "$cg/memory.max"; }
mib() { echo $(($1 / 1048576)); }

# The sources, as a build context the engine receives through its API.
mkdir -p "$WORK/src"
git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
    (cd "$ROOT" && xargs -0 cp --parents -t "$WORK/src" 2>/dev/null) || true
rm -f "$WORK/src/.dockerignore"
# A network that intercepts TLS is trusted when the host trusts it (as the xtask's compile does).
cp /etc/ssl/certs/ca-certificates.crt "$WORK/src/ca-certificates.crt" 2>/dev/null || touch "$WORK/src/ca-certificates.crt"
for bin in gateway data-storage; do
    cat >"$WORK/$bin.Dockerfile" <<EOF
FROM $BUILDER_IMAGE AS build
WORKDIR /src
COPY . .
RUN if [ -s ca-certificates.crt ]; then export CARGO_HTTP_CAINFO=/src/ca-certificates.crt; fi \\
 && cargo build --release --locked --jobs $JOBS -p $bin
FROM $BASE_IMAGE
COPY --from=build /src/target/release/$bin /usr/local/bin/$bin
ENTRYPOINT ["/usr/local/bin/$bin"]
EOF
done

kills_before=$(oom_kills)
# Resets the peak (cgroup v1 allows it; v2's memory.peak counts from the rig's start).
echo 0 >"$cg/memory.max_usage_in_bytes" 2>/dev/null || true
log "the rig: limit $(mib "$(limit_bytes)") MiB, $kills_before OOM kills so far"
log "starting at once, no caps: two in-image release compiles (cargo --jobs $JOBS each), PostgreSQL and Redis"
start=$SECONDS
sample_anon &
sampler=$!
r build --pull=never --no-cache -t localhost/oldway-gateway -f "$WORK/gateway.Dockerfile" "$WORK/src" >"$WORK/gateway.log" 2>&1 &
gw=$!
r build --pull=never --no-cache -t localhost/oldway-data-storage -f "$WORK/data-storage.Dockerfile" "$WORK/src" >"$WORK/data-storage.log" 2>&1 &
ds=$!
(
    r build --pull=never --build-arg "BASE_IMAGE=$BASE_IMAGE" -t localhost/oldway-postgres \
        -f "$ROOT/docker/postgres.Dockerfile" "$ROOT/docker/postgres" &&
        r run -d --name oldway-postgres -e POSTGRES_PASSWORD=old -e POSTGRES_USER=old -e POSTGRES_DB=old localhost/oldway-postgres
) >"$WORK/postgres.log" 2>&1 &
pg=$!
(
    r build --pull=never --build-arg "BASE_IMAGE=$BASE_IMAGE" -t localhost/oldway-redis \
        -f "$ROOT/docker/redis.Dockerfile" "$ROOT/docker/redis" &&
        r run -d --name oldway-redis localhost/oldway-redis
) >"$WORK/redis.log" 2>&1 &
rd=$!

# Each one's exit status (`wait` in this shell: they are its children).
pg_rc=0 rd_rc=0 gw_rc=0 ds_rc=0
wait $pg || pg_rc=$?
wait $rd || rd_rc=$?
wait $gw || gw_rc=$?
wait $ds || ds_rc=$?
elapsed=$((SECONDS - start))
kill "$sampler" 2>/dev/null || true
kills=$(($(oom_kills) - kills_before))
peak=$(peak_bytes)

for part in gateway data-storage postgres redis; do
    echo "--- $part (last lines of its output)"
    tail -n 4 "$WORK/$part.log"
done
echo "---"
log "gateway build: exit $gw_rc; data-storage build: exit $ds_rc; postgres: exit $pg_rc; redis: exit $rd_rc"
log "the rig's peak memory: $(mib "$peak") MiB of $(mib "$(limit_bytes)") MiB (page cache included), anonymous memory at most $(mib "$(cat "$WORK/anon-peak" 2>/dev/null || echo 0)") MiB; OOM kills inside it: $kills; $elapsed s"
if ((kills > 0)); then
    log "the old way was OOM-killed inside the 2 GiB engine (as on the seed's 2 GB podman machine)"
    exit 0
fi
log "nothing was OOM-killed: the old way fitted in this engine"
exit 1
