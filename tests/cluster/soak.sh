#!/usr/bin/env bash
# Soak: runs every chaos scenario again and again with fresh seeds.
#
#   tests/cluster/soak.sh [total-seconds=600] [seconds-per-scenario=60]
#
# Each scenario run faults for seconds-per-scenario (CHAOS_SECONDS) with a
# new CHAOS_SEED; the loop stops starting runs after total-seconds. Stops at
# the first failure (its seed, rerun command and kept run directory are in
# the output). The log of the soak is written to target/chaos-soak.log.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
total=${1:-600}
per=${2:-60}
log="$root/target/chaos-soak.log"
scenarios=(kill_leader kill_random kill_two_of_five full_crash freeze_leader partition_leader flapping_link snapshot_catchup)
cd "$root"
bin=${KV_NODE_BIN:-$root/target/release/kv-node}
if [ ! -x "$bin" ]; then
    echo "soak: $bin missing: run cargo build --release -j 1 -p raft-node first" >&2
    exit 2
fi
cargo test -j 1 -p chaos --no-run
: >"$log"
start=$SECONDS
runs=0
# Bounded: at most 1000 runs, and none started after the time budget.
for _ in $(seq 1 1000); do
    for scenario in "${scenarios[@]}"; do
        if [ $((SECONDS - start)) -ge "$total" ]; then
            echo "soak: $runs runs in $((SECONDS - start)) s, all passed" | tee -a "$log"
            exit 0
        fi
        seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
        echo "soak: $scenario seed $seed" | tee -a "$log"
        if ! CHAOS_SEED=$seed CHAOS_SECONDS=$per cargo test -j 1 -p chaos --test "$scenario" -- --nocapture >>"$log" 2>&1; then
            echo "soak: $scenario FAILED with seed $seed; see $log" | tee -a "$log"
            exit 1
        fi
        grep -E "^chaos $scenario: seed $seed: |^  [a-z ]+: " "$log" | tail -n 6
        runs=$((runs + 1))
    done
done
