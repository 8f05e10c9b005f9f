//! A node whose disk fills up stops cleanly: health NOT_SERVING, KV
//! requests UNAVAILABLE with the reason, then it stops serving; the other
//! two keep serving and lose nothing, and once space is freed the node
//! restarts and catches up.
//!
//! Needs root (it mounts a tmpfs as one node's data directory); without
//! the permission it prints why and passes without checking anything.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use proto::kv as api;
use proto::kv::cluster_client::ClusterClient;
use proto::kv::kv_client::KvClient;
use raft_node::testing::{fast_timing, TestCluster, WAIT_TIMEOUT};
use raft_node::RaftTiming;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Size of the tmpfs: two preallocated 64 MiB log segments and room to spare.
const TMPFS_MIB: u64 = 256;
/// Space left free once the filler file is written, in bytes.
const FREE_BYTES_AFTER_FILL: u64 = 8 << 20;
/// Pairs per batch written while filling.
const BATCH_PAIRS: usize = 4;
/// Bytes of each value.
const VALUE_BYTES: usize = 1 << 20;
/// Batches written at most before the full node must have stopped.
const BATCHES_MAX: usize = 40;

/// A tmpfs mounted on a directory, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts, or says why it cannot.
    fn mount(dir: &Path, size_mib: u64) -> Result<Tmpfs, String> {
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
        }
        Ok(Tmpfs { dir: dir.to_path_buf() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(&self.dir).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "umount {} failed ({status:?}); trying a lazy unmount",
                self.dir.display()
            );
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Copies the files and directories under `from` into `to`.
fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Fills the filesystem of `path`'s directory, then gives back `free_bytes`.
fn fill(path: &Path, free_bytes: u64) {
    let mut file = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0xA5u8; 1 << 20];
    let mut written = 0u64;
    while file.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    let _ = file.sync_all();
    file.set_len(written.saturating_sub(free_bytes)).expect("shrink filler");
}

async fn health(addr: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut client = HealthClient::new(channel);
    let reply = client
        .check(HealthCheckRequest {
            service: proto::kv::kv_server::SERVICE_NAME.into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(reply.into_inner().status).ok()
}

async fn digest(cluster: &TestCluster, id: u64) -> api::DigestResponse {
    ClusterClient::connect(format!("http://{}", cluster.addr(id)))
        .await
        .expect("connect")
        .digest(api::DigestRequest {})
        .await
        .expect("digest")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_stops_serving_and_catches_up_after_a_restart() {
    // A full node used to keep answering SERVING with its Raft core dead.
    let timing = RaftTiming {
        snapshot_logs_since_last: 1_000_000,
        ..fast_timing()
    };
    let mut cluster = TestCluster::start_with_timing(3, timing).await;
    let leader = cluster.wait_for_leader(None).await;
    let full = (1..=3).rev().find(|id| *id != leader).expect("a follower");
    // Move the follower's data directory onto a tmpfs.
    cluster.stop(full).await;
    let data_dir = cluster.data_dir(full);
    let moved = data_dir.with_extension("on-disk");
    std::fs::rename(&data_dir, &moved).expect("move the data dir aside");
    std::fs::create_dir(&data_dir).expect("mountpoint");
    let tmpfs = match Tmpfs::mount(&data_dir, TMPFS_MIB) {
        Ok(tmpfs) => tmpfs,
        Err(reason) => {
            eprintln!("SKIPPED: cannot mount a tmpfs ({reason}); run as root to test a full disk");
            std::fs::remove_dir(&data_dir).expect("remove mountpoint");
            cluster.shutdown().await;
            return;
        }
    };
    copy_tree(&moved, &data_dir);
    cluster.restart(full).await;
    let leader = cluster.wait_for_leader(None).await;
    assert_ne!(leader, full, "the restarted follower must not have taken over");
    // Let the log store's preallocation finish before measuring what is free.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let filler = data_dir.join("filler");
    fill(&filler, FREE_BYTES_AFTER_FILL);

    let mut kv = KvClient::connect(format!("http://{}", cluster.addr(leader)))
        .await
        .expect("connect")
        .max_encoding_message_size(64 << 20);
    let full_addr = cluster.addr(full);
    let mut acknowledged: Vec<String> = Vec::new();
    let mut last_index = 0;
    let mut saw_not_serving = false;
    let mut saw_refusal_reason = false;
    let mut stopped = false;
    for batch in 0..BATCHES_MAX {
        let keys: Vec<String> = (0..BATCH_PAIRS).map(|pair| format!("b{batch:03}-p{pair}")).collect();
        let pairs = keys
            .iter()
            .map(|key| api::KeyValue {
                key: key.clone().into_bytes().into(),
                value: vec![batch as u8; VALUE_BYTES].into(),
            })
            .collect();
        let reply = kv
            .batch_put(api::BatchPutRequest { pairs, write_id: None })
            .await
            .expect("the two healthy nodes keep accepting writes");
        last_index = reply.into_inner().applied_index;
        acknowledged.extend(keys);
        match health(&full_addr).await {
            Some(ServingStatus::Serving) => continue,
            Some(ServingStatus::NotServing) => {
                saw_not_serving = true;
                let mut full_kv = KvClient::connect(format!("http://{full_addr}")).await.expect("connect");
                let request = api::GetRequest {
                    key: "b000-p0".into(),
                    consistency: api::Consistency::Stale as i32,
                };
                if let Err(status) = full_kv.get(request).await {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                    saw_refusal_reason = status.message().contains("fatal storage error");
                }
                stopped = true;
                break;
            }
            // Not answering any more: it stopped after its drain.
            _ => {
                stopped = true;
                break;
            }
        }
    }
    assert!(
        stopped,
        "the full node still reports SERVING after {BATCHES_MAX} batches"
    );
    eprintln!(
        "full node stopped after {} batches (NOT_SERVING seen: {saw_not_serving}, reason seen: {saw_refusal_reason})",
        acknowledged.len() / BATCH_PAIRS
    );
    // The full node stops serving after its drain; a few more writes reach the others.
    let deadline = Instant::now() + WAIT_TIMEOUT;
    while health(&full_addr).await.is_some() {
        assert!(Instant::now() < deadline, "the full node never stopped serving");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..10 {
        let key = format!("after-{i}");
        let request = api::PutRequest {
            key: key.clone().into_bytes().into(),
            value: "v".into(),
            write_id: None,
        };
        last_index = kv
            .put(request)
            .await
            .expect("put while a node is down")
            .into_inner()
            .applied_index;
        acknowledged.push(key);
    }

    // Free the space and restart: the node catches up from its peers.
    cluster.stop(full).await;
    std::fs::remove_file(&filler).expect("remove filler");
    cluster.restart(full).await;
    cluster.wait_all_applied(last_index).await;
    let want = digest(&cluster, leader).await;
    for id in 1..=3 {
        let got = digest(&cluster, id).await;
        assert_eq!((got.keys, &got.digest), (want.keys, &want.digest), "node {id}");
    }
    assert_eq!(want.keys, acknowledged.len() as u64, "every acknowledged write is kept");
    assert_eq!(health(&full_addr).await, Some(ServingStatus::Serving));

    for id in 1..=3 {
        cluster.stop(id).await;
    }
    drop(tmpfs);
    cluster.shutdown().await;
}
