//! The engine's blob file (large values kept apart from the tables), read
//! through the pointers of the table that names it.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let _ = storage::fuzzing::read_blob_file(input);
});
