//! Commands from a peer decoded and applied to a fresh state machine
//! (payloads split by `storage::fuzzing::split_payloads`).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let _ = raft_node::fuzzing::apply_commands(input);
});
