//! Tests of the store over logs that older builds wrote (format 1).

use std::path::Path;
use std::sync::mpsc;

use openraft::{CommittedLeaderId, EntryPayload};

use super::record::Record;
use super::segment::{file_header_v1, frame_v1, segment_path};
use super::{LogStore, LogStoreOptions};
use crate::types::{Entry, LogId, Vote};

fn entry(index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(2, 1), index),
        payload: EntryPayload::Blank,
    }
}

/// Writes format-1 segment `seq` holding the vote and `indexes`, then
/// `zeros` zero bytes (the unused end of a preallocated segment).
fn write_v1(dir: &Path, seq: u64, indexes: std::ops::RangeInclusive<u64>, zeros: usize) {
    let mut bytes = file_header_v1().to_vec();
    frame_v1(&mut bytes, &Record::Vote(Vote::new_committed(2, 1)).encode());
    for index in indexes {
        frame_v1(&mut bytes, &Record::Entry(entry(index)).encode());
    }
    bytes.resize(bytes.len() + zeros, 0);
    std::fs::write(segment_path(dir, seq), bytes).expect("write a format-1 segment");
}

fn all(store: &LogStore) -> Vec<Entry> {
    store.reader().entries(..).expect("read")
}

#[test]
fn a_format_1_log_opens_appends_and_purges() {
    // Data directories of older builds must open: format 1 is read, and new segments (format 2) follow it.
    let dir = tempfile::tempdir().expect("tempdir");
    write_v1(dir.path(), 1, 1..=5, 4096);
    write_v1(dir.path(), 2, 6..=8, 0);
    let options = LogStoreOptions {
        segment_bytes_max: 1024,
        memory_window_bytes_max: 0,
        ..LogStoreOptions::default()
    };
    let mut store = LogStore::open_with(dir.path(), options.clone()).expect("open a format-1 log");
    assert_eq!(all(&store), (1..=8).map(entry).collect::<Vec<_>>());
    assert_eq!(store.vote(), Some(Vote::new_committed(2, 1)));
    for index in 9..=60 {
        let (tx, rx) = mpsc::channel();
        store
            .append_with_callback([entry(index)], move |r| tx.send(r.is_ok()).expect("send"))
            .expect("append");
        assert!(rx.recv().expect("callback"), "entry {index} durable");
    }
    drop(store);
    let mut store = LogStore::open_with(dir.path(), options.clone()).expect("reopen");
    assert_eq!(all(&store), (1..=60).map(entry).collect::<Vec<_>>());
    // Purging the format-1 segments deletes (or recycles) them.
    store.purge_upto(entry(50).log_id).expect("purge");
    assert!(!segment_path(dir.path(), 1).exists(), "the format-1 segment is purged");
    drop(store);
    let store = LogStore::open_with(dir.path(), options).expect("reopen after the purge");
    assert_eq!(all(&store), (51..=60).map(entry).collect::<Vec<_>>());
}
