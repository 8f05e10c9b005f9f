//! Helpers shared by the engine's integration tests.

#![allow(dead_code)]

use storage::Options;

/// Options that make a small data set exercise flushes, L0 compactions and
/// deeper levels within a test's few thousand writes.
pub fn small_options() -> Options {
    Options {
        memtable_bytes_max: 16 * 1024,
        immutable_memtables_max: 2,
        block_bytes_target: 256,
        block_cache_bytes: 64 * 1024,
        table_bytes_target: 8 * 1024,
        l0_compaction_trigger: 2,
        l0_slowdown_trigger: 6,
        l0_stop_trigger: 10,
        l1_bytes_target: 32 * 1024,
        level_size_ratio: 4,
        // Several compaction threads, each compaction split into parts, so
        // concurrent compactions and sub-compactions happen in every test.
        compaction_threads: 2,
        subcompactions_max: 3,
        subcompaction_bytes_min: 4096,
        // Values from 128 bytes on live in blob files, so the tests' larger
        // values are separated, collected and read back from them.
        blob_value_bytes_min: Some(128),
        blob_file_bytes_target: 16 * 1024,
        ..Options::default()
    }
}

/// The seed for a randomized test: `STORAGE_SEED` if set, else random.
/// Printed so a failure can be rerun.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("STORAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("{test}: seed {seed} (rerun with STORAGE_SEED={seed})");
    seed
}

/// A count from the environment variable `name`, else `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}
