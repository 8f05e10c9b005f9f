#!/usr/bin/env bash
# The engine larger than memory: `storage-bench`, and `db_bench` (RocksDB)
# next to it in the same run, each loading NUM random writes inside a memory
# cgroup capped at a tenth (and, as a second row, a hundredth) of the data it
# writes — page cache included — then reading random keys back.
#
# Per run it reports the write rate per twentieth of the load, first and
# last quarter, the slowest write, stall time (storage-bench), read
# p50/p99/p99.9, and the process's RSS and open files sampled during the run
# (they should stay flat), the cgroup's peak and OOM kills.
#
#   scripts/bench-larger-than-ram.sh [--num 18000000] [--ratios "10 100"]
#       [--engines "storage db_bench"] [--reads 200000] [--table-mb 64] [--out DIR]
#
# --table-mb sets storage-bench's table size. Needs root (cgroups) and, for the db_bench rows, `db_bench` on the PATH
# (Debian: rocksdb-tools). Every run is bounded by --timeout-s (1800).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
num=18000000
ratios="10 100"
engines="storage db_bench"
reads=200000
key_size=16
value_size=100
timeout_s=1800
table_mb=64
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --num) num="${2:?}"; shift 2 ;;
        --ratios) ratios="${2:?}"; shift 2 ;;
        --engines) engines="${2:?}"; shift 2 ;;
        --reads) reads="${2:?}"; shift 2 ;;
        --timeout-s) timeout_s="${2:?}"; shift 2 ;;
        --table-mb) table_mb="${2:?}"; shift 2 ;;
        --out) out="${2:?}"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
        *) echo "bench-larger-than-ram.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
. "$root/scripts/lib.sh"
memory_cgroups_init

bench="${KV_BIN_DIR:-$root/target/release}/storage-bench"
[ -x "$bench" ] || { echo "build first: cargo build --release --locked -p storage-bench" >&2; exit 1; }
case " $engines " in *" db_bench "*) command -v db_bench >/dev/null || { echo "db_bench not found (apt-get install rocksdb-tools)" >&2; exit 1; } ;; esac

work=$(mktemp -d /tmp/kv-btr.XXXXXX)
out=${out:-$work/out}
mkdir -p "$out"
cgroup="$cg_root/kv-btr-$$"
trap 'rmdir "$cgroup" 2>/dev/null || true; rm -rf "$work/db"; [ "$out" = "$work/out" ] || rm -rf "$work"' EXIT

data_mb=$(( num * (key_size + value_size) >> 20 ))
echo "commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores; output in $out"
echo "$num random writes of ${key_size} B keys and ${value_size} B values (~${data_mb} MiB written), then $reads random reads"

# sample PID FILE: every second while PID lives, "rss_kb open_files" of it.
sample() {
    while [ -d "/proc/$1" ]; do
        echo "$(awk '/VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0) $(ls "/proc/$1/fd" 2>/dev/null | wc -l)" >> "$2"
        sleep 1
    done
}

# run_capped NAME CAP_MB CMD...: runs CMD in the cgroup, sampling it.
run_capped() {
    local name=$1 cap=$2; shift 2
    memory_cgroup_create "$cgroup" "$cap"
    : > "$out/$name.samples"
    bash -c 'echo $$ > "$0/cgroup.procs"; exec timeout "$1" "${@:2}"' "$cgroup" "$timeout_s" "$@" \
        > "$out/$name.out" 2>&1 &
    local pid=$!
    sleep 0.2
    sample "$(pgrep -P "$pid" | head -n 1 || echo "$pid")" "$out/$name.samples" &
    local sampler=$!
    local rc=0
    wait "$pid" || rc=$?
    wait "$sampler" 2>/dev/null || true
    echo "cgroup peak $(memory_cgroup_peak_mb "$cgroup") MiB, OOM kills $(memory_cgroup_oom_kills "$cgroup"), exit $rc" >> "$out/$name.out"
    rmdir "$cgroup" 2>/dev/null || true
}

# summarize NAME: one line of figures from NAME.out and NAME.samples.
summarize() {
    awk -v name="$1" '
        FNR == 1 { file++ }
        file == 1 && /interval ending at/ { for (i = 1; i <= NF; i++) if ($i == "ops/s,") { rate[++n] = $(i - 1) } ; for (i = 1; i <= NF; i++) if ($i == "op") { s = $(i + 1) + 0; if (s > slow) slow = s } }
        file == 1 && /ops and \(/ { match($0, /ops and \([0-9.]+/); rate[++n] = substr($0, RSTART + 9, RLENGTH - 9) + 0 }
        file == 1 && /^readrandom/ && /p50/ { for (i = 1; i <= NF; i++) { if ($i == "ops/s") rops = $(i - 1); if ($i == "p50") p50 = $(i + 1); if ($i == "p99") p99 = $(i + 1); if ($i == "p99.9") p999 = $(i + 1) } }
        file == 1 && /^readrandom +:/ { rops = $5 }
        file == 1 && /^Percentiles:/ && !rp { rp = 1 }
        file == 1 && /^Percentiles:/ { last_pct = $0 }
        file == 1 && /^Microseconds per write:/ { in_write = 1 }
        file == 1 && in_write && /^Count:/ { }
        file == 1 && in_write && /^Min:/ { wmax = $6 / 1000; in_write = 0 }
        file == 1 && /stalls [0-9]+ \(/ { match($0, /stalls [0-9]+ \([0-9]+ ms/); split(substr($0, RSTART, RLENGTH), a, /[ (]+/); stall = a[3] " ms (" a[2] ")" }
        file == 1 && /^cgroup peak/ { if ($3 > peak) peak = $3; oom += $7; if (rc == "" || rc == 0) rc = $9 }
        file == 2 { rss = $1 / 1024; if (rss > rssmax) rssmax = rss; if (rssmin == "" || rss < rssmin) rssmin = rss; if ($2 > fdmax) fdmax = $2 }
        END {
            q = int(n / 4); if (q < 1) q = 1
            for (i = 1; i <= q; i++) first += rate[i]; first /= q
            for (i = n - q + 1; i <= n; i++) last += rate[i]; last /= q
            if (last_pct != "" && p50 == "") { split(last_pct, pc, " "); p50 = pc[3]; p99 = pc[7]; p999 = pc[9] }
            printf "%-22s %9.0f %9.0f %5.2f %9s %12s %8s %8s %8s %8s %7.0f-%-5.0f %5d %6s %3d %s\n", name, first, last, (first > 0 ? last / first : 0), (slow ? sprintf("%.1f", slow) : (wmax ? sprintf("%.1f", wmax) : "-")), (stall ? stall : "-"), (rops ? rops : "-"), p50, p99, p999, rssmin, rssmax, fdmax, peak, oom, rc
        }' "$out/$1.out" "$out/$1.samples"
}

header() {
    printf '%-22s %9s %9s %5s %9s %12s %8s %8s %8s %8s %13s %5s %6s %3s %s\n' run "q1 w/s" "q4 w/s" q4/q1 "slow ms" stall "reads/s" "p50 us" "p99 us" "p99.9 us" "RSS MiB" fds "peak" oom rc
}

summary=()
for ratio in $ratios; do
    cap=$(( data_mb / ratio ))
    [ "$cap" -ge 8 ] || { echo "--num too small for a 1/$ratio cap (cap ${cap} MiB < 8 MiB)" >&2; exit 2; }
    # Memtable and block cache: an eighth of the cap each (at least 1 MiB).
    mem=$(( cap / 8 )); [ "$mem" -ge 1 ] || mem=1
    for engine in $engines; do
        name="$engine-1of$ratio"
        echo "== $name: cap ${cap} MiB, memtable and cache ${mem} MiB each"
        rm -rf "$work/db"
        if [ "$engine" = storage ]; then
            run_capped "$name" "$cap" "$bench" --db "$work/db" --benchmarks fillrandom,readrandom \
                --num "$num" --reads "$reads" --key-size "$key_size" --value-size "$value_size" \
                --memtable-mb "$mem" --cache-mb "$mem" --table-mb "$table_mb" --bloom-bits 10 --stats-interval $(( num / 20 ))
        else
            run_capped "$name-load" "$cap" db_bench --db="$work/db" --benchmarks=fillrandom --num="$num" \
                --key_size="$key_size" --value_size="$value_size" --compression_type=none --bloom_bits=10 \
                --block_size=4096 --write_buffer_size=$(( mem << 20 )) --cache_size=$(( mem << 20 )) \
                --max_background_jobs=2 --stats_interval=$(( num / 20 )) --histogram=1
            run_capped "$name-read" "$cap" db_bench --db="$work/db" --use_existing_db=1 --benchmarks=readrandom \
                --num="$num" --reads="$reads" --key_size="$key_size" --value_size="$value_size" \
                --compression_type=none --bloom_bits=10 --block_size=4096 --write_buffer_size=$(( mem << 20 )) \
                --cache_size=$(( mem << 20 )) --max_background_jobs=2 --histogram=1
            cat "$out/$name-load.out" "$out/$name-read.out" > "$out/$name.out"
            cat "$out/$name-load.samples" "$out/$name-read.samples" > "$out/$name.samples"
        fi
        echo "   database $(du -sm "$work/db" | cut -f1) MiB on disk"
        summary+=("$(summarize "$name")")
        header; echo "${summary[-1]}"
    done
done
echo
echo "== summary (w/s: writes per second, first and last quarter of the load; slow: the slowest write)"
header
printf '%s\n' "${summary[@]}"
