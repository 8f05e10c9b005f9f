#!/usr/bin/env bash
# The cluster larger than memory: a fresh local three-node cluster, each node
# in its own memory cgroup (v1 `memory` controller or v2, whichever the
# machine has; the cap counts the page cache too), loaded with about ten
# times the cap of random 4 KiB puts in steps. Per step it prints puts/s and
# p99, each node's memory (cgroup usage and RSS), disk use and snapshot
# index. Half way through it SIGKILLs a follower and restarts it (back in its
# cgroup) while the load goes on; the last step shows whether it caught up.
#
#   scripts/bench-cluster-larger-than-ram.sh [--cap-mb 512] [--total-mb 5120]
#       [--steps 10] [--clients 64] [--value-size 4096] [--base-port 18301]
#
# Needs root. Every node's cgroup is removed at the end.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cap_mb=512
total_mb=5120
steps=10
clients=64
value_size=4096
base_port=18301
while [ $# -gt 0 ]; do
    case "$1" in
        --cap-mb) cap_mb="${2:?}"; shift 2 ;;
        --total-mb) total_mb="${2:?}"; shift 2 ;;
        --steps) steps="${2:?}"; shift 2 ;;
        --clients) clients="${2:?}"; shift 2 ;;
        --value-size) value_size="${2:?}"; shift 2 ;;
        --base-port) base_port="${2:?}"; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
        *) echo "bench-cluster-larger-than-ram.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
. "$root/scripts/lib.sh"

memory_cgroups_init
cg_of() { echo "$cg_root/kv-ltr-$$-node$1"; }
for n in 1 2 3; do
    memory_cgroup_create "$(cg_of "$n")" "$cap_mb"
done
remove_cgroups() {
    for n in 1 2 3; do rmdir "$(cg_of "$n")" 2>/dev/null || true; done
}

temp_cluster ltr "$base_port"
trap '"$root/scripts/stop-cluster.sh" --data-dir "$data_dir" --clean >/dev/null 2>&1 || true; remove_cgroups' EXIT
confine() { echo "$(cat "$data_dir/node$1.pid")" > "$(cg_of "$1")/cgroup.procs"; }
for n in 1 2 3; do confine "$n"; done

echo "commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores"
echo "cap ${cap_mb} MiB per node; ${total_mb} MiB of ${value_size} B values in ${steps} steps, ${clients} clients"
ops_per_step=$(( (total_mb << 20) / value_size / steps ))
leader=$(leader_node "$base_port")
victim=$(( leader % 3 + 1 ))
mb() { echo $(( $1 >> 20 )); }
node_line() {
    local n=$1 pid usage rss disk
    pid=$(cat "$data_dir/node$n.pid" 2>/dev/null || echo 0)
    usage=$(mb "$(cat "$(cg_of "$n")/$cg_usage")")
    rss=$(awk '/VmRSS/ { printf "%d", $2 / 1024 }' "/proc/$pid/status" 2>/dev/null || echo -)
    disk=$(du -sm "$data_dir/node$n" 2>/dev/null | cut -f1)
    printf 'node%s cg %4s MB rss %4s MB disk %5s MB' "$n" "$usage" "$rss" "$disk"
}
printf '%-5s %-9s %-9s %s\n' step puts/s p99_ms "nodes (cgroup usage, RSS, disk); snapshot index per node"
for step in $(seq 1 "$steps"); do
    if [ "$step" -eq $(( steps / 2 + 1 )) ]; then
        echo "-- SIGKILL follower node $victim, restart it at once (in its cgroup)"
        kill -9 "$(cat "$data_dir/node$victim.pid")"
        sleep 1
        "$root/scripts/start-cluster.sh" --base-port "$base_port" --data-dir "$data_dir" >/dev/null
        confine "$victim"
    fi
    result=$("$kvctl" --output json bench --workload put --clients "$clients" --ops "$ops_per_step" \
        --keyspace 100000000 --key-size 16 --value-size "$value_size" 2>/dev/null | tail -n 1)
    rate=$(echo "$result" | sed -n 's/.*"ops_per_sec": *\([0-9.]*\).*/\1/p' | cut -d. -f1)
    p99=$(printf '%.1f' "$(echo "$result" | sed -n 's/.*"p99": *\([0-9.]*\).*/\1/p')")
    snaps=$("$kvctl" --output json cluster status | grep -o '"snapshot_index": *[0-9]*' | grep -o '[0-9]*$' | tr '\n' ' ')
    printf '%-5s %-9s %-9s %s | %s | %s | snapshots %s\n' "$step" "$rate" "$p99" "$(node_line 1)" "$(node_line 2)" "$(node_line 3)" "$snaps"
done
for n in 1 2 3; do
    echo "node$n: cgroup peak $(memory_cgroup_peak_mb "$(cg_of "$n")") MB, OOM events $(memory_cgroup_oom_kills "$(cg_of "$n")")"
done
"$kvctl" cluster status
