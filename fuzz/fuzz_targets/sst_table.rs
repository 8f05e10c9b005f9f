//! A table file opened, iterated and searched (footer, index, filter and
//! data blocks; checksums made valid when the first byte is odd).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let _ = storage::fuzzing::read_table(input);
});
