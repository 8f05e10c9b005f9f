#!/usr/bin/env bash
# The engine next to RocksDB's db_bench (Debian package rocksdb-tools), same
# parameters, one after the other in one run:
#   scripts/bench-storage.sh [NUM]      (default 1000000 operations)
# 16-byte keys, 100-byte values, no compression, bloom 10 bits/key, 4 KiB
# blocks, 64 MiB memtable, 256 MiB block cache, 2 background jobs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
num="${1:-1000000}"
seeks=$((num / 10))
work=$(mktemp -d /tmp/bench-storage.XXXXXX)
trap 'rm -rf "$work"' EXIT

(cd "$root" && cargo build --release --locked -p storage-bench >/dev/null)
echo "== storage-bench (this engine)"
"$root/target/release/storage-bench" --db "$work/ours" --num "$num" \
    --benchmarks fillseq,fillrandom,overwrite,readrandom,seekrandom,readwhilewriting \
    --memtable-mb 64 --cache-mb 256 --bloom-bits 10 --compaction-threads 1
"$root/target/release/storage-bench" --db "$work/ours-sync" --num "$num" --sync-num 20000 \
    --benchmarks fillsync,fillbatch --batch-size 100
"$root/target/release/storage-bench" --db "$work/ours-sync16" --num "$num" --sync-num 20000 \
    --benchmarks fillsync --threads 16

if ! command -v db_bench >/dev/null 2>&1; then
    echo "db_bench not installed (apt-get install rocksdb-tools); skipping the comparison"
    exit 0
fi
common=(--key_size=16 --value_size=100 --compression_type=none --bloom_bits=10 --block_size=4096
        --write_buffer_size=67108864 --cache_size=268435456 --max_background_jobs=2 --seek_nexts=100)
echo "== db_bench $(db_bench --version 2>/dev/null | head -1)"
db_bench "${common[@]}" --db="$work/rocks" --num="$num" \
    --benchmarks=fillseq,fillrandom,overwrite,readrandom 2>&1 | grep -E "^(fillseq|fillrandom|overwrite|readrandom) "
db_bench "${common[@]}" --db="$work/rocks" --num="$num" --use_existing_db=1 --reads="$seeks" \
    --benchmarks=seekrandom,readwhilewriting 2>&1 | grep -E "^(seekrandom|readwhilewriting) "
db_bench "${common[@]}" --db="$work/rocks-sync" --num=20000 --sync=1 --benchmarks=fillrandom 2>&1 \
    | grep -E "^fillrandom " | sed 's/^fillrandom /fillsync   /'
db_bench "${common[@]}" --db="$work/rocks-batch" --num="$num" --sync=1 --batch_size=100 \
    --benchmarks=fillrandom 2>&1 | grep -E "^fillrandom " | sed 's/^fillrandom /fillbatch  /'
db_bench "${common[@]}" --db="$work/rocks-sync16" --num=1250 --threads=16 --sync=1 --benchmarks=fillrandom 2>&1 \
    | grep -E "^fillrandom " | sed 's/^fillrandom /fillsync16 /'
