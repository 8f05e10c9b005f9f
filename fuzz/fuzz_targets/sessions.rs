//! The exactly-once session records a restarting node reads back from the
//! engine, then writes under each session (pairs of payloads: key suffix,
//! record).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let _ = raft_node::fuzzing::reopen_with_sessions(input);
});
