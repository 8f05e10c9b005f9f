//! Backups and restores: a backup taken while writes go on holds exactly
//! the writes up to its log position, reads back whole, and seeds a new
//! cluster that serves the same keyspace.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use proto::kv as api;
use proto::kv::cluster_client::ClusterClient;
use proto::kv::kv_client::KvClient;
use raft_node::state_machine::backup;
use raft_node::testing::{retry_unavailable, TestCluster};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Cluster tests run one at a time: three nodes per test already load the
/// two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn cluster_client(addr: &str) -> ClusterClient<Channel> {
    ClusterClient::connect(format!("http://{addr}")).await.expect("connect")
}

async fn kv_client(addr: &str) -> KvClient<Channel> {
    KvClient::connect(format!("http://{addr}")).await.expect("connect")
}

/// Streams a backup from `addr` into `path`; returns the first message's
/// header fields (total bytes, index).
async fn save_backup(addr: &str, path: &Path) -> (u64, u64) {
    // The backup starts with a read barrier, which a leader whose followers
    // answer late (a loaded machine) refuses as UNAVAILABLE: retry, as a
    // client would.
    let client = cluster_client(addr).await;
    let mut stream = retry_unavailable(|| {
        let mut client = client.clone();
        async move { client.backup(api::BackupRequest {}).await }
    })
    .await
    .into_inner();
    let mut bytes = Vec::new();
    let mut header = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("backup chunk");
        header.get_or_insert((chunk.total_bytes, chunk.index));
        bytes.extend_from_slice(&chunk.data);
    }
    let (total_bytes, index) = header.expect("at least one chunk");
    assert_eq!(
        bytes.len() as u64,
        total_bytes,
        "the stream must be as long as announced"
    );
    std::fs::write(path, bytes).expect("write the backup");
    (total_bytes, index)
}

async fn digest(addr: &str) -> api::DigestResponse {
    cluster_client(addr)
        .await
        .digest(api::DigestRequest {})
        .await
        .expect("digest")
        .into_inner()
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> u64 {
    kv.put(api::PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        write_id: None,
    })
    .await
    .expect("put")
    .into_inner()
    .applied_index
}

async fn get(kv: &mut KvClient<Channel>, key: &str) -> Option<String> {
    let reply = kv
        .get(api::GetRequest {
            key: key.as_bytes().to_vec().into(),
            consistency: api::Consistency::Linearizable as i32,
        })
        .await
        .expect("get")
        .into_inner();
    reply.found.then(|| String::from_utf8_lossy(&reply.value).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_holds_exactly_the_writes_up_to_its_index_and_restores_into_a_new_cluster() {
    // A backup is a consistent cut: every write at or below its index, none above; a new cluster serves it.
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let source = TestCluster::start(3).await;
    let leader = source.wait_for_leader(None).await;
    let leader_addr = source.addr(leader);

    // A writer puts fresh keys one after another while the backup is taken.
    let writer = {
        let addr = leader_addr.clone();
        tokio::spawn(async move {
            let mut kv = kv_client(&addr).await;
            let mut written = BTreeMap::new();
            for i in 0..400 {
                let (key, value) = (format!("key-{i:04}"), format!("value-{i}"));
                let index = put(&mut kv, &key, &value).await;
                written.insert(key, (value, index));
            }
            written
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = dir.path().join("during.backup");
    let (_, backup_index) = save_backup(&leader_addr, &during).await;
    let written = writer.await.expect("writer");
    assert!(
        written.values().any(|&(_, i)| i <= backup_index) && written.values().any(|&(_, i)| i > backup_index),
        "the backup (index {backup_index}) should fall within the writes"
    );

    let summary = backup::inspect(&during, dir.path()).expect("the backup reads back whole");
    assert_eq!(summary.index, backup_index);
    assert_eq!(summary.voters, vec![1, 2, 3]);

    // A second backup after the writes: the whole keyspace, to compare digests.
    let after = dir.path().join("after.backup");
    save_backup(&leader_addr, &after).await;
    let source_digest = digest(&leader_addr).await;
    source.shutdown().await;

    let restored = TestCluster::start_restored(3, &during).await;
    let leader = restored.wait_for_leader(None).await;
    // The nodes that started empty receive the restored state as a snapshot.
    restored.wait_all_applied(backup_index).await;
    let mut kv = kv_client(&restored.addr(leader)).await;
    for (key, (value, index)) in &written {
        let expected = (*index <= backup_index).then(|| value.clone());
        assert_eq!(
            get(&mut kv, key).await,
            expected,
            "{key} (written at {index}, backup at {backup_index})"
        );
    }
    // The new cluster takes writes after the restored state, on every node.
    let index = put(&mut kv, "after-restore", "yes").await;
    assert!(index > backup_index, "the restored log continues after the backup");
    restored.wait_all_applied(index).await;
    let digests: Vec<_> = node_digests(&restored).await;
    assert!(
        digests.windows(2).all(|pair| pair[0] == pair[1]),
        "every node of the restored cluster holds the same keyspace: {digests:?}"
    );
    restored.shutdown().await;

    let restored = TestCluster::start_restored(3, &after).await;
    let leader = restored.wait_for_leader(None).await;
    restored.wait_all_applied(source_digest.applied_index).await;
    let restored_digest = digest(&restored.addr(leader)).await;
    assert_eq!(
        (restored_digest.keys, restored_digest.digest),
        (source_digest.keys, source_digest.digest),
        "a cluster restored from a full backup has the source's keyspace"
    );
    restored.shutdown().await;
}

async fn node_digests(cluster: &TestCluster) -> Vec<(u64, String)> {
    let mut digests = Vec::new();
    for id in 1..=3 {
        let d = digest(&cluster.addr(id)).await;
        digests.push((d.keys, d.digest));
    }
    digests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_backup_is_refused() {
    // One flipped byte anywhere must be caught before anything is served from the file.
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let source = TestCluster::start(1).await;
    let mut kv = kv_client(&source.addr(1)).await;
    for i in 0..50 {
        put(&mut kv, &format!("k{i}"), "v").await;
    }
    let path = dir.path().join("b.backup");
    let (total, _) = save_backup(&source.addr(1), &path).await;
    source.shutdown().await;
    let mut bytes = std::fs::read(&path).expect("read");
    let at = (total / 2) as usize;
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).expect("write");
    let error = backup::inspect(&path, dir.path()).expect_err("a damaged backup is refused");
    assert!(error.to_string().contains("corrupt"), "{error}");
}
