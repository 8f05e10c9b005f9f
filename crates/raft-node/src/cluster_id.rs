//! The cluster id: which cluster a node's Raft state belongs to, sent with
//! every Raft RPC and checked by the receiver.
//!
//! Raft messages name nodes by id only, so without this a node restarted
//! on an address that another cluster now uses (or a cluster re-created or
//! restored on old addresses) could receive the other cluster's
//! `AppendEntries` and mix the two logs.
//!
//! # Rules
//!
//! - A node that forms a new cluster (`--init`, with or without
//!   `--restore`, or the `Initialize` call) draws a random id and makes it
//!   durable in its identity file (`DIR/NODE`) before any Raft message goes
//!   out. A restored cluster is a new cluster: it gets a new id, so the
//!   nodes of the cluster the backup came from cannot reach it.
//! - Every `AppendEntries`, `Vote` and `InstallSnapshot` carries the
//!   sender's id in the gRPC metadata key [`CLUSTER_ID_HEADER`] (metadata
//!   rather than a proto field, so that the streamed snapshot carries it
//!   once, before its first chunk, and the messages' encoding, which is
//!   also the log's on-disk encoding, stays as it is).
//! - A receiver with an id refuses any other id, and a call without one,
//!   with `FAILED_PRECONDITION` naming both. A receiver without an id and
//!   without Raft state (a new node about to join as a learner) adopts the
//!   first id it receives, durably, before it hands the call to Raft. A
//!   receiver without an id but with Raft state belongs to a cluster formed
//!   before cluster ids existed: it accepts calls without an id (its own
//!   cluster's) and refuses calls with one.
//! - `TimeoutNow` is not checked: it only makes a follower campaign, and it
//!   is refused unless it comes from the leader the node follows, in its term.
//!
//! See [`admit`] for the decision and `docs/node-format.md` for the file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use parking_lot::RwLock;
use storage::io::FileSystem;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::Status;

use crate::types::NodeId;

/// The gRPC metadata key carrying the sender's cluster id on Raft RPCs.
pub const CLUSTER_ID_HEADER: &str = "x-kv-cluster-id";
/// The identity file's name in a data directory.
pub(crate) const IDENTITY_FILE: &str = "NODE";
/// The identity file's format version this build reads and writes. The
/// `cluster_id` line came later without a new version: builds before it
/// ignore lines they do not know.
pub(crate) const DATA_FORMAT_VERSION: u32 = 1;
/// Hex digits of a cluster id (128 bits).
const CLUSTER_ID_HEX_DIGITS: usize = 32;

/// A cluster's identity: 128 random bits, never zero, written as 32
/// lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClusterId(u128);

impl ClusterId {
    /// A new random id.
    pub fn random() -> ClusterId {
        // Zero is left out so that a zeroed field can never pass for an id.
        ClusterId(fastrand::u128(1..))
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A cluster id that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad cluster id {found:?}: expected {CLUSTER_ID_HEX_DIGITS} hex digits, not all zero")]
pub struct BadClusterId {
    /// What was found.
    pub found: String,
}

impl FromStr for ClusterId {
    type Err = BadClusterId;

    fn from_str(s: &str) -> Result<ClusterId, BadClusterId> {
        let bad = || BadClusterId { found: s.to_string() };
        if s.len() != CLUSTER_ID_HEX_DIGITS || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        match u128::from_str_radix(s, 16) {
            Ok(0) | Err(_) => Err(bad()),
            Ok(id) => Ok(ClusterId(id)),
        }
    }
}

/// The contents of the identity file `DIR/NODE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdentityFile {
    /// The node the directory belongs to.
    pub node_id: NodeId,
    /// The cluster its Raft state belongs to; `None` before it formed or
    /// joined one, and for clusters formed before cluster ids existed.
    pub cluster_id: Option<ClusterId>,
}

impl IdentityFile {
    /// The file's bytes: `key=value` lines.
    pub fn encode(&self) -> String {
        let mut text = format!("format={DATA_FORMAT_VERSION}\nnode_id={}\n", self.node_id);
        if let Some(cluster_id) = self.cluster_id {
            text.push_str(&format!("cluster_id={cluster_id}\n"));
        }
        text
    }

    /// Reads the file's text; unknown keys are ignored (a later build's).
    pub fn decode(text: &str) -> Result<IdentityFile, String> {
        let field = |name: &str| text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix('='));
        if field("format") != Some(DATA_FORMAT_VERSION.to_string().as_str()) {
            return Err(format!(
                "unsupported data format {:?} (this build reads format {DATA_FORMAT_VERSION})",
                field("format")
            ));
        }
        let node_id = field("node_id")
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| format!("{IDENTITY_FILE} names no node id: {:?}", field("node_id")))?;
        let cluster_id = field("cluster_id")
            .map(str::parse)
            .transpose()
            .map_err(|e| format!("{IDENTITY_FILE}: {e}"))?;
        Ok(IdentityFile { node_id, cluster_id })
    }
}

/// The cluster id the identity file of `data_dir` names, if any (for tools
/// and tests; a running node keeps its own in [`ClusterIdentity`]).
pub fn read_from_data_dir(data_dir: &Path) -> Result<Option<ClusterId>, String> {
    let path = data_dir.join(IDENTITY_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(IdentityFile::decode(&text)?.cluster_id)
}

/// What to do with a Raft call, given this node's cluster id, the one the
/// call carries, and whether this node has any Raft state yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Hand the call to Raft.
    Accept,
    /// Make this id the node's own (durably), then hand the call to Raft.
    Adopt(ClusterId),
    /// Refuse the call, for this reason.
    Refuse(String),
}

/// The cluster id check of every Raft call (see the module docs).
pub fn admit(own: Option<ClusterId>, received: Option<ClusterId>, raft_state_empty: bool) -> Admission {
    match (own, received) {
        (Some(own), Some(received)) if own == received => Admission::Accept,
        (Some(own), Some(received)) => Admission::Refuse(format!(
            "this node belongs to cluster {own}, the call came from cluster {received}: \
             a node of another cluster has this node's address as a peer"
        )),
        (Some(own), None) => Admission::Refuse(format!(
            "this node belongs to cluster {own}, the call carries no cluster id: \
             it came from a cluster formed before cluster ids, or from an older build"
        )),
        (None, Some(received)) if raft_state_empty => Admission::Adopt(received),
        (None, Some(received)) => Admission::Refuse(format!(
            "this node belongs to a cluster formed before cluster ids (it has Raft state but no id), \
             the call came from cluster {received}"
        )),
        (None, None) => Admission::Accept,
    }
}

/// A node's cluster id, shared by its Raft transport (which sends it) and
/// its Raft service (which checks it and may adopt one).
#[derive(Debug, Clone)]
pub struct ClusterIdentity {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node_id: NodeId,
    /// The disk and directory the identity file lives in; `None`: kept in
    /// memory only (tests of the transport).
    home: Option<(Arc<dyn FileSystem>, PathBuf)>,
    id: RwLock<Option<ClusterId>>,
    /// Held while an id is adopted, so two calls racing to adopt one make
    /// one decision, and the second sees the first's id.
    adopting: tokio::sync::Mutex<()>,
}

/// Why a cluster id could not be made durable.
#[derive(Debug, thiserror::Error)]
#[error("writing the cluster id {cluster_id} to {path}: {source}")]
pub struct PersistError {
    /// The id.
    pub cluster_id: ClusterId,
    /// The identity file.
    pub path: String,
    /// The disk error.
    #[source]
    pub source: storage::Error,
}

impl ClusterIdentity {
    /// The identity of node `node_id`, whose identity file in `data_dir`
    /// on `fs` names `id` (already read by the caller).
    pub(crate) fn new(
        node_id: NodeId,
        fs: Arc<dyn FileSystem>,
        data_dir: &Path,
        id: Option<ClusterId>,
    ) -> ClusterIdentity {
        ClusterIdentity::build(node_id, Some((fs, data_dir.to_path_buf())), id)
    }

    /// An identity kept in memory only, for tests of the transport.
    pub fn in_memory(node_id: NodeId, id: Option<ClusterId>) -> ClusterIdentity {
        ClusterIdentity::build(node_id, None, id)
    }

    fn build(node_id: NodeId, home: Option<(Arc<dyn FileSystem>, PathBuf)>, id: Option<ClusterId>) -> ClusterIdentity {
        ClusterIdentity {
            inner: Arc::new(Inner {
                node_id,
                home,
                id: RwLock::new(id),
                adopting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The node's cluster id, if it has one.
    pub fn get(&self) -> Option<ClusterId> {
        *self.inner.id.read()
    }

    /// Gives the node `id` for good: writes it to the identity file
    /// (atomically and durably), then uses it. The file is written first so
    /// that no Raft message leaves or is accepted under an id a crash could
    /// forget.
    pub(crate) fn set_durably(&self, id: ClusterId) -> Result<(), PersistError> {
        if let Some((fs, data_dir)) = &self.inner.home {
            let file = IdentityFile {
                node_id: self.inner.node_id,
                cluster_id: Some(id),
            };
            // The disk seam's atomic replace (temp file, fsync, rename,
            // fsync dir): a crash leaves the old file or the new one.
            storage::io::write_atomically(fs.as_ref(), data_dir, IDENTITY_FILE, file.encode().as_bytes()).map_err(
                |source| PersistError {
                    cluster_id: id,
                    path: data_dir.join(IDENTITY_FILE).display().to_string(),
                    source,
                },
            )?;
        }
        *self.inner.id.write() = Some(id);
        Ok(())
    }

    /// Gives a node that forms a new cluster a new random id, unless it
    /// already has one (a node initialized before, or one that adopted an
    /// id). Call it before Raft sends its first message.
    pub(crate) fn ensure_for_new_cluster(&self) -> Result<ClusterId, PersistError> {
        if let Some(id) = self.get() {
            return Ok(id);
        }
        let id = ClusterId::random();
        self.set_durably(id)?;
        tracing::info!(cluster_id = %id, "a new cluster id");
        Ok(id)
    }

    /// Adds this node's id (if it has one) to an outgoing Raft call.
    pub fn stamp(&self, metadata: &mut MetadataMap) {
        if let Some(id) = self.get() {
            // 32 hex digits are always a valid metadata value.
            if let Ok(value) = MetadataValue::try_from(id.to_string()) {
                metadata.insert(CLUSTER_ID_HEADER, value);
            }
        }
    }

    /// Checks an incoming Raft call's cluster id (see [`admit`]); adopts it,
    /// durably, when this node has none and no Raft state
    /// (`raft_state_empty` is asked only then). `Err` is the status to
    /// answer with.
    pub async fn check(&self, metadata: &MetadataMap, raft_state_empty: impl Fn() -> bool) -> Result<(), Status> {
        let received = match metadata.get(CLUSTER_ID_HEADER) {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .map_err(|_| Status::invalid_argument(format!("{CLUSTER_ID_HEADER} is not text")))?
                    .parse::<ClusterId>()
                    .map_err(|e| Status::invalid_argument(format!("{CLUSTER_ID_HEADER}: {e}")))?,
            ),
        };
        // The common case, decided without the adoption lock.
        if let Some(own) = self.get() {
            return to_status(admit(Some(own), received, false));
        }
        let _adopting = self.inner.adopting.lock().await;
        match admit(self.get(), received, raft_state_empty()) {
            Admission::Adopt(id) => {
                // Durable before Raft acts on the call: after a crash the
                // node still refuses other clusters.
                self.set_durably(id)
                    .map_err(|e| Status::internal(format!("cannot adopt the cluster id: {e}")))?;
                tracing::info!(cluster_id = %id, "joined a cluster: adopted its id");
                Ok(())
            }
            other => to_status(other),
        }
    }
}

/// The answer to a call for a decision that adopts nothing.
fn to_status(admission: Admission) -> Result<(), Status> {
    match admission {
        Admission::Accept => Ok(()),
        Admission::Refuse(reason) => {
            tracing::warn!(%reason, "refused a Raft call from another cluster");
            Err(Status::failed_precondition(reason))
        }
        Admission::Adopt(id) => unreachable!("adopting {id} needs the adoption lock"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::io::RealFs;

    fn id(n: u128) -> ClusterId {
        ClusterId(n)
    }

    #[test]
    fn ids_round_trip_through_their_text_and_bad_text_is_refused() {
        // The id travels as text in metadata and in the identity file.
        let random = ClusterId::random();
        assert_eq!(random.to_string().parse::<ClusterId>(), Ok(random));
        assert_eq!(id(1).to_string(), "00000000000000000000000000000001");
        for bad in [
            "",
            "0",
            &"0".repeat(32),
            &"g".repeat(32),
            &"1".repeat(33),
            "+0000000000000000000000000000001",
        ] {
            assert!(bad.parse::<ClusterId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_identity_file_reads_old_files_and_keeps_the_cluster_id() {
        // Files written before cluster ids existed must still open.
        let old = IdentityFile::decode("format=1\nnode_id=3\n").expect("old file");
        assert_eq!(
            old,
            IdentityFile {
                node_id: 3,
                cluster_id: None
            }
        );
        let new = IdentityFile {
            node_id: 3,
            cluster_id: Some(id(0xabc)),
        };
        assert_eq!(IdentityFile::decode(&new.encode()), Ok(new.clone()));
        assert!(
            new.encode().starts_with("format=1\nnode_id=3\n"),
            "old builds read the same first lines"
        );
        assert!(IdentityFile::decode("format=2\nnode_id=3\n").is_err());
        assert!(IdentityFile::decode("format=1\n").is_err());
        assert!(IdentityFile::decode("format=1\nnode_id=3\ncluster_id=zz\n").is_err());
    }

    #[test]
    fn only_a_node_without_state_adopts_and_a_node_with_an_id_takes_only_it() {
        // The whole check: foreign traffic is refused, a new learner joins.
        let (a, b) = (Some(id(1)), Some(id(2)));
        assert_eq!(admit(a, a, false), Admission::Accept);
        let refusal = |admission| match admission {
            Admission::Refuse(reason) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let reason = refusal(admit(a, b, true));
        assert!(
            reason.contains(&id(1).to_string()) && reason.contains(&id(2).to_string()),
            "{reason}"
        );
        refusal(admit(a, None, true));
        assert_eq!(admit(None, b, true), Admission::Adopt(id(2)));
        refusal(admit(None, b, false));
        assert_eq!(
            admit(None, None, false),
            Admission::Accept,
            "a cluster formed before ids"
        );
    }

    #[tokio::test]
    async fn a_node_adopts_the_first_id_durably_and_then_refuses_others() {
        // Adoption must reach the file before Raft acts, and happen once.
        let dir = tempfile::tempdir().expect("tempdir");
        let identity = ClusterIdentity::new(4, RealFs::shared(), dir.path(), None);
        let with = |cluster: ClusterId| {
            let mut metadata = MetadataMap::new();
            ClusterIdentity::in_memory(1, Some(cluster)).stamp(&mut metadata);
            metadata
        };
        identity.check(&with(id(7)), || true).await.expect("adopted");
        let text = std::fs::read_to_string(dir.path().join(IDENTITY_FILE)).expect("identity file");
        assert_eq!(
            IdentityFile::decode(&text),
            Ok(IdentityFile {
                node_id: 4,
                cluster_id: Some(id(7))
            })
        );
        identity.check(&with(id(7)), || false).await.expect("same cluster");
        let status = identity.check(&with(id(8)), || true).await.expect_err("foreign");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let status = identity.check(&MetadataMap::new(), || true).await.expect_err("no id");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    }
}
