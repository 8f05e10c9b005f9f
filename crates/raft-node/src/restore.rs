//! Seeding a new node from a backup (`kv-node --restore FILE --init`).
//!
//! The node ends up as if it had installed the backup as a Raft snapshot:
//! the state machine holds the backup's data at its last log id `L`, with
//! the new cluster's membership; the Raft log is empty, purged up to `L`,
//! with `L` committed and a vote in `L`'s term (a node's term never runs
//! behind its log's). An uninitialized node that joins is sent the same
//! state as a snapshot, so one node restored is enough.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use crate::codec;
use crate::config::NodeConfig;
use crate::log_store::{LogStore, LogStoreOptions};
use crate::node::NodeError;
use crate::state_machine::backup;
use crate::types::{Membership, Node as MemberNode, NodeId, Vote};

/// The Raft log's directory inside a data directory.
pub(crate) const LOG_DIR: &str = "raft-log";
/// Where a restored log is prepared before it is renamed to [`LOG_DIR`].
const LOG_STAGING_DIR: &str = "raft-log.restore";

/// The initial voters of `config`, as members.
pub(crate) fn initial_members(config: &NodeConfig) -> BTreeMap<NodeId, MemberNode> {
    config
        .initial_members
        .iter()
        .map(|(id, addr)| {
            let peer_addr = config.initial_peer_addrs.get(id).cloned();
            (*id, MemberNode::with_peer_addr(addr.clone(), peer_addr))
        })
        .collect()
}

/// Restores the backup at `path` into `config`'s data directory, unless the
/// node already has a Raft log (it was restored or initialized before):
/// then this does nothing and says so.
pub(crate) fn restore(config: &NodeConfig, path: &Path) -> Result<(), NodeError> {
    let data_dir = &config.data_dir;
    let fs = config.fs.as_ref();
    let fail = |reason: String| NodeError::Config(format!("restoring {}: {reason}", path.display()));
    if storage::io::exists(fs, &data_dir.join(LOG_DIR)).map_err(|e| fail(e.to_string()))? {
        tracing::info!("raft state exists; not restoring {}", path.display());
        return Ok(());
    }
    let members = initial_members(config);
    if !members.contains_key(&config.id) {
        return Err(fail(format!("the voters do not include this node ({})", config.id)));
    }
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let membership = codec::membership_to_pb(&Membership::new(vec![voters], members));
    let last = backup::restore_state_machine(path, &data_dir.join("sm"), membership, config.engine_options())
        .map_err(|e| fail(e.to_string()))?;
    let last = codec::log_id_from_pb(&last).map_err(|e| fail(e.to_string()))?;

    // The log is prepared aside and renamed into place last: a crash before
    // the rename leaves no log, so the next start restores again; after it,
    // the node starts from the restored state.
    let staging = data_dir.join(LOG_STAGING_DIR);
    storage::io::remove_all_if_exists(fs, &staging).map_err(|e| fail(e.to_string()))?;
    {
        // No preallocated spare segment: nothing may still be writing into the
        // directory when it is renamed.
        let options = LogStoreOptions {
            preallocate: false,
            ..LogStoreOptions::default()
        };
        let mut log = LogStore::open_on(Arc::clone(&config.fs), &staging, options)?;
        log.continue_after(Vote::new(last.leader_id.term, config.id), last)?;
    }
    fs.rename(&staging, &data_dir.join(LOG_DIR))
        .map_err(|e| fail(format!("{}: {e}", staging.display())))?;
    // Until the data directory is synced a crash may undo the rename: the
    // next start then restores again from the backup.
    storage::io::sync_dir(fs, data_dir).map_err(|e| fail(e.to_string()))?;
    tracing::info!(
        index = last.index,
        term = last.leader_id.term,
        "restored the state machine from {}",
        path.display()
    );
    Ok(())
}
