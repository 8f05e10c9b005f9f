//! A snapshot archive from a leader unpacked into a temporary directory.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let _ = raft_node::fuzzing::unpack_archive(input);
});
