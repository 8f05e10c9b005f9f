//! The engine's `CURRENT` file (which manifest is current) read by
//! `Db::open`, then the manifest it names recovered.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let _ = storage::fuzzing::read_current(input);
});
