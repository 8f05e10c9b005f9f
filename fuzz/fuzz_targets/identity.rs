//! A data directory's identity file checked as a starting node does.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let _ = raft_node::fuzzing::check_identity(input);
});
