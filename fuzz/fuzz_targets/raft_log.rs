//! A Raft log segment recovered by the log store (framing, torn-tail
//! rules, record decoding, index checks; see the mode byte in
//! `raft_node::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    if let Ok(log) = raft_node::fuzzing::read_log_segment(input) {
        for pair in log.entries.windows(2) {
            assert_eq!(
                pair[0].log_id.index + 1,
                pair[1].log_id.index,
                "a recovered log serves consecutive indexes"
            );
        }
    }
});
