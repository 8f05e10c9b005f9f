#!/usr/bin/env bash
# Where a loaded leader's time and a node's bytes go: starts a fresh local
# three-node cluster, runs `kvctl bench` puts, records the leader's CPU
# profile for part of the run, and keeps every node's Prometheus metrics
# before and after (fsync latency histogram, compaction bytes, stalls) and
# the bytes the data directory's disk wrote during the run (its
# `/sys/class/block/DEV/stat`: the whole disk, so other writers on it count
# too; a process's own `write_bytes` counts each dirtied page cache folio,
# which with large folios is many times what reaches the disk).
#
#   scripts/profile-leader.sh [--value-size 4096] [--clients 64] [--ops 200000]
#       [--perf-s 15] [--base-port 26001] [--out DIR]
#
# Prints the bench result, the profile's top symbols and the disk's bytes
# written; keeps everything in --out (default a new /tmp/kv-profile.XXXXXX).
# Needs `perf` (Debian: linux-perf) and root, or a perf_event_paranoid that
# lets perf attach. KV_BIN_DIR picks the binaries (default target/release).
# The cluster is removed at the end; the run is bounded by --ops.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
value_size=4096
clients=64
ops=200000
perf_s=15
base_port=26001
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --value-size) value_size="${2:?}"; shift 2 ;;
        --clients) clients="${2:?}"; shift 2 ;;
        --ops) ops="${2:?}"; shift 2 ;;
        --perf-s) perf_s="${2:?}"; shift 2 ;;
        --base-port) base_port="${2:?}"; shift 2 ;;
        --out) out="${2:?}"; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
        *) echo "profile-leader.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
command -v perf >/dev/null || { echo "profile-leader.sh: perf is not installed" >&2; exit 1; }
. "$root/scripts/lib.sh"
[ -n "$out" ] || out=$(mktemp -d /tmp/kv-profile.XXXXXX)
mkdir -p "$out"

temp_cluster profile "$base_port"
leader=$(leader_node "$base_port")
pid=$(cat "$data_dir/node$leader.pid")
metrics_port() { echo $((base_port + 100 + $1 - 1)); }
scrape() {
    for n in 1 2 3; do
        curl -sf "127.0.0.1:$(metrics_port "$n")/metrics" >"$out/metrics-$1-node$n.txt" || echo "node $n: no metrics" >&2
    done
}
disk=$(basename "$(df --output=source "$data_dir" | tail -n 1)")
disk_sectors_written() {
    if [ -r "/sys/class/block/$disk/stat" ]; then awk '{print $7}' "/sys/class/block/$disk/stat"; else echo 0; fi
}
echo "leader: node $leader (pid $pid); output in $out"
scrape before
sync
sectors_before=$(disk_sectors_written)
"$kvctl" bench --workload put --clients "$clients" --ops "$ops" --key-size 16 \
    --value-size "$value_size" --keyspace 100000 --output json >"$out/bench.json" &
bench=$!
# Profile the middle of the run, not its start.
sleep 5
perf record -F 499 -g -p "$pid" -o "$out/perf.data" -- sleep "$perf_s" 2>"$out/perf.err" || true
wait "$bench"
scrape after
sync
sectors_after=$(disk_sectors_written)
du -sb "$data_dir"/node? >"$out/disk.txt"
tail -n 1 "$out/bench.json"
perf report -i "$out/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null \
    | grep '%' | head -n 25 >"$out/top.txt" || true
cat "$out/top.txt"
echo "disk $disk wrote $(( (sectors_after - sectors_before) * 512 / 1000000 )) MB during the run; data per node (MB):" \
    | tee "$out/written.txt"
awk '{n=$2; sub(".*/", "", n); printf "%s %.0f\n", n, $1 / 1e6}' "$out/disk.txt" | tee -a "$out/written.txt"
