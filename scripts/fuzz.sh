#!/usr/bin/env bash
# Runs fuzz targets (fuzz/, cargo-fuzz on a nightly toolchain) for SECONDS
# each, under the limits every decoder must keep: 1 GiB of memory and 5 s
# per input. New interesting inputs go into fuzz/corpus/<target>, crashes
# into fuzz/artifacts/<target> (see fuzz/README.md).
#   scripts/fuzz.sh [SECONDS] [TARGET...]    (default: 60 s, every target)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"
seconds=${1:-60}
shift || true
export CARGO_TARGET_DIR="$root/fuzz/target"
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build -O --debug-assertions
for target in "${targets[@]}"; do
    echo "== fuzz $target for ${seconds}s"
    mkdir -p "corpus/$target"
    cargo +nightly fuzz run -O --debug-assertions "$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=1024 -malloc_limit_mb=1024 -timeout=5
done
