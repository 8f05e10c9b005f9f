#!/usr/bin/env bash
# Overload: thousands of clients, each in its own session with a short
# deadline, offer far more writes than a fresh local three-node cluster can
# take, for a fixed time. Prints the leader's RSS every few seconds and the
# result with its error mix: the RSS must stay flat and the excess must be
# refused (RESOURCE_EXHAUSTED), not queued.
#
#   scripts/bench-overload.sh [--base-port 18201] [--clients 4096] [--seconds 60] [--timeout-ms 500]
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
base_port=18201
clients=4096
seconds=60
timeout_ms=500
sample_every_s=5
while [ $# -gt 0 ]; do
    case "$1" in
        --base-port) base_port="${2:?--base-port needs a value}"; shift 2 ;;
        --clients) clients="${2:?--clients needs a value}"; shift 2 ;;
        --seconds) seconds="${2:?--seconds needs a value}"; shift 2 ;;
        --timeout-ms) timeout_ms="${2:?--timeout-ms needs a value}"; shift 2 ;;
        -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
        *) echo "bench-overload.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
. "$root/scripts/lib.sh"
temp_cluster overload "$base_port"
echo "commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores"

leader_id=$(leader_node "$base_port")
leader_pid=$(cat "$data_dir/node$leader_id.pid")
rss_mb() { awk '/VmRSS/ { printf "%d", $2 / 1024 }' "/proc/$leader_pid/status"; }
echo "leader node $leader_id (pid $leader_pid), RSS before load: $(rss_mb) MB"

(
    for _ in $(seq 1 $((seconds / sample_every_s + 2))); do
        sleep "$sample_every_s"
        node_pid_alive "$leader_pid" || exit 0
        echo "  leader RSS $(rss_mb) MB"
    done
) &
sampler=$!
"$kvctl" --timeout-ms "$timeout_ms" bench --workload put --clients "$clients" --session-per-client \
    --ops 100000000 --duration-s "$seconds" --keyspace 1000000 --key-size 16 --value-size 100
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
echo "leader RSS after load: $(rss_mb) MB"
"$kvctl" cluster status
