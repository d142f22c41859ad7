#!/usr/bin/env bash
# The everyday path against the tool a team would otherwise pick: side by side, alternating,
# in one go, a warm `cargo xtask e2e` against podman-compose driving the same four images
# (test/bench/compose.yaml): `up -d`, wait until both services answer their readiness
# endpoints (each checks its database, so this is compose's best case: no probe of PostgreSQL
# or Redis of its own), the same suite binary, `down -t 0`. A benchmark, not a test.
#
#   test/bench/compose.sh [RUNS]       medians of RUNS of each (default 5)
#
# Prints, for each, the median, min and max wall time and the median CPU time (user + system
# of the command and its children; the containers' own CPU is the same for both). Needs a
# checkout where `cargo xtask e2e` has run (the images and the suite binary are there), and
# podman-compose (`pip install podman-compose`; installed here when missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-5}
project=e2e-compose-bench

command -v podman-compose >/dev/null || python3 -m pip install -q podman-compose
if [ ! -x target/e2e/suite/e2e ] || [ ! -f target/e2e/images.json ]; then
  echo "run cargo xtask e2e once first (it builds the images and the suite binary)" >&2
  exit 1
fi
ref() { python3 -c "import json,sys; print(next(i['reference'] for i in json.load(open('target/e2e/images.json'))['images'] if i['name']==sys.argv[1]))" "$1"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
POSTGRES_IMAGE=$(ref postgres) REDIS_IMAGE=$(ref redis) DATA_STORAGE_IMAGE=$(ref data-storage) GATEWAY_IMAGE=$(ref gateway)
GATEWAY_PORT=$(free_port) DATA_STORAGE_PORT=$(free_port)
export POSTGRES_IMAGE REDIS_IMAGE DATA_STORAGE_IMAGE GATEWAY_IMAGE GATEWAY_PORT DATA_STORAGE_PORT
compose() { podman-compose -f test/bench/compose.yaml -p "$project" "$@"; }
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() { compose down -t 0 >/dev/null 2>&1 || true; }
trap cleanup EXIT

# One compose cycle: up, ready (polled with a deadline), the suite, down.
compose_cycle() {
  compose up -d >/dev/null 2>&1
  local deadline=$((SECONDS + 120))
  until curl -fs "http://127.0.0.1:$GATEWAY_PORT/ready" >/dev/null 2>&1 &&
    curl -fs "http://127.0.0.1:$DATA_STORAGE_PORT/health/ready" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { echo "the compose stack was not ready within 120 s" >&2; return 1; }
    sleep 0.05
  done
  GATEWAY_URL=http://127.0.0.1:$GATEWAY_PORT DATA_STORAGE_URL=http://127.0.0.1:$DATA_STORAGE_PORT \
    target/e2e/suite/e2e -q >/dev/null 2>&1
  compose down -t 0 >/dev/null 2>&1
}
xtask_cycle() { cargo xtask e2e >/dev/null 2>&1; }

# `wall user sys` of one run of a function, in seconds (bash's `time`: the CPU of the
# function's children, which is every process it ran and waited for).
measure() {
  local TIMEFORMAT='%R %U %S'
  { time "$1" >/dev/null 2>&1; } 2>&1
}

echo "warming up: one run of each"
xtask_cycle && compose_cycle
declare -a xw xc cw cc
for ((i = 1; i <= runs; i++)); do
  read -r w u s < <(measure xtask_cycle)
  xw+=("$w") xc+=("$(echo "$u + $s" | bc)")
  read -r w u s < <(measure compose_cycle)
  cw+=("$w") cc+=("$(echo "$u + $s" | bc)")
  echo "run $i/$runs: cargo xtask e2e ${xw[-1]} s (cpu ${xc[-1]} s), podman-compose ${cw[-1]} s (cpu ${cc[-1]} s)"
done
stats() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "median %.2f s, min %.2f s, max %.2f s", m, v[1], v[NR] }'; }
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { printf "%.2f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "results ($runs runs each, alternating):"
echo "  cargo xtask e2e (warm):       wall $(stats "${xw[@]}"); cpu median $(median "${xc[@]}") s"
echo "  podman-compose up/ready/suite/down: wall $(stats "${cw[@]}"); cpu median $(median "${cc[@]}") s"
echo "  ratio of medians (compose / xtask): wall $(echo "scale=2; $(median "${cw[@]}") / $(median "${xw[@]}")" | bc), cpu $(echo "scale=2; $(median "${cc[@]}") / $(median "${xc[@]}")" | bc)"
