#!/usr/bin/env bash
# Runs a command while measuring the rig's memory, as its machine sees it, from the host:
#
#   test/rig/measure.sh COMMAND [ARGS...]
#
# then prints one line: the rig's peak memory (its cgroup's high-water mark, page cache
# included: the kernel drops that cache under pressure), the peak of its anonymous memory
# (heaps and stacks, which it cannot drop: there is no swap; sampled every 0.2 s), and how
# many processes the OOM killer ended inside the rig meanwhile. The command runs with
# CONTAINER_HOST pointing at the rig. Exit status: the command's.
# Needs a running rig (test/rig/remote-engine.sh start) and root.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
URL=$("$HERE/remote-engine.sh" url)
readonly HERE URL
(($# > 0)) || {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

rig_id=$(env -u CONTAINER_HOST podman container inspect --format '{{.Id}}' e2e-rig 2>/dev/null) || {
    echo "the rig is not running: test/rig/remote-engine.sh start" >&2
    exit 1
}
# cgroup v1 (memory controller) or v2 (unified).
cg=$(find /sys/fs/cgroup/memory /sys/fs/cgroup -maxdepth 3 -type d -name "*$rig_id*" 2>/dev/null | head -n1)
[[ -n $cg ]] || {
    echo "the rig's memory cgroup was not found under /sys/fs/cgroup" >&2
    exit 1
}
oom_kills() {
    local f=$cg/memory.oom_control
    [[ -f $f ]] || f=$cg/memory.events
    awk '$1 == "oom_kill" { print $2 }' "$f"
}
peak_bytes() { cat "$cg/memory.max_usage_in_bytes" 2>/dev/null || cat "$cg/memory.peak"; }
limit_bytes() { cat "$cg/memory.limit_in_bytes" 2>/dev/null || cat "$cg/memory.max"; }
anon_bytes() { awk '$1 == "total_rss" || $1 == "anon" { print $2; exit }' "$cg/memory.stat"; }
mib() { echo $(($1 / 1048576)); }

peak_file=$(mktemp)
sampler=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    [[ -z $sampler ]] || kill "$sampler" 2>/dev/null || true
    rm -f "$peak_file"
}
trap cleanup EXIT

kills_before=$(oom_kills)
# cgroup v1 resets its high-water mark on a write; v2's memory.peak counts from the rig's start.
echo 0 >"$cg/memory.max_usage_in_bytes" 2>/dev/null || true
(
    max=0
    while :; do
        now=$(anon_bytes)
        if ((now > max)); then
            max=$now
            echo "$max" >"$peak_file"
        fi
        sleep 0.2
    done
) &
sampler=$!
start=$(date +%s.%N)
rc=0
CONTAINER_HOST=$URL "$@" || rc=$?
took=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
kill "$sampler" 2>/dev/null || true
sampler=
printf '[rig memory] %s: peak %s MiB of %s MiB (page cache included), anonymous at most %s MiB, OOM kills inside the rig: %s, %s s, exit %s\n' \
    "$*" "$(mib "$(peak_bytes)")" "$(mib "$(limit_bytes)")" "$(mib "$(cat "$peak_file" 2>/dev/null || echo 0)")" \
    "$(($(oom_kills) - kills_before))" "$took" "$rc"
exit "$rc"
