//! A table block (data or index) parsed, walked and searched: corrupt
//! bytes give an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let _ = storage::fuzzing::decode_block(input);
});
