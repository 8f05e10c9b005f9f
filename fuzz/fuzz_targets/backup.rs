//! A backup file read by `kvctl backup inspect` and by a node restoring
//! from it: unpacked, its engine opened and checked against the archive's
//! metadata, then restored as a new cluster's state machine.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let _ = raft_node::fuzzing::inspect_and_restore_backup(input);
});
