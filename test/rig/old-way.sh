#!/usr/bin/env bash
# "The old way", as the team ran it before `cargo xtask`, against the engine CONTAINER_HOST
# names (the rig): both service images compile their binary inside the image build (the usual
# multi-stage Dockerfile, `cargo build --release` in a Rust image), started at once, with
# PostgreSQL and Redis built and started beside them, and no memory cap on anything.
#
#   test/rig/measure.sh test/rig/old-way.sh     the old way in the rig, and its memory
#
# cargo in each build runs as many rustc as the engine's machine has CPUs. podman machine
# gives its VM half the Mac's cores (podman 4.8+: 4 on an 8-core Mac, 8 on a 16-core one),
# while the rig has only this host's: the builds run `cargo build --jobs $E2E_OLD_WAY_JOBS`
# (default 4), that machine's parallelism and so its compilers' memory.
#
# Prints what became of each part; exit 0 when all four succeeded, 1 when any failed or was
# killed. Needs CONTAINER_HOST set (measure.sh sets it to the rig) and a Rust builder image
# there (E2E_BUILDER_IMAGE, default localhost/e2e-rust:<rustc version>;
# `test/e2e/make-builder-image.sh` with CONTAINER_HOST set makes it there). Builds without
# the cache, and removes what it made.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BASE_IMAGE=${E2E_BASE_IMAGE:-localhost/e2e-base:bookworm}
BUILDER_IMAGE=${E2E_BUILDER_IMAGE:-localhost/e2e-rust:$(rustc --version | awk '{print $2}')}
JOBS=${E2E_OLD_WAY_JOBS:-4}
readonly HERE ROOT BASE_IMAGE BUILDER_IMAGE JOBS
WORK=$(mktemp -d /tmp/e2e-old-way.XXXXXX)
readonly WORK
readonly IMAGES=(localhost/oldway-gateway localhost/oldway-data-storage localhost/oldway-postgres localhost/oldway-redis)

r() { podman --remote "$@"; }
log() { printf '[old-way %s] %s\n' "$(date +%T)" "$*"; }

[[ -n ${CONTAINER_HOST:-} ]] || {
    echo "CONTAINER_HOST is not set: run it as test/rig/measure.sh test/rig/old-way.sh" >&2
    exit 2
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    jobs -p | xargs -r kill 2>/dev/null || true
    r rm -f -t 0 oldway-postgres oldway-redis >/dev/null 2>&1 || true
    r rmi -f "${IMAGES[@]}" >/dev/null 2>&1 || true
    r image prune -f >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

r image exists "$BUILDER_IMAGE" || {
    echo "the engine has no $BUILDER_IMAGE: test/e2e/make-builder-image.sh with CONTAINER_HOST=$CONTAINER_HOST" >&2
    exit 1
}

# The sources, as a build context the engine receives through its API.
mkdir -p "$WORK/src"
git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
    (cd "$ROOT" && xargs -0 cp --parents -t "$WORK/src" 2>/dev/null) || true
rm -f "$WORK/src/.dockerignore"
# A network that intercepts TLS is trusted when the host trusts it (as the xtask's compile does).
cp /etc/ssl/certs/ca-certificates.crt "$WORK/src/ca-certificates.crt" 2>/dev/null || touch "$WORK/src/ca-certificates.crt"
for bin in gateway data-storage; do
    cat >"$WORK/$bin.Dockerfile" <<DOCKERFILE
FROM $BUILDER_IMAGE AS build
WORKDIR /src
COPY . .
RUN if [ -s ca-certificates.crt ]; then export CARGO_HTTP_CAINFO=/src/ca-certificates.crt; fi \\
 && cargo build --release --locked --jobs $JOBS -p $bin
FROM $BASE_IMAGE
COPY --from=build /src/target/release/$bin /usr/local/bin/$bin
ENTRYPOINT ["/usr/local/bin/$bin"]
DOCKERFILE
done

log "at once, no caps: two in-image release compiles (cargo --jobs $JOBS each), PostgreSQL and Redis"
start=$SECONDS
r build --pull=never --no-cache -t localhost/oldway-gateway -f "$WORK/gateway.Dockerfile" "$WORK/src" >"$WORK/gateway.log" 2>&1 &
gw=$!
r build --pull=never --no-cache -t localhost/oldway-data-storage -f "$WORK/data-storage.Dockerfile" "$WORK/src" >"$WORK/data-storage.log" 2>&1 &
ds=$!
(
    r build --pull=never --build-arg "BASE_IMAGE=$BASE_IMAGE" -t localhost/oldway-postgres \
        -f "$ROOT/docker/postgres.Dockerfile" "$ROOT/docker/postgres" &&
        r run -d --name oldway-postgres -e POSTGRES_PASSWORD=old -e POSTGRES_USER=old localhost/oldway-postgres
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
for part in gateway data-storage postgres redis; do
    echo "--- $part (last lines of its output)"
    tail -n 3 "$WORK/$part.log"
done
echo "---"
log "gateway build: exit $gw_rc; data-storage build: exit $ds_rc; postgres: exit $pg_rc; redis: exit $rd_rc; $((SECONDS - start)) s"
((gw_rc == 0 && ds_rc == 0 && pg_rc == 0 && rd_rc == 0))
