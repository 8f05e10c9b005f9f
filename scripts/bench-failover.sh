#!/usr/bin/env bash
# Measures failover on a local three-node cluster: SIGKILL the leader, time
# until a write succeeds through kvctl (a new process, start-up included),
# restart the killed node, repeat.
#
#   scripts/bench-failover.sh [ROUNDS (10)] [--base-port 19001]
#
# Prints each window and the median and worst; the cluster runs in a
# temporary directory and is removed at the end.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
rounds="${1:-10}"
base_port=19001
if [ "${2:-}" = "--base-port" ]; then base_port="${3:?--base-port needs a value}"; fi
. "$root/scripts/lib.sh"
temp_cluster failover "$base_port"
windows=()
for round in $(seq 1 "$rounds"); do
    "$kvctl" put "before-$round" x >/dev/null
    leader=$("$kvctl" --output json cluster status | grep -o '"leader_id": *[0-9]*' | head -1 | grep -o '[0-9]*$')
    kill -KILL "$(cat "$data_dir/node$leader.pid")"
    started=$(date +%s%N)
    "$kvctl" --timeout-ms 10000 put "after-$round" x >/dev/null
    ms=$(( ($(date +%s%N) - started) / 1000000 ))
    windows+=("$ms")
    echo "round $round: killed leader $leader, first write after $ms ms"
    "$root/scripts/start-cluster.sh" --base-port "$base_port" --data-dir "$data_dir" --node "$leader" >/dev/null
done
printf '%s\n' "${windows[@]}" | sort -n | awk '{ v[NR] = $1 } END {
    median = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "failover over %d rounds: median %d ms, worst %d ms\n", NR, median, v[NR] }'
