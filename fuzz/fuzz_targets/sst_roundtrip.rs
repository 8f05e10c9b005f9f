//! Round trip: whatever entries the table builder writes, the reader
//! returns, in key order, in every format version.
#![no_main]

use arbitrary::Arbitrary;

#[derive(Debug, Arbitrary)]
struct Input {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    format: u8,
    block_bytes_target: u16,
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    if input.entries.is_empty() {
        return;
    }
    let version = 1 + u32::from(input.format % 3);
    let table = storage::fuzzing::build_table(&input.entries, version, usize::from(input.block_bytes_target))
        .expect("the builder writes any sorted entries to the simulated disk");
    let mut expected = input.entries.clone();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    expected.dedup_by(|a, b| a.0 == b.0);
    let read = storage::fuzzing::table_entries(&table).expect("a table just written reads back");
    assert_eq!(read, expected, "the table reads back what was written");
});
