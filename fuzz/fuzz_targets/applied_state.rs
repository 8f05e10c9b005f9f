//! The state machine's applied state (last applied log id, membership,
//! session clock) read back from the engine by a restarting node.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let _ = raft_node::fuzzing::reopen_with_applied_state(input);
});
