//! A manifest recovered by `Db::open` (framing, version edits, the live
//! set; records framed with valid checksums when the first byte is odd).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let _ = storage::fuzzing::recover_manifest(input);
});
