#!/usr/bin/env bash
# The engine's own floor for a stack of N pods: what podman alone takes to play N pods and
# tear them down, the way `cargo xtask e2e` does it (every `kube play` at once, then every
# `pod stop --time 0` at once, every `pod rm` at once, at most four per CPU at a time; the
# network removed), with no xtask in between. Compare its figures with `cargo xtask bench
# scale`: what a run adds above them is ours. The pods run the gateway image of the last
# prebuild (target/e2e/images.json) with the environment the manifests give it; PostgreSQL
# and Redis are not needed for its start.
#
#   test/bench/engine-floor.sh [PODS...]      # default: 4 10 25 50; RUNS=3 by default
#
# Prints, for each size, the median of RUNS runs of: up (the plays), down (the teardown),
# up+down, and up+down per added pod against the first size.
set -euo pipefail
cd "$(dirname "$0")/../.."

sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(4 10 25 50)
runs=${RUNS:-3}
image=$(python3 -c 'import json,sys; print(next(i["reference"] for i in json.load(open(sys.argv[1]))["images"] if i["name"] == "gateway"))' target/e2e/images.json) \
  || { echo "no gateway image in target/e2e/images.json: run \`cargo xtask prebuild-images\` first" >&2; exit 1; }
podman image exists "$image" || { echo "$image is not in podman: run \`cargo xtask prebuild-images\` first" >&2; exit 1; }

dir=$(mktemp -d)
network=e2e-floor-$$
cleanup() {
  podman pod ls --quiet --filter "label=e2e.floor=$$" | xargs -r podman pod rm --force >/dev/null 2>&1 || true
  podman network rm --force "$network" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

pod_yaml() { # NAME PORT
  cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  labels:
    e2e.floor: "$$"
spec:
  restartPolicy: Always
  containers:
  - name: gateway
    image: $image
    env:
    - name: REDIS_URL
      value: redis://127.0.0.1:6379
    - name: DATA_STORAGE_URL
      value: http://127.0.0.1:8080
    ports:
    - containerPort: 8080
      hostPort: $2
      hostIP: 127.0.0.1
EOF
}

now() { date +%s.%N; }
at_once=$(($(nproc) * 4))
# A command for each pod 1..N ({} is its number), at most $at_once at a time.
each_pod() { # N COMMAND...
  local n=$1
  shift
  seq 1 "$n" | xargs -P "$at_once" -I{} "$@" >/dev/null 2>&1
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# One run of N pods: "UP DOWN" in seconds.
one_run() {
  local n=$1 i t0 t1 t1b t2
  podman network create --subnet 10.77.0.0/24 --label e2e.xtask=1 "$network" >/dev/null
  for i in $(seq 1 "$n"); do pod_yaml "floor-$$-$i" $((42000 + i)) >"$dir/$i.yaml"; done
  t0=$(now)
  each_pod "$n" sh -c "podman kube play --network $network --ip 10.77.0.\$((10 + {})) $dir/{}.yaml 2>$dir/{}.err"
  t1=$(now)
  local running
  running=$(podman pod ls --quiet --filter "label=e2e.floor=$$" --filter status=running | wc -l)
  [ "$running" -eq "$n" ] || { echo "$running of $n pods run; podman said:" >&2; cat "$dir"/*.err >&2; exit 1; }
  t1b=$(now)
  each_pod "$n" podman pod stop --ignore --time 0 "floor-$$-{}"
  each_pod "$n" podman pod rm --force --ignore "floor-$$-{}"
  podman network rm --force "$network" >/dev/null
  t2=$(now)
  echo "$(echo "$t1 - $t0" | bc) $(echo "$t2 - $t1b" | bc)"
}

printf '%-6s %8s %8s %9s %12s\n' pods up down up+down "per pod"
first_n="" first_total=""
for n in "${sizes[@]}"; do
  [ "$n" -le 200 ] || { echo "at most 200 pods (one /24)" >&2; exit 1; }
  ups=() downs=()
  for _ in $(seq 1 "$runs"); do
    read -r up down < <(one_run "$n")
    ups+=("$up") downs+=("$down")
  done
  up=$(printf '%s\n' "${ups[@]}" | median)
  down=$(printf '%s\n' "${downs[@]}" | median)
  total=$(echo "$up + $down" | bc)
  per="-"
  if [ -z "$first_n" ]; then
    first_n=$n first_total=$total
  else
    per=$(echo "scale=3; ($total - $first_total) / ($n - $first_n)" | bc)
  fi
  printf '%-6s %7.2fs %7.2fs %8.2fs %12s\n' "$n" "$up" "$down" "$total" "$per"
done
