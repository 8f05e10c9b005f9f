//! The node's decoders (Raft log segments and records, commands and their
//! apply path, the snapshot archive, the identity file) over every input
//! of their fuzz corpora (`fuzz/corpus/<target>`) and over seeded mutations
//! of valid encodings written by the node's own encoders: an error is a
//! fine answer, a panic fails the test. The stable-Rust guard of the fuzz
//! targets in `fuzz/` (see `fuzz/README.md`).
//!
//! `DECODER_MUTATIONS` sets the mutations per input (default
//! `MUTATIONS_PER_INPUT_DEFAULT`), `DECODER_SEED` the seed (printed).
//! `FUZZ_WRITE_SEEDS=1 cargo test -p raft-node --test decoders -- --ignored`
//! writes the valid encodings into the corpus directories.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{CommittedLeaderId, EntryPayload, SnapshotMeta, StoredMembership};
use proto::raft as pb;
use raft_node::fuzzing;
use raft_node::types::{Entry, LogCommand, LogId, Membership, Node};
use storage::fuzzing::{corpus_panics, env_u64, join_payloads, mutation_panics, Seed, MUTATIONS_PER_INPUT_DEFAULT};

fn put(key: &str, value: &str, client_id: u64, sequence: u64) -> pb::Command {
    pb::Command {
        op: Some(pb::command::Op::Put(pb::Put {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
        })),
        client_id,
        sequence,
        first_unanswered: sequence,
        proposed_at_ms: 1_700_000_000_000,
    }
}

/// One command of each kind.
fn commands() -> Vec<pb::Command> {
    vec![
        pb::Command {
            op: Some(pb::command::Op::OpenSession(pb::OpenSession {})),
            client_id: 5,
            sequence: 1,
            ..Default::default()
        },
        put("k1", "v1", 5, 2),
        pb::Command {
            op: Some(pb::command::Op::Delete(pb::Delete {
                key: b"k1".to_vec().into(),
            })),
            client_id: 5,
            sequence: 3,
            first_unanswered: 3,
            ..Default::default()
        },
        pb::Command {
            op: Some(pb::command::Op::BatchPut(pb::BatchPut {
                pairs: vec![pb::Put {
                    key: b"k2".to_vec().into(),
                    value: b"v2".to_vec().into(),
                }],
            })),
            ..Default::default()
        },
        pb::Command {
            op: Some(pb::command::Op::Commands(pb::Commands {
                commands: vec![put("k3", "v3", 0, 0), put("k4", "v4", 0, 0)],
            })),
            ..Default::default()
        },
    ]
}

fn membership() -> Membership {
    Membership::new(
        vec![BTreeSet::from([1, 2, 3])],
        BTreeMap::from([
            (1, Node::new("127.0.0.1:1")),
            (2, Node::with_peer_addr("127.0.0.1:2", Some("127.0.0.1:52".into()))),
            (3, Node::new("127.0.0.1:3")),
        ]),
    )
}

/// A log of every kind of entry, in one term.
fn log_entries() -> Vec<Entry> {
    let log_id = |index| LogId::new(CommittedLeaderId::new(1, 1), index);
    let mut entries = vec![
        Entry {
            log_id: log_id(1),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(2),
            payload: EntryPayload::Membership(membership()),
        },
    ];
    for command in commands() {
        let index = entries.len() as u64 + 1;
        entries.push(Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(LogCommand::encode(&command)),
        });
    }
    entries
}

/// Valid encodings of each node target's input, made by the node's
/// encoders: `(target, name, input)`.
fn seeds() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let segments = fuzzing::segments_of(log_entries()).expect("write a log");
    for (i, segment) in segments.iter().enumerate() {
        for mode in [0u8, 2] {
            let mut raw = vec![mode];
            raw.extend_from_slice(segment);
            seeds.push(("raft_log", format!("segment{i}-mode{mode}"), raw));
        }
        let payloads = fuzzing::segment_payloads(segment);
        let payloads: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let mut framed = vec![1u8];
        framed.extend_from_slice(&join_payloads(&payloads));
        seeds.push(("raft_log", format!("segment{i}-mode1"), framed));
    }
    // A recycled segment: its earlier records follow its new ones, and it
    // is read under its own number (the mode's upper bits).
    let (seq, recycled) = fuzzing::recycled_segment().expect("recycle a segment");
    let mut raw = vec![u8::try_from((seq - 1) << 2).expect("a segment number below 65")];
    raw.extend_from_slice(&recycled);
    seeds.push(("raft_log", "recycled".into(), raw));
    let encoded: Vec<Vec<u8>> = commands()
        .iter()
        .map(|c| LogCommand::encode(c).encoded().to_vec())
        .collect();
    let encoded: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
    seeds.push(("command", "each-kind".into(), join_payloads(&encoded)));
    let meta = SnapshotMeta {
        last_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), 9)),
        last_membership: StoredMembership::new(Some(LogId::new(CommittedLeaderId::new(1, 1), 2)), membership()),
        snapshot_id: "2-1-9-1".into(),
    };
    let archive = fuzzing::pack_archive(&[("CURRENT", b"MANIFEST-000002\n"), ("000001.sst", &[7u8; 300])], &meta)
        .expect("pack an archive");
    seeds.push(("snapshot_archive", "two-files".into(), archive));
    for id in [1, 7] {
        let identity = fuzzing::identity_file(id).expect("write an identity file");
        seeds.push(("identity", format!("node{id}"), identity));
    }
    seeds
}

/// Runs the node decoder `target` over `input`.
fn decode(target: &str, input: &[u8]) {
    match target {
        "raft_log" => drop(fuzzing::read_log_segment(input)),
        "command" => drop(fuzzing::apply_commands(input)),
        "snapshot_archive" => drop(fuzzing::unpack_archive(input)),
        "identity" => drop(fuzzing::check_identity(input)),
        other => panic!("no node decoder is named {other}"),
    }
}

const TARGETS: [&str; 4] = ["raft_log", "command", "snapshot_archive", "identity"];

#[test]
fn valid_encodings_decode_without_error() {
    // The seeds are what the node writes: each must decode, or the decoders reject good data.
    for (target, name, input) in seeds() {
        let outcome = match target {
            "raft_log" => fuzzing::read_log_segment(&input)
                .map(|log| assert!(!log.entries.is_empty() || log.has_vote, "{name}: nothing recovered"))
                .map_err(|e| e.to_string()),
            "command" => fuzzing::apply_commands(&input)
                .map(|applied| assert_eq!(applied, commands().len(), "{name}"))
                .map_err(|e| e.to_string()),
            "snapshot_archive" => fuzzing::unpack_archive(&input).map(drop).map_err(|e| e.to_string()),
            "identity" if name == "node1" => fuzzing::check_identity(&input).map_err(|e| e.to_string()),
            "identity" => match fuzzing::check_identity(&input) {
                Err(raft_node::NodeError::DataDir { reason, .. }) if reason.contains("node 7") => Ok(()),
                other => Err(format!("node 7's identity file checked as node 1: {other:?}")),
            },
            other => panic!("no node decoder is named {other}"),
        };
        outcome.unwrap_or_else(|e| panic!("{target}/{name} does not decode: {e}"));
    }
}

#[test]
fn the_whole_log_is_recovered_from_its_segments() {
    // The seed log reads back whole: the entries the store was given, in order.
    let written = log_entries();
    let segments = fuzzing::segments_of(written.clone()).expect("write a log");
    let last = segments.last().expect("a segment");
    let mut input = vec![0u8];
    input.extend_from_slice(segments.first().expect("a segment"));
    let log = fuzzing::read_log_segment(&input).expect("recover");
    assert_eq!(segments.len(), 1, "a small log fits one segment");
    assert_eq!(log.entries, written, "{} bytes", last.len());
    assert!(log.has_vote);
}

#[test]
fn no_corpus_input_makes_a_decoder_panic() {
    // Every input the fuzzers kept (crashes they found included, once fixed) still decodes without a panic.
    for target in TARGETS {
        let panicked = corpus_panics(target, |input| decode(target, input)).expect("read the corpus");
        assert!(panicked.is_empty(), "{target} panicked on {panicked:?}");
    }
}

#[test]
fn no_mutation_of_a_valid_encoding_makes_a_decoder_panic() {
    // Random damage to what the node writes or a peer sends is an error or a valid decode, never a panic.
    let seed = env_u64("DECODER_SEED", fastrand::u64(..));
    let count = env_u64("DECODER_MUTATIONS", MUTATIONS_PER_INPUT_DEFAULT as u64) as usize;
    println!("DECODER_SEED={seed} DECODER_MUTATIONS={count}");
    let panicked = mutation_panics(seed, count, &seeds(), decode);
    assert!(panicked.is_empty(), "DECODER_SEED={seed}: panicked on {panicked:?}");
}

#[test]
#[ignore = "writes the seed corpus; run by hand with FUZZ_WRITE_SEEDS=1"]
fn write_seed_corpus() {
    // Not a check: refreshes fuzz/corpus/<target>/seed-* from the node's encoders.
    if std::env::var_os("FUZZ_WRITE_SEEDS").is_none() {
        return;
    }
    storage::fuzzing::write_seed_corpus(&seeds()).expect("write the seed corpus");
}

#[test]
fn entries_at_the_largest_indexes_are_refused_or_served_never_a_panic() {
    // Index arithmetic (`index + 1`) on a damaged log must not overflow: a checksummed record can hold any index.
    use prost::Message;
    for (first, count) in [(u64::MAX, 1u64), (u64::MAX - 1, 2), (u64::MAX - 2, 2)] {
        let payloads: Vec<Vec<u8>> = (0..count)
            .map(|i| {
                let entry = Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), first + i),
                    payload: EntryPayload::Blank,
                };
                let mut payload = vec![1u8];
                payload.extend_from_slice(&raft_node::codec::entry_to_pb(&entry).encode_to_vec());
                payload
            })
            .collect();
        let payloads: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let mut input = vec![1u8];
        input.extend_from_slice(&join_payloads(&payloads));
        if let Ok(log) = fuzzing::read_log_segment(&input) {
            assert_eq!(log.entries.len() as u64, count, "first index {first}");
        }
    }
}
