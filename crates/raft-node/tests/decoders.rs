//! The node's decoders (Raft log segments and records, commands and their
//! apply path, the snapshot archive, the identity file, and the state
//! machine's applied state, session records, snapshot metadata and
//! `GENERATION` file) over every input
//! of their fuzz corpora (`fuzz/corpus/<target>`) and over seeded mutations
//! of valid encodings written by the node's own encoders: an error is a
//! fine answer, a panic fails the test. The stable-Rust guard of the fuzz
//! targets in `fuzz/` (see `fuzz/README.md`).
//!
//! `DECODER_MUTATIONS` sets the mutations per input (default
//! `MUTATIONS_PER_INPUT_DEFAULT`), `DECODER_SEED` the seed (printed),
//! `DECODER_TARGETS` (comma-separated) the targets mutated (default all).
//! `FUZZ_WRITE_SEEDS=1 cargo test -p raft-node --test decoders -- --ignored`
//! writes the valid encodings into the corpus directories.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{CommittedLeaderId, EntryPayload, SnapshotMeta, StoredMembership};
use prost::Message;
use proto::raft as pb;
use raft_node::fuzzing;
use raft_node::state_machine::sessions::{Sessions, SESSION_WRITES_UNANSWERED_MAX};
use raft_node::types::{Entry, LogCommand, LogId, Membership, Node, NodeId};
use storage::fuzzing::{
    corpus_panics, env_u64, join_payloads, mutation_panics, seeds_of_env_targets, Seed, MUTATIONS_PER_INPUT_DEFAULT,
};

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
    for (name, state) in applied_states() {
        let (last_applied, membership, clock_ms) = state;
        let encoded = fuzzing::encode_applied_state(last_applied, &membership, clock_ms);
        seeds.push(("applied_state", name.into(), encoded));
    }
    for (name, records) in session_records() {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = records
            .iter()
            .map(|(client_id, session)| (client_id.to_be_bytes().to_vec(), session.encode_to_vec()))
            .collect();
        let payloads: Vec<&[u8]> = pairs.iter().flat_map(|(k, v)| [k.as_slice(), v.as_slice()]).collect();
        seeds.push(("sessions", name.into(), join_payloads(&payloads)));
    }
    let meta = snapshot_meta();
    let current = format!("{}\n", fuzzing::SNAPSHOT_ID);
    let file = fuzzing::snapshot_meta_file(&meta);
    let mut raw = vec![0u8];
    raw.extend_from_slice(&join_payloads(&[current.as_bytes(), &file]));
    seeds.push(("snapshot_meta", "raw".into(), raw));
    let body = raft_node::codec::snapshot_meta_to_pb(&meta).encode_to_vec();
    let mut framed = vec![1u8];
    framed.extend_from_slice(&join_payloads(&[current.as_bytes(), &body]));
    seeds.push(("snapshot_meta", "framed".into(), framed));
    let generations = fuzzing::generation_files().expect("write GENERATION files");
    for (i, generation) in generations.into_iter().enumerate() {
        seeds.push(("generation", format!("written{i}"), generation));
    }
    let mut raw = vec![0u8];
    raw.extend_from_slice(&fuzzing::backup_file().expect("take a backup"));
    seeds.push(("backup", "raw".into(), raw));
    let (meta, files) = fuzzing::backup_parts().expect("take a backup apart");
    let mut parts: Vec<&[u8]> = vec![&meta];
    for (name, contents) in &files {
        parts.extend([name.as_bytes(), contents.as_slice()]);
    }
    let mut packed = vec![1u8];
    packed.extend_from_slice(&join_payloads(&parts));
    seeds.push(("backup", "parts".into(), packed));
    seeds
}

/// The metadata of the snapshot the `snapshot_meta` seeds describe.
fn snapshot_meta() -> SnapshotMeta<NodeId, Node> {
    SnapshotMeta {
        last_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), 9)),
        last_membership: StoredMembership::new(Some(LogId::new(CommittedLeaderId::new(1, 1), 2)), membership()),
        snapshot_id: format!("9-{}", &fuzzing::SNAPSHOT_ID["snap-".len()..]),
    }
}

/// An applied state as the state machine stores it: last applied log id,
/// membership and session clock.
type AppliedState = (Option<LogId>, StoredMembership<NodeId, Node>, u64);

/// The applied states of a new node, of one after a membership change, and
/// of one in a joint configuration.
fn applied_states() -> Vec<(&'static str, AppliedState)> {
    let log_id = |term, index| LogId::new(CommittedLeaderId::new(term, 1), index);
    let mut nodes: BTreeMap<u64, Node> = membership().nodes().map(|(id, node)| (*id, node.clone())).collect();
    nodes.insert(4, Node::new("127.0.0.1:4"));
    let joint = Membership::new(vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([1, 2, 4])], nodes);
    vec![
        ("new", (None, StoredMembership::default(), 0)),
        (
            "three-voters",
            (
                Some(log_id(2, 9)),
                StoredMembership::new(Some(log_id(1, 2)), membership()),
                fuzzing::SESSIONS_CLOCK_MS,
            ),
        ),
        (
            "joint",
            (
                Some(log_id(3, 12)),
                StoredMembership::new(Some(log_id(3, 11)), joint),
                fuzzing::SESSIONS_CLOCK_MS + 1,
            ),
        ),
    ]
}

/// Session records as the state machine stores them, made by its session
/// table: a few sessions of each kind, and one whose window is full.
fn session_records() -> Vec<(&'static str, Vec<(u64, pb::Session)>)> {
    let records = |table: &mut Sessions| -> Vec<(u64, pb::Session)> {
        table
            .take_changed()
            .into_iter()
            .filter_map(|(client_id, session)| Some((client_id, session?)))
            .collect()
    };
    let mut table = Sessions::default();
    table.advance_clock(fuzzing::SESSIONS_CLOCK_MS);
    let opened = table.open(3, 0).expect("open a session");
    table.admit(opened, 1, 1, 4);
    table.admit(opened, 2, 1, 5);
    table.admit(opened, 3, 2, 6);
    table.admit(77, 1, 1, 7);
    let few = records(&mut table);
    let full = table.open(8, 0).expect("open a session");
    for sequence in 1..=SESSION_WRITES_UNANSWERED_MAX {
        table.admit(full, sequence, 1, 8 + sequence);
    }
    vec![("few", few), ("full-window", records(&mut table))]
}

/// Runs the node decoder `target` over `input`.
fn decode(target: &str, input: &[u8]) {
    match target {
        "raft_log" => drop(fuzzing::read_log_segment(input)),
        "command" => drop(fuzzing::apply_commands(input)),
        "snapshot_archive" => drop(fuzzing::unpack_archive(input)),
        "identity" => drop(fuzzing::check_identity(input)),
        "applied_state" => drop(fuzzing::reopen_with_applied_state(input)),
        "sessions" => drop(fuzzing::reopen_with_sessions(input)),
        "snapshot_meta" => drop(fuzzing::read_current_snapshot(input)),
        "generation" => drop(fuzzing::install_after_generation(input)),
        "backup" => drop(fuzzing::inspect_and_restore_backup(input)),
        other => panic!("no node decoder is named {other}"),
    }
}

const TARGETS: [&str; 9] = [
    "raft_log",
    "command",
    "snapshot_archive",
    "identity",
    "applied_state",
    "sessions",
    "snapshot_meta",
    "generation",
    "backup",
];

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
            "applied_state" => fuzzing::reopen_with_applied_state(&input)
                .map(|(last_applied, membership)| {
                    let (_, (expected_last, expected_membership, _)) = applied_states()
                        .into_iter()
                        .find(|(n, _)| *n == name)
                        .expect("a seed's applied state");
                    assert_eq!(last_applied, expected_last, "{name}");
                    assert_eq!(membership, expected_membership, "{name}");
                })
                .map_err(|e| e.to_string()),
            "sessions" => fuzzing::reopen_with_sessions(&input)
                // Each seed has a session that applied sequence 2 with window 1 or 2.
                .map(|results| assert!(results.iter().any(|r| r.duplicate), "{name}: no session was recovered"))
                .map_err(|e| e.to_string()),
            "snapshot_meta" => fuzzing::read_current_snapshot(&input)
                .map(|meta| assert_eq!(meta, Some(snapshot_meta()), "{name}"))
                .map_err(|e| e.to_string()),
            "generation" => fuzzing::install_after_generation(&input)
                .map(|last| assert!(last.is_some(), "{name}: nothing installed"))
                .map_err(|e| e.to_string()),
            "backup" => fuzzing::inspect_and_restore_backup(&input)
                .map_err(|e| e.to_string())
                .and_then(|outcome| {
                    let summary = outcome.inspected.map_err(|e| format!("inspect: {e}"))?;
                    assert_eq!((summary.index, summary.keys), (3, 3), "{name}: {summary:?}");
                    let restored = outcome.restored.map_err(|e| format!("restore: {e}"))?;
                    assert_eq!(restored.index, 3, "{name}");
                    Ok(())
                }),
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
    let seeds = seeds_of_env_targets(seeds());
    println!(
        "{} inputs: {count} mutations of each of {} seeds",
        count * seeds.len(),
        seeds.len()
    );
    let panicked = mutation_panics(seed, count, &seeds, decode);
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
