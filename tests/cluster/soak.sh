#!/usr/bin/env bash
# Soak: runs every chaos scenario again and again with fresh seeds.
#
#   tests/cluster/soak.sh [total-seconds=600] [seconds-per-scenario=60] [log]
#
# Each scenario run faults for seconds-per-scenario (CHAOS_SECONDS) with a
# new CHAOS_SEED; the loop stops starting runs after total-seconds. Stops at
# the first failure (its seed, rerun command and kept run directory are in
# the log).
#
# The soak log (default tests/cluster/soak-logs/<UTC time>-<commit>.log, meant
# to be committed next to the README's soak record) holds, per run: the
# scenario, its seed and rerun command, every injected fault, the report
# (rounds, faults injected, operations) and each checker's verdict; then a
# total. The full output of each run goes to target/chaos-soak/<scenario>-<seed>.out.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
total=${1:-600}
per=${2:-60}
commit=$(git -C "$root" rev-parse --short HEAD)
log=${3:-$root/tests/cluster/soak-logs/$(date -u +%Y-%m-%dT%H%MZ)-$commit.log}
out_dir="$root/target/chaos-soak"
# Every scenario: one test file each under tests/.
scenarios=()
for file in "$root"/tests/cluster/tests/*.rs; do
    scenarios+=("$(basename "$file" .rs)")
done
cd "$root"
bin=${KV_NODE_BIN:-$root/target/release/kv-node}
if [ ! -x "$bin" ]; then
    echo "soak: $bin missing: run cargo build --release -j 1 -p raft-node first" >&2
    exit 2
fi
cargo test -j 1 -p chaos --no-run
mkdir -p "$(dirname "$log")" "$out_dir"
{
    echo "soak: started $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $commit$(git diff --quiet HEAD || echo ' (dirty)'), $total s total, $per s of faults per run"
    echo "soak: kv-node $bin"
} | tee "$log"
start=$SECONDS
runs=0
faults=0
ops=0
# Bounded: at most 1000 runs, and none started after the time budget.
for _ in $(seq 1 1000); do
    for scenario in "${scenarios[@]}"; do
        if [ $((SECONDS - start)) -ge "$total" ]; then
            echo "soak: $runs runs in $((SECONDS - start)) s, all passed; $faults faults injected; $ops operations checked" | tee -a "$log"
            exit 0
        fi
        seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
        out="$out_dir/$scenario-$seed.out"
        echo "soak: $scenario seed $seed" | tee -a "$log"
        status=0
        CHAOS_SEED=$seed CHAOS_SECONDS=$per cargo test -j 1 -p chaos --test "$scenario" -- --nocapture >"$out" 2>&1 || status=$?
        # The run's own lines: rerun command, injected faults, report, verdicts.
        grep -E "^chaos $scenario: (rerun with|round .*: fault:|seed $seed: )|^  [a-z ]+: (PASS|FAIL|INCONCLUSIVE)|FAILED|panicked" "$out" >>"$log" || true
        if [ "$status" -ne 0 ]; then
            echo "soak: $scenario FAILED with seed $seed; full output in $out" | tee -a "$log"
            exit 1
        fi
        report=$(grep -E "^chaos $scenario: seed $seed: " "$out" | tail -n 1 || true)
        echo "$report"
        run_faults=$(sed -nE 's/.* ([0-9]+) faults injected.*/\1/p' <<<"$report")
        run_ops=$(sed -nE 's/.*; ([0-9]+) ops .*/\1/p' <<<"$report")
        faults=$((faults + ${run_faults:-0}))
        ops=$((ops + ${run_ops:-0}))
        runs=$((runs + 1))
    done
done
