//! Round trip: whatever entries the table builder writes, the reader
//! returns, in key order, in both format versions.
#![no_main]

use arbitrary::Arbitrary;

#[derive(Debug, Arbitrary)]
struct Input {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    last_key_index: bool,
    block_bytes_target: u16,
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    if input.entries.is_empty() {
        return;
    }
    let version = if input.last_key_index { 1 } else { 2 };
    let table = storage::fuzzing::build_table(&input.entries, version, usize::from(input.block_bytes_target))
        .expect("the builder writes any sorted entries to the simulated disk");
    let mut expected = input.entries.clone();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    expected.dedup_by(|a, b| a.0 == b.0);
    let read = storage::fuzzing::table_entries(&table).expect("a table just written reads back");
    assert_eq!(read, expected, "the table reads back what was written");
});
