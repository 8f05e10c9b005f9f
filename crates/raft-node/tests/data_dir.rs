//! A data directory is used by one node at a time: a second node, in this
//! process or another, is refused before it reads or changes anything.

use std::collections::BTreeMap;
use std::path::Path;

use raft_node::{KvNode, Limits, NodeConfig, NodeError, RaftTiming};

fn config(data_dir: &Path) -> NodeConfig {
    NodeConfig {
        id: 1,
        advertise_addr: "127.0.0.1:1".into(),
        peer_advertise_addr: None,
        data_dir: data_dir.to_path_buf(),
        initial_members: BTreeMap::new(),
        initial_peer_addrs: BTreeMap::new(),
        initialize: false,
        restore_from: None,
        timing: RaftTiming::default(),
        engine: storage::Options::default(),
        limits: Limits::default(),
        tls: None,
        fs: storage::io::RealFs::shared(),
    }
}

#[tokio::test]
async fn a_second_node_on_a_locked_data_directory_is_refused_in_process() {
    // Two nodes on one directory would truncate each other's Raft log.
    let dir = tempfile::tempdir().expect("tempdir");
    let first = KvNode::start(config(dir.path())).await.expect("first node starts");
    let error = KvNode::start(config(dir.path()))
        .await
        .err()
        .expect("second node refused");
    assert!(matches!(error, NodeError::DataDirLocked { .. }), "{error:?}");
    assert!(error.to_string().contains(&dir.path().display().to_string()), "{error}");
    first.raft().shutdown().await.expect("raft shuts down");
    drop(first);
    // Tasks of the first node (an apply on the blocking pool, a snapshot
    // check) may hold its engine a moment after shutdown returns; the lock
    // goes with the last of them, so allow a few seconds.
    let mut again = KvNode::start(config(dir.path())).await;
    for _ in 0..50 {
        if !matches!(
            again,
            Err(NodeError::DataDirLocked { .. }) | Err(NodeError::StateMachine(_))
        ) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        again = KvNode::start(config(dir.path())).await;
    }
    let again = again.expect("starts once the first is gone");
    again.raft().shutdown().await.expect("raft shuts down");
}

#[tokio::test]
async fn a_second_kv_node_process_exits_with_an_error_naming_the_directory() {
    // An operator who starts a node twice must learn why the second one quit.
    let dir = tempfile::tempdir().expect("tempdir");
    let first = KvNode::start(config(dir.path())).await.expect("first node starts");
    let data_dir = dir.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kv-node"))
            .args(["--id", "1", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("KV_LOG", "warn")
            .output()
    })
    .await
    .expect("join")
    .expect("run kv-node");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the second process must fail: {stderr}");
    assert!(
        stderr.contains("is in use") && stderr.contains(&dir.path().display().to_string()),
        "{stderr}"
    );
    first.raft().shutdown().await.expect("raft shuts down");
}
