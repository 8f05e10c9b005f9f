//! An in-process cluster for tests (feature `testing`): real nodes
//! ([`KvNode`]), real gRPC on 127.0.0.1, real disks in a temporary
//! directory (or one disk per node given by the test, such as a simulated
//! one: [`TestCluster::start_on_disks`]). Shared by this crate's tests and
//! those of the client library and `kvctl`.
//!
//! Helpers panic instead of returning errors: they are for tests, where a
//! panic with a message is the failure report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use storage::io::{FileSystem, RealFs};

use crate::tls::TlsConfig;
use crate::{KvNode, Limits, NodeConfig, RaftTiming, ServeOptions};

/// How long a helper waits for the cluster to reach a state.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Short heartbeats and election timeouts, so failover tests run quickly.
pub fn fast_timing() -> RaftTiming {
    RaftTiming {
        heartbeat_ms: 50,
        election_timeout_ms_min: 250,
        election_timeout_ms_max: 500,
        ..RaftTiming::default()
    }
}

/// A node serving in this process.
struct RunningNode {
    node: KvNode,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// A cluster of nodes running in this process. Node ids start at 1.
pub struct TestCluster {
    dir: tempfile::TempDir,
    addrs: BTreeMap<u64, String>,
    /// Each node's separate peer address; empty unless the cluster was
    /// started with peer ports.
    peer_addrs: BTreeMap<u64, String>,
    peer_ports: bool,
    /// Each node's metrics address; empty unless the cluster was started
    /// with metrics.
    metrics_addrs: BTreeMap<u64, String>,
    metrics: bool,
    running: BTreeMap<u64, RunningNode>,
    timing: RaftTiming,
    /// The backup node 1 restores from when it initializes the cluster.
    restore_from: Option<std::path::PathBuf>,
    /// Each node's TLS settings; a node absent here serves plaintext.
    tls: BTreeMap<u64, TlsConfig>,
    /// Each node's disk; a node absent here is on the real disk.
    disks: BTreeMap<u64, Arc<dyn FileSystem>>,
}

impl TestCluster {
    /// Starts `n` voters with [`fast_timing`] and waits for a leader.
    pub async fn start(n: u64) -> TestCluster {
        TestCluster::start_with_timing(n, fast_timing()).await
    }

    /// Starts `n` voters with `timing` and waits for a leader.
    pub async fn start_with_timing(n: u64, timing: RaftTiming) -> TestCluster {
        let cluster = TestCluster::boot(n, timing, true, false, false).await;
        cluster.wait_for_leader(None).await;
        cluster
    }

    /// Starts `n` nodes that know their peers but form no cluster until
    /// someone calls Initialize.
    pub async fn start_uninitialized(n: u64) -> TestCluster {
        TestCluster::boot(n, fast_timing(), false, false, false).await
    }

    /// Starts `n` voters that serve Raft and membership calls on a
    /// separate peer port each ([`TestCluster::peer_addr`]), and waits for
    /// a leader.
    pub async fn start_with_peer_ports(n: u64) -> TestCluster {
        let cluster = TestCluster::boot(n, fast_timing(), true, true, false).await;
        cluster.wait_for_leader(None).await;
        cluster
    }

    /// Like [`TestCluster::start_uninitialized`], with a separate peer
    /// port per node.
    pub async fn start_uninitialized_with_peer_ports(n: u64) -> TestCluster {
        TestCluster::boot(n, fast_timing(), false, true, false).await
    }

    /// Starts `n` voters that serve Prometheus metrics each
    /// ([`TestCluster::metrics_addr`]), and waits for a leader.
    pub async fn start_with_metrics(n: u64) -> TestCluster {
        let cluster = TestCluster::boot(n, fast_timing(), true, false, true).await;
        cluster.wait_for_leader(None).await;
        cluster
    }

    /// Starts `n` voters whose cluster node 1 forms from the backup at
    /// `backup` (the others start empty), and waits for a leader.
    pub async fn start_restored(n: u64, backup: &Path) -> TestCluster {
        let mut cluster = TestCluster::new(fast_timing(), false, false);
        cluster.restore_from = Some(backup.to_path_buf());
        cluster.boot_nodes(n, true).await;
        cluster.wait_for_leader(None).await;
        cluster
    }

    /// Starts `n` voters with separate peer ports, each serving TLS with
    /// `tls(id)`, and waits for a leader.
    pub async fn start_with_tls(n: u64, tls: impl Fn(u64) -> TlsConfig) -> TestCluster {
        let mut cluster = TestCluster::new(fast_timing(), true, false);
        cluster.tls = (1..=n).map(|id| (id, tls(id))).collect();
        cluster.boot_nodes(n, true).await;
        cluster.wait_for_leader(None).await;
        cluster
    }

    /// Starts one voter per disk of `disks` (node `i + 1` on `disks[i]`),
    /// and waits for a leader. With a simulated disk, a test cuts a node's
    /// power by crashing its disk and calling [`TestCluster::kill`], and
    /// brings it back with [`TestCluster::restart_on`].
    pub async fn start_on_disks(disks: Vec<Arc<dyn FileSystem>>, timing: RaftTiming) -> TestCluster {
        let mut cluster = TestCluster::new(timing, false, false);
        cluster.disks = (1..).zip(disks).collect();
        let n = cluster.disks.len() as u64;
        cluster.boot_nodes(n, true).await;
        cluster.wait_for_leader(None).await;
        cluster
    }

    async fn boot(n: u64, timing: RaftTiming, initialize: bool, peer_ports: bool, metrics: bool) -> TestCluster {
        let mut cluster = TestCluster::new(timing, peer_ports, metrics);
        cluster.boot_nodes(n, initialize).await;
        cluster
    }

    fn new(timing: RaftTiming, peer_ports: bool, metrics: bool) -> TestCluster {
        TestCluster {
            dir: tempfile::tempdir().expect("tempdir"),
            addrs: BTreeMap::new(),
            peer_addrs: BTreeMap::new(),
            peer_ports,
            metrics_addrs: BTreeMap::new(),
            metrics,
            running: BTreeMap::new(),
            timing,
            restore_from: None,
            tls: BTreeMap::new(),
            disks: BTreeMap::new(),
        }
    }

    async fn boot_nodes(&mut self, n: u64, initialize: bool) {
        let cluster = self;
        let mut listeners = BTreeMap::new();
        for id in 1..=n {
            let listeners_of_id = cluster.bind(id).await;
            listeners.insert(id, listeners_of_id);
        }
        let members = cluster.addrs.clone();
        for (id, (listener, peer_listener)) in listeners {
            cluster
                .launch(id, listener, peer_listener, members.clone(), initialize && id == 1)
                .await;
        }
    }

    /// Binds node `id`'s client port (and peer port, with peer ports) on
    /// free ports and records their addresses.
    async fn bind(&mut self, id: u64) -> (tokio::net::TcpListener, Option<tokio::net::TcpListener>) {
        let listener = bind_free_port().await;
        self.addrs.insert(id, listener.local_addr().expect("addr").to_string());
        if !self.peer_ports {
            return (listener, None);
        }
        let peer_listener = bind_free_port().await;
        self.peer_addrs
            .insert(id, peer_listener.local_addr().expect("addr").to_string());
        (listener, Some(peer_listener))
    }

    /// Like [`TestCluster::start_extra`], serving TLS with `tls`.
    pub async fn start_extra_with_tls(&mut self, id: u64, tls: TlsConfig) -> String {
        self.tls.insert(id, tls);
        self.start_extra(id).await
    }

    /// Starts node `id` outside the cluster (to be added as a learner);
    /// returns its address.
    pub async fn start_extra(&mut self, id: u64) -> String {
        let (listener, peer_listener) = self.bind(id).await;
        self.launch(id, listener, peer_listener, BTreeMap::new(), false).await;
        self.addr(id)
    }

    async fn launch(
        &mut self,
        id: u64,
        listener: tokio::net::TcpListener,
        peer_listener: Option<tokio::net::TcpListener>,
        initial_members: BTreeMap<u64, String>,
        initialize: bool,
    ) {
        let config = NodeConfig {
            id,
            advertise_addr: self.addrs[&id].clone(),
            peer_advertise_addr: self.peer_addrs.get(&id).cloned(),
            data_dir: self.data_dir(id),
            initial_peer_addrs: self
                .peer_addrs
                .iter()
                .filter(|(id, _)| initial_members.contains_key(id))
                .map(|(id, addr)| (*id, addr.clone()))
                .collect(),
            initial_members,
            initialize,
            restore_from: self.restore_from.clone(),
            timing: self.timing.clone(),
            engine: storage::Options {
                memtable_bytes_max: 256 * 1024,
                ..storage::Options::default()
            },
            limits: Limits::default(),
            tls: self.tls.get(&id).cloned(),
            fs: self.disk(id),
        };
        // The metrics port, kept across restarts like the others.
        let metrics_listener = match (self.metrics, self.metrics_addrs.get(&id)) {
            (false, _) => None,
            (true, Some(addr)) => Some(bind_retrying(addr).await),
            (true, None) => {
                let listener = bind_free_port().await;
                self.metrics_addrs
                    .insert(id, listener.local_addr().expect("addr").to_string());
                Some(listener)
            }
        };
        let options = ServeOptions::default()
            .with_peer_listener(peer_listener)
            .with_metrics_listener(metrics_listener);
        let node = KvNode::start(config).await.expect("node starts");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = node.clone();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(error) = serving.serve_with_options(listener, options, shutdown).await {
                eprintln!("node {id} stopped with {error}");
            }
        });
        self.running.insert(id, RunningNode { node, stop, task });
    }

    /// The address of node `id`.
    pub fn addr(&self, id: u64) -> String {
        self.addrs[&id].clone()
    }

    /// The address node `id` serves Prometheus metrics at (over HTTP, at
    /// `/metrics`); the cluster must have been started with
    /// [`TestCluster::start_with_metrics`].
    pub fn metrics_addr(&self, id: u64) -> String {
        self.metrics_addrs
            .get(&id)
            .unwrap_or_else(|| panic!("node {id} serves no metrics: start the cluster with start_with_metrics"))
            .clone()
    }

    /// The peer address of node `id`: its separate peer port, or its
    /// address when the cluster has no peer ports.
    pub fn peer_addr(&self, id: u64) -> String {
        self.peer_addrs.get(&id).unwrap_or(&self.addrs[&id]).clone()
    }

    /// The addresses of every node started, in id order.
    pub fn addrs(&self) -> Vec<String> {
        self.addrs.values().cloned().collect()
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    /// `message` as a Raft call from node `id`'s cluster: it carries the
    /// cluster id from that node's identity file.
    pub fn raft_request<T>(&self, id: u64, message: T) -> tonic::Request<T> {
        let cluster_id = crate::cluster_id::read_from_data_dir(&self.data_dir(id))
            .expect("identity file")
            .expect("node has a cluster id");
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(
            crate::cluster_id::CLUSTER_ID_HEADER,
            cluster_id.to_string().parse().expect("hex is valid metadata"),
        );
        request
    }

    /// The disk node `id` runs on.
    pub fn disk(&self, id: u64) -> Arc<dyn FileSystem> {
        self.disks.get(&id).map_or_else(RealFs::shared, Arc::clone)
    }

    /// Stops nodes `ids` together without a handoff, as a power cut stops
    /// them (the test cuts their disks' power first, so they write nothing
    /// more): their Raft stops at once, then their servers close their
    /// connections and ports. Waits for at most [`WAIT_TIMEOUT`]. The
    /// nodes no longer count as running.
    pub async fn kill(&mut self, ids: &[u64]) {
        let stopping: Vec<(u64, RunningNode)> = ids
            .iter()
            .map(|id| (*id, self.running.remove(id).expect("node is running")))
            .collect();
        // Raft first: from here the nodes neither vote, nor replicate, nor
        // answer a client. The error of a Raft that already stopped on its
        // failing disk is the expected one.
        for (_, running) in &stopping {
            let _ = tokio::time::timeout(WAIT_TIMEOUT, running.node.raft().shutdown()).await;
        }
        let mut tasks = Vec::new();
        for (id, running) in stopping {
            let _ = running.stop.send(());
            tasks.push((id, running.task));
        }
        for (id, mut task) in tasks {
            if tokio::time::timeout(WAIT_TIMEOUT, &mut task).await.is_err() {
                task.abort();
                panic!("node {id} did not stop within {WAIT_TIMEOUT:?}");
            }
        }
    }

    /// Restarts stopped node `id` on its address, with `disk` as its disk
    /// from now on (the disk a power cut left).
    pub async fn restart_on(&mut self, id: u64, disk: Arc<dyn FileSystem>) {
        self.disks.insert(id, disk);
        self.restart(id).await;
    }

    /// Stops node `id` (gracefully: the server and Raft shut down).
    pub async fn stop(&mut self, id: u64) {
        self.begin_stop(id).await.expect("serve task");
    }

    /// Starts a graceful stop of node `id` (a leader hands leadership over,
    /// then the node drains) and returns at once; the returned task ends
    /// when the node has stopped. The node no longer counts as running.
    pub fn begin_stop(&mut self, id: u64) -> tokio::task::JoinHandle<()> {
        let running = self.running.remove(&id).expect("node is running");
        let _ = running.stop.send(());
        running.task
    }

    /// The Raft handle of running node `id`.
    pub fn raft(&self, id: u64) -> &crate::types::Raft {
        self.running[&id].node.raft()
    }

    /// Running node `id`.
    pub fn node(&self, id: u64) -> &KvNode {
        &self.running[&id].node
    }

    /// Restarts stopped node `id` on its data directory and address.
    pub async fn restart(&mut self, id: u64) {
        let addr = self.addr(id);
        let listener = bind_retrying(&addr).await;
        let peer_listener = match self.peer_addrs.get(&id).cloned() {
            Some(peer_addr) => Some(bind_retrying(&peer_addr).await),
            None => None,
        };
        let members = self.addrs.clone();
        self.launch(id, listener, peer_listener, members, false).await;
    }

    /// Stops every running node.
    pub async fn shutdown(mut self) {
        let ids: Vec<u64> = self.running.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }

    /// Waits until the running nodes agree on a leader other than `not`.
    pub async fn wait_for_leader(&self, not: Option<u64>) -> u64 {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let leaders: Vec<Option<u64>> = self
                .running
                .values()
                .map(|r| r.node.raft().metrics().borrow().current_leader)
                .collect();
            if let Some(Some(leader)) = leaders.first() {
                if leaders.iter().all(|l| *l == Some(*leader))
                    && Some(*leader) != not
                    && self.running.contains_key(leader)
                {
                    return *leader;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The index running node `id` has applied up to (0: nothing yet).
    pub fn applied(&self, id: u64) -> u64 {
        self.running[&id]
            .node
            .raft()
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index)
    }

    /// Waits until running node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64) {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let applied = self.applied(id);
            if applied >= index {
                return;
            }
            assert!(Instant::now() < deadline, "node {id} applied {applied} < {index}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until running node `id` has purged its log up to at least
    /// `index` (after a snapshot): a node that joins later can then only
    /// catch up from a snapshot.
    pub async fn wait_purged(&self, id: u64, index: u64) {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let purged = self.running[&id].node.raft().metrics().borrow().purged.map(|l| l.index);
            if purged.is_some_and(|purged| purged >= index) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} purged its log up to {purged:?} < {index}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn wait_all_applied(&self, index: u64) {
        for &id in self.running.keys() {
            self.wait_applied(id, index).await;
        }
    }
}

/// Binds a free 127.0.0.1 port below the kernel's ephemeral range (32768
/// and up), so that no outgoing connection can take a stopped node's port
/// before it restarts on it.
pub async fn bind_free_port() -> tokio::net::TcpListener {
    // Never the same port twice in one process: tests run side by side, and
    // a port a stopped node gave up, taken by another test's node, would
    // receive the first cluster's Raft traffic (messages carry no cluster
    // identity), mixing the two clusters' logs.
    static HANDED_OUT: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    for _ in 0..1000 {
        let port = 20_000 + fastrand::u16(..12_000);
        let fresh = HANDED_OUT.lock().map(|mut used| used.insert(port)).unwrap_or(false);
        if !fresh {
            continue;
        }
        if let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            return listener;
        }
    }
    panic!("no free port in 20000..32000");
}

/// Binds `addr` again, waiting while the port is still held.
async fn bind_retrying(addr: &str) -> tokio::net::TcpListener {
    for _ in 0..100 {
        if let Ok(listener) = tokio::net::TcpListener::bind(addr).await {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot rebind {addr}");
}

/// Runs `call` until it succeeds, retrying while the node is briefly
/// unavailable (an election or a slow heartbeat round under load), for at
/// most [`WAIT_TIMEOUT`]; any other error panics.
pub async fn retry_unavailable<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        match call().await {
            Ok(value) => return value,
            Err(status) if status.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("call failed: {status:?}"),
        }
    }
}

/// A throwaway certificate authority for TLS tests.
pub struct TestCa {
    /// The CA's certificate, in PEM.
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate for 127.0.0.1 and localhost and its key, in PEM.
pub struct TestLeaf {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for 127.0.0.1 and localhost that this CA signed,
    /// usable by servers and clients.
    pub fn leaf(&self, name: &str) -> TestLeaf {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        TestLeaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Node `id`'s TLS settings: a certificate from this CA, peers held to it.
    pub fn node(&self, id: u64) -> TlsConfig {
        let leaf = self.leaf(&format!("node {id}"));
        TlsConfig {
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
            ca_pem: Some(self.pem.clone()),
        }
    }
}
