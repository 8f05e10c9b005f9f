//! The state machine's `GENERATION` file (which engine directory is in
//! use) read by a restarting node, then a snapshot installed after it.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let _ = raft_node::fuzzing::install_after_generation(input);
});
