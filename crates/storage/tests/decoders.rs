//! The engine's decoders over every input of their fuzz corpora
//! (`fuzz/corpus/<target>`) and over seeded mutations of valid encodings
//! written by the engine's own encoders: an error is a fine answer, a panic
//! fails the test. This is the stable-Rust guard of the fuzz targets in
//! `fuzz/` (see `fuzz/README.md`); it needs no nightly toolchain.
//!
//! `DECODER_MUTATIONS` sets the mutations per input (default
//! `MUTATIONS_PER_INPUT_DEFAULT`), `DECODER_SEED` the seed (printed),
//! `DECODER_TARGETS` (comma-separated) the targets mutated (default all).
//! `FUZZ_WRITE_SEEDS=1 cargo test -p storage --test decoders -- --ignored`
//! writes the valid encodings into the corpus directories.

use storage::fuzzing::{self, MUTATIONS_PER_INPUT_DEFAULT};
use storage::key::{internal_key, ValueKind};

fn entries(count: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..count)
        .map(|i| (format!("key{i:05}").into_bytes(), vec![b'v'; i % 40]))
        .collect()
}

/// Valid encodings of each storage target's input, made by the engine's
/// encoders: `(target, name, input)`.
fn seeds() -> Vec<fuzzing::Seed> {
    let mut seeds = Vec::new();
    let block_entries: Vec<(Vec<u8>, Vec<u8>)> = entries(40)
        .into_iter()
        .enumerate()
        .map(|(i, (k, v))| (internal_key(&k, 100 - i as u64, ValueKind::Put), v))
        .collect();
    for restart in [1, 16] {
        seeds.push((
            "sst_block",
            format!("restart-{restart}"),
            fuzzing::build_block(&block_entries, restart),
        ));
    }
    for (version, block_bytes) in [(1, 256), (2, 256), (2, 4096), (3, 256), (3, 4096)] {
        let table = fuzzing::build_table(&entries(60), version, block_bytes).expect("build a table");
        for mode in [0u8, 1] {
            let mut input = vec![mode];
            input.extend_from_slice(&table);
            seeds.push(("sst_table", format!("v{version}-block{block_bytes}-mode{mode}"), input));
        }
    }
    let (wal, manifest) = fuzzing::template_files().expect("write the template database");
    for (target, file) in [("wal", wal), ("manifest", manifest)] {
        let mut raw = vec![0u8];
        raw.extend_from_slice(&file);
        seeds.push((target, "raw".into(), raw));
        let mut framed = vec![1u8];
        framed.extend_from_slice(&fuzzing::join_payloads(&fuzzing::log_payloads(&file)));
        seeds.push((target, "framed".into(), framed));
    }
    let current = fuzzing::template_current().expect("write the template database");
    seeds.push(("current", "template".into(), current));
    let blob = fuzzing::template_blob_file().expect("write the template database");
    seeds.push(("blob_file", "template".into(), blob));
    seeds
}

/// Runs the storage decoder `target` over `input`.
fn decode(target: &str, input: &[u8]) {
    match target {
        "sst_block" => drop(fuzzing::decode_block(input)),
        "sst_table" => drop(fuzzing::read_table(input)),
        "wal" => drop(fuzzing::replay_wal(input)),
        "manifest" => drop(fuzzing::recover_manifest(input)),
        "current" => drop(fuzzing::read_current(input)),
        "blob_file" => drop(fuzzing::read_blob_file(input)),
        other => panic!("no storage decoder is named {other}"),
    }
}

const TARGETS: [&str; 6] = ["sst_block", "sst_table", "wal", "manifest", "current", "blob_file"];

#[test]
fn valid_encodings_decode_without_error() {
    // The seeds are what the engine writes: each must decode, or the decoders reject good data.
    for (target, name, input) in seeds() {
        let result = match target {
            "sst_block" => fuzzing::decode_block(&input),
            "sst_table" => fuzzing::read_table(&input),
            "wal" => fuzzing::replay_wal(&input),
            "manifest" => fuzzing::recover_manifest(&input),
            "current" => fuzzing::read_current(&input),
            "blob_file" => fuzzing::read_blob_file(&input),
            other => panic!("no storage decoder is named {other}"),
        };
        let count = result.unwrap_or_else(|e| panic!("{target}/{name} does not decode: {e}"));
        assert!(count > 0, "{target}/{name} decoded no entry");
    }
}

#[test]
fn no_corpus_input_makes_a_decoder_panic() {
    // Every input the fuzzers kept (crashes they found included, once fixed) still decodes without a panic.
    for target in TARGETS {
        let panicked = fuzzing::corpus_panics(target, |input| decode(target, input)).expect("read the corpus");
        assert!(panicked.is_empty(), "{target} panicked on {panicked:?}");
    }
}

#[test]
fn no_mutation_of_a_valid_encoding_makes_a_decoder_panic() {
    // Random damage to what the engine writes is an error or a valid decode, never a panic.
    let seed = fuzzing::env_u64("DECODER_SEED", fastrand::u64(..));
    let count = fuzzing::env_u64("DECODER_MUTATIONS", MUTATIONS_PER_INPUT_DEFAULT as u64) as usize;
    println!("DECODER_SEED={seed} DECODER_MUTATIONS={count}");
    let seeds = fuzzing::seeds_of_env_targets(seeds());
    println!(
        "{} inputs: {count} mutations of each of {} seeds",
        count * seeds.len(),
        seeds.len()
    );
    let panicked = fuzzing::mutation_panics(seed, count, &seeds, decode);
    assert!(panicked.is_empty(), "DECODER_SEED={seed}: panicked on {panicked:?}");
}

#[test]
fn random_tables_read_back_what_was_written() {
    // The round trip of the `sst_roundtrip` target on stable: any entries, any format, any block size.
    let seed = fuzzing::env_u64("DECODER_SEED", fastrand::u64(..));
    println!("DECODER_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    for _ in 0..32 {
        let written: Vec<(Vec<u8>, Vec<u8>)> = (0..rng.usize(1..200))
            .map(|_| {
                let key: Vec<u8> = (0..rng.usize(0..12)).map(|_| rng.u8(..4)).collect();
                let value: Vec<u8> = (0..rng.usize(0..50)).map(|_| rng.u8(..)).collect();
                (key, value)
            })
            .collect();
        let version = rng.u32(1..=3);
        let table = fuzzing::build_table(&written, version, rng.usize(1..2048)).expect("build");
        let mut expected = written.clone();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        expected.dedup_by(|a, b| a.0 == b.0);
        let read = fuzzing::table_entries(&table).expect("read back");
        assert_eq!(read, expected, "DECODER_SEED={seed}");
    }
}

#[test]
#[ignore = "writes the seed corpus; run by hand with FUZZ_WRITE_SEEDS=1"]
fn write_seed_corpus() {
    // Not a check: refreshes fuzz/corpus/<target>/seed-* from the engine's encoders.
    if std::env::var_os("FUZZ_WRITE_SEEDS").is_none() {
        return;
    }
    fuzzing::write_seed_corpus(&seeds()).expect("write the seed corpus");
}
