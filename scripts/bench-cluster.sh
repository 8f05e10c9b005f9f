#!/usr/bin/env bash
# Benchmarks a fresh local three-node cluster with `kvctl bench`: the rows of
# BENCHMARKS.md's cluster table, one after another, on one data directory.
#
#   scripts/bench-cluster.sh [--base-port 18001] [--quick]
#
# Starts the cluster (release binaries; built if missing) on non-default
# ports in a temporary directory, runs each workload, prints one line per
# workload (ops/s and latency percentiles), then stops and removes the
# cluster. --quick runs a tenth of the operations. Everything shares this
# machine's cores with the load generator, as in TARGETS.md.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
base_port=18001
scale=1
while [ $# -gt 0 ]; do
    case "$1" in
        --base-port) base_port="${2:?--base-port needs a value}"; shift 2 ;;
        --quick) scale=10; shift ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
        *) echo "bench-cluster.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
. "$root/scripts/lib.sh"
temp_cluster bench "$base_port"
echo "commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores"

# run <label> <kvctl bench arguments...>: one line, ops/s and latency in ms.
run() {
    local label="$1"; shift
    local text
    text=$("$kvctl" bench --key-size 16 --value-size 100 "$@")
    printf '%-32s %s\n' "$label" "$(echo "$text" | tr '\n' ' ' | sed -E 's/^[A-Za-z]+: //; s/ +latency ms:/ |/')"
}

run "put, 1 client"                     --workload put --clients 1 --ops $((3000 / scale)) --keyspace 100000
run "put, 16 clients"                   --workload put --clients 16 --ops $((10000 / scale)) --keyspace 100000
run "put, 64 clients"                   --workload put --clients 64 --ops $((19200 / scale)) --keyspace 100000
run "put, 256 clients"                  --workload put --clients 256 --ops $((76800 / scale)) --keyspace 100000
run "linearizable get, 64 clients"      --workload get --clients 64 --ops $((19200 / scale))
run "stale get, 64 clients"             --workload get --clients 64 --ops $((64000 / scale)) --stale
run "range of 100, lin., 64 clients"    --workload range --clients 64 --ops $((6400 / scale))
# A term above 1 means an election happened during the run.
"$kvctl" cluster status
