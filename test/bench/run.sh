#!/usr/bin/env bash
# Load benchmark of the Gateway on a running stack (a benchmark, not a test: it prints
# figures and fails only when something was lost).
#
#   cargo xtask e2e --keep        # prints GATEWAY_URL and the run id
#   GATEWAY_URL=http://127.0.0.1:PORT E2E_STACK=target/e2e/runs/RUN/stack.json test/bench/run.sh
#
# For each case: webhooks per second and latency (p50, p90, p99) measured by wrk, one alert per
# webhook, for new alerts (each a new signal: 201) and repeated ones (100 alerts sent over and
# over: 202), at each number of connections, first with DataStorage up, then with it stopped
# (the audit events wait in the Gateway's outbox; then DataStorage is started and the time to
# deliver them is measured). Every case starts with an empty outbox. At the end, with DataStorage up again and the outbox delivered,
# it checks that nothing was lost: the audit events stored in PostgreSQL since the start are
# exactly two per alert the Gateway kept.
#
# Options (environment): BENCH_DURATION seconds per case (10), BENCH_DOWN_DURATION seconds per
# case with DataStorage down (5: at 8,000 webhooks/s the outbox takes 80,000 events in 5 s,
# under its default bound of 100,000; past the bound the Gateway answers 503, counted as
# non2xx), BENCH_CONNECTIONS ("1 4 16 64"), BENCH_DOWN=0 to skip the DataStorage-down cases,
# BENCH_MODES ("new repeated").
# Needs wrk (`apt-get install -y wrk`; installed here when missing and run as root) and
# python3. E2E_STACK is the stack description `cargo xtask e2e` writes (stop, start and exec
# commands per service); the load generator runs on the same machine as the stack.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

: "${GATEWAY_URL:?set GATEWAY_URL to the gateway of a running stack (cargo xtask e2e --keep)}"
: "${E2E_STACK:?set E2E_STACK to the stack.json of the run (target/e2e/runs/RUN/stack.json)}"
duration=${BENCH_DURATION:-10}
down_duration=${BENCH_DOWN_DURATION:-5}
connections=${BENCH_CONNECTIONS:-"1 4 16 64"}
modes=${BENCH_MODES:-"new repeated"}
down=${BENCH_DOWN:-1}
gateway=${GATEWAY_URL%/}

if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  else
    echo "wrk is missing: apt-get install -y wrk" >&2
    exit 1
  fi
fi

# The command of a service from stack.json, one word a line: stack_cmd SERVICE stop|start|exec
stack_cmd() {
  python3 -c 'import json,sys; [print(w) for w in json.load(open(sys.argv[1]))["services"][sys.argv[2]][sys.argv[3]]]' \
    "$E2E_STACK" "$1" "$2"
}
run_stack() {
  local -a argv
  mapfile -t argv < <(stack_cmd "$1" "$2")
  "${argv[@]}" >/dev/null
}
sql() {
  local -a argv
  mapfile -t argv < <(stack_cmd postgres exec)
  # shellcheck disable=SC2016 # expanded by the container's shell, from its environment
  "${argv[@]}" sh -c 'psql -X -v ON_ERROR_STOP=1 -At -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "$1"' psql "$1"
}
metric() {
  curl -fsS "$gateway/metrics" | awk -v m="$1" '$1 == m { print $2 }'
}
# Polls (a script, not a test) until the gateway's outbox is empty, at most 120 s.
wait_drained() {
  local deadline=$((SECONDS + 120)) pending
  while :; do
    pending=$(metric gateway_outbox_pending_events || true)
    [ "$pending" = 0 ] && return 0
    [ "$SECONDS" -lt "$deadline" ] || { echo "the outbox still holds ${pending:-?} events after 120 s" >&2; return 1; }
    sleep 0.2
  done
}
wait_ready() {
  local deadline=$((SECONDS + 120))
  until curl -fsS "$gateway/ready" 2>/dev/null | grep -q '"status":"ready"'; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "the gateway is not ready after 120 s" >&2; return 1; }
    sleep 0.2
  done
}
kept() {
  echo $(( $(metric gateway_signals_created_total) + $(metric gateway_signals_deduplicated_total) ))
}

tag="bench$(date +%s)"
wait_ready
wait_drained
kept_before=$(kept)
events_before=$(sql "SELECT count(*) FROM audit_events")
printf '%-34s %6s %12s %8s %8s %8s %8s %8s\n' case conns webhooks/s p50_ms p90_ms p99_ms non2xx errors

restore_data_storage() { run_stack data-storage start; wait_ready; }
trap 'restore_data_storage' EXIT

for state in up down; do
  if [ "$state" = down ] && [ "$down" != 1 ]; then continue; fi
  for mode in $modes; do
    for c in $connections; do
      threads=$(( c < 2 ? c : 2 ))
      wait_drained # each case starts with an empty outbox
      seconds=$duration
      if [ "$state" = down ]; then run_stack data-storage stop; seconds=$down_duration; fi
      if [ "$mode" = repeated ]; then
        # First copies of the 100 alerts, so that the case measures repeats only.
        wrk -t1 -c1 -d1s -s "$here/webhook.lua" "$gateway/api/v1/signals/prometheus" -- repeated "$tag-$state-$c" >/dev/null
      fi
      line=$(wrk -t"$threads" -c"$c" -d"${seconds}s" --timeout 10s -s "$here/webhook.lua" \
        "$gateway/api/v1/signals/prometheus" -- "$mode" "$tag-$state-$c" | grep '^RESULT ')
      python3 - "$mode, DataStorage $state" "$c" "${line#RESULT }" <<'PY'
import json, sys
name, conns, r = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
rate = r["requests"] / (r["duration_us"] / 1e6)
ms = lambda us: us / 1000
print(f'{name:<34} {conns:>6} {rate:>12.0f} {ms(r["p50_us"]):>8.2f} {ms(r["p90_us"]):>8.2f} {ms(r["p99_us"]):>8.2f} {r["non2xx"]:>8} {r["socket_errors"]:>8}')
PY
      if [ "$state" = down ]; then
        pending=$(metric gateway_outbox_pending_events)
        start=$(date +%s.%N)
        restore_data_storage
        wait_drained
        python3 -c 'import sys; n, t = int(sys.argv[1]), float(sys.argv[3]) - float(sys.argv[2]); print(f"    then DataStorage up: {n} pending events delivered in {t:.1f} s ({n / t:.0f} events/s)")' \
          "$pending" "$start" "$(date +%s.%N)"
      fi
    done
  done
done
trap - EXIT
wait_ready
wait_drained

kept_after=$(kept)
events_after=$(sql "SELECT count(*) FROM audit_events")
signals=$((kept_after - kept_before))
events=$((events_after - events_before))
echo
echo "alerts kept by the Gateway: $signals; audit events stored since the start: $events (expected $((2 * signals)))"
echo "delivery retries: $(metric gateway_outbox_delivery_retries_total), refused (outbox full): $(metric gateway_outbox_refused_total), dead letters: $(metric gateway_outbox_dead_letter_events)"
if [ "$events" -ne $((2 * signals)) ]; then
  echo "LOSS: the audit trail does not hold exactly two events per kept alert" >&2
  exit 1
fi
echo "no loss: every kept alert has exactly its two audit events"
