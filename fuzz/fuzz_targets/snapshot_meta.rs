//! The snapshots directory's `CURRENT` and the current snapshot's
//! metadata file, read by a restarting node serving its snapshot (the
//! metadata framed with a valid checksum when the first byte is odd).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let _ = raft_node::fuzzing::read_current_snapshot(input);
});
