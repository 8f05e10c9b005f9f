#!/usr/bin/env bash
# Measures what a client sees while a local three-node cluster is restarted
# node by node (1, 2, 3): each node is stopped with SIGTERM
# (stop-cluster.sh --node N), started again (start-cluster.sh --node N),
# and given SETTLE_MS to settle, while a writer puts keys one at a time.
#
#   scripts/bench-rolling-restart.sh [--base-port 25001] [--settle-ms 1000] [--timeout-ms 1000]
#
# The writer runs `kvctl put` (a new process per write, start-up included)
# with a deadline of --timeout-ms per attempt; a failed attempt is retried
# once. Prints the writes, the attempts that failed, the writes that failed
# beyond one retry, and the longest gap between two successful writes (ms).
# KV_BIN_DIR picks the binaries (default target/release). The cluster runs
# in a temporary directory, removed at the end.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
base_port=25001
settle_ms=1000
timeout_ms=1000
while [ $# -gt 0 ]; do
    case "$1" in
        --base-port) base_port="${2:?--base-port needs a value}"; shift 2 ;;
        --settle-ms) settle_ms="${2:?--settle-ms needs a value}"; shift 2 ;;
        --timeout-ms) timeout_ms="${2:?--timeout-ms needs a value}"; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
        *) echo "bench-rolling-restart.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
. "$root/scripts/lib.sh"
temp_cluster rolling "$base_port"
log="$data_dir/writes.log"
stop_file="$data_dir/writer.stop"

# One line per write: completion time (ns), attempts, 1 if it succeeded.
writer() {
    local i=0 attempts ok
    while [ ! -e "$stop_file" ]; do
        i=$((i + 1))
        ok=0
        for attempts in 1 2; do
            if "$kvctl" --timeout-ms "$timeout_ms" put "rolling-$i" x >/dev/null 2>&1; then
                ok=1
                break
            fi
        done
        echo "$(date +%s%N) $attempts $ok" >>"$log"
    done
}

"$kvctl" put warm-up x >/dev/null
writer &
writer_pid=$!
sleep 1
for n in 1 2 3; do
    "$root/scripts/stop-cluster.sh" --data-dir "$data_dir" --node "$n" >/dev/null
    "$root/scripts/start-cluster.sh" --base-port "$base_port" --data-dir "$data_dir" --node "$n" >/dev/null
    sleep "$(awk -v ms="$settle_ms" 'BEGIN { print ms / 1000 }')"
done
touch "$stop_file"
wait "$writer_pid"

awk '
    { if ($3 == 1) { if (last) { gap = ($1 - last) / 1e6; if (gap > worst) worst = gap } last = $1; ok++ }
      else failed++
      if ($2 > 1 || $3 == 0) retried++ }
    END { printf "rolling restart: %d writes, %d needed a retry, %d failed beyond one retry, longest gap between successful writes %d ms\n",
          NR, retried, failed, worst }' "$log"
# What each stopping node logged about its handoff (none from a build
# without one).
grep -h "handed leadership over\|leadership handoff failed" "$data_dir"/node*.log 2>/dev/null \
    | sed 's/\x1b\[[0-9;]*m//g' || true
