#!/usr/bin/env bash
# The whole test suite, as CI runs it:
#   1. every crate's unit and integration tests (debug build),
#   2. the release binaries, built once,
#   3. the cluster scripts and kvctl end to end on non-default ports,
#   4. the chaos suite against real kv-node processes (CI size), if present,
#   5. with FUZZ_SECONDS set, every fuzz target for that long (nightly).
# Step 1 already replays every fuzz corpus and mutated encodings through
# each decoder on stable (crates/*/tests/decoders.rs).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

echo "== unit and integration tests"
cargo test --workspace --locked --exclude chaos

echo "== release binaries"
cargo build --release --locked -p raft-node -p kvctl

echo "== cluster scripts and kvctl, end to end"
scripts/smoke-cluster.sh --base-port 17001

if [ -f tests/cluster/Cargo.toml ]; then
    echo "== chaos suite (CI size)"
    cargo test --locked -p chaos
fi

if [ -n "${FUZZ_SECONDS:-}" ]; then
    echo "== fuzz targets, ${FUZZ_SECONDS}s each"
    scripts/fuzz.sh "$FUZZ_SECONDS"
fi
