//! A WAL replayed by `Db::open` (framing, torn-tail scan, write batches,
//! memtable insert; records framed with valid checksums when the first
//! byte is odd).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let _ = storage::fuzzing::replay_wal(input);
});
