//! Real `kv-node` processes on 127.0.0.1, their faults, and their cleanup.
//!
//! Node `i` (ids from 1) listens on a real port `R_i` (clients use it) and
//! advertises the port `P_i` of its [`Proxy`] (peers use it). Every child
//! is SIGKILLed and reaped when the [`Cluster`] is dropped, test failure or
//! not. The run directory (node data, node logs, history) is removed only
//! when [`Cluster::success`] was called; otherwise it is kept and printed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cluster_client::Client;

use crate::proxy::{LinkMode, Links, NodeId, Proxy};
use crate::tmpfs::Tmpfs;

/// How long a cluster may take to elect a leader with every voter in it.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Poll period while waiting for a cluster state.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Deadline of one admin request of the harness.
const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of one health check, connecting included.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// What a node's gRPC health service says about the node as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// `SERVING`.
    Serving,
    /// Any other status (`NOT_SERVING` after a fatal storage error).
    NotServing,
    /// No answer: the node is down, frozen or not listening.
    NoAnswer,
}

/// Cluster size and Raft timing.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Voters at start (3 or 5).
    pub nodes: u64,
    /// `--heartbeat-ms`.
    pub heartbeat_ms: u64,
    /// `--election-timeout-ms-min`.
    pub election_timeout_ms_min: u64,
    /// `--election-timeout-ms-max`.
    pub election_timeout_ms_max: u64,
    /// `--snapshot-logs`.
    pub snapshot_logs: u64,
    /// `--logs-kept-after-snapshot`.
    pub logs_kept_after_snapshot: u64,
    /// Node slots made ready (ports, proxy) but neither started nor in the
    /// membership: they join later through [`Cluster::add_member`]. Their
    /// client ports are among [`Cluster::endpoints`] from the start, so the
    /// workload's clients reach them once they run.
    pub spares: u64,
    /// A tmpfs of this many MiB mounted as the data directory of node
    /// `.0` before it first starts (unmounted when the cluster is dropped):
    /// a disk that can fill. Mounting needs root; without it
    /// [`Cluster::start`] fails rather than running without the fault.
    pub tmpfs: Option<(NodeId, u64)>,
}

impl ClusterOptions {
    /// `nodes` voters with the node's default timing: heartbeat 100 ms,
    /// election 200-400 ms (so failover 600-800 ms: openraft waits out the
    /// old leader's lease first). The heartbeat is not shorter: openraft uses the heartbeat period as the
    /// deadline of every AppendEntries, which includes the follower's fsync;
    /// at 50 ms a loaded shared disk makes replication time out over and
    /// over (seen here: linearizable reads failing with "cannot reach a
    /// quorum" while two of three nodes were up).
    pub fn fast(nodes: u64) -> ClusterOptions {
        ClusterOptions {
            nodes,
            heartbeat_ms: 100,
            election_timeout_ms_min: 200,
            election_timeout_ms_max: 400,
            snapshot_logs: 50_000,
            logs_kept_after_snapshot: 1000,
            spares: 0,
            tmpfs: None,
        }
    }
}

/// The `kv-node` binary: `KV_NODE_BIN`, or the workspace's release build.
pub fn node_binary() -> Result<PathBuf> {
    let path = match std::env::var_os("KV_NODE_BIN") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/kv-node"),
    };
    if !path.is_file() {
        bail!(
            "kv-node binary not found at {}: run `cargo build --release -p raft-node` first \
             (or set KV_NODE_BIN)",
            path.display()
        );
    }
    Ok(path)
}

/// One node process and its addresses.
#[derive(Debug)]
pub struct NodeProcess {
    /// Raft node id (from 1).
    pub id: NodeId,
    /// The real port: clients' endpoint.
    pub client_addr: SocketAddr,
    /// The proxy port: the advertised address peers dial.
    pub peer_addr: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The log file (appended across restarts).
    pub log_path: PathBuf,
    /// Whether the node is in the intended membership (a voter, or about
    /// to become one). Spares and removed nodes are not, and are neither
    /// restarted by [`Cluster::heal_and_restart_all`] nor checked.
    pub member: bool,
    child: Option<Child>,
    frozen: bool,
    _proxy: Proxy,
}

impl NodeProcess {
    /// Whether the process is running (possibly frozen).
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// The pid, when running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A running cluster of `kv-node` processes behind fault-injecting proxies.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, index `i` holds id `i + 1`.
    pub nodes: Vec<NodeProcess>,
    /// The modes of the links between nodes.
    pub links: Arc<Links>,
    /// The run directory (data, logs, history).
    pub dir: PathBuf,
    /// The options the cluster was started with.
    pub options: ClusterOptions,
    binary: PathBuf,
    admin: Client,
    succeeded: bool,
    /// Mounted data directories; unmounted after every node was killed.
    mounts: Vec<Tmpfs>,
}

impl Cluster {
    /// Starts `options.nodes` nodes in a new run directory named after
    /// `name`, forms the cluster, and waits for a leader.
    pub async fn start(name: &str, options: ClusterOptions) -> Result<Cluster> {
        let binary = node_binary()?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("chaos-{name}-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let links = Arc::new(Links::default());
        let mut nodes = Vec::new();
        for id in 1..=options.nodes + options.spares {
            let proxy_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let client_addr = free_port()?;
            let proxy = Proxy::start(id, proxy_listener, client_addr, links.clone())?;
            nodes.push(NodeProcess {
                id,
                client_addr,
                peer_addr: proxy.listen,
                data_dir: dir.join(format!("node{id}")),
                log_path: dir.join(format!("node{id}.log")),
                member: id <= options.nodes,
                child: None,
                frozen: false,
                _proxy: proxy,
            });
        }
        let endpoints: Vec<String> = nodes.iter().map(|n| n.client_addr.to_string()).collect();
        let admin = Client::builder(endpoints)
            .request_timeout(ADMIN_REQUEST_TIMEOUT)
            .attempt_timeout(Duration::from_secs(1))
            .build()?;
        let mut cluster = Cluster {
            nodes,
            links,
            dir,
            options,
            binary,
            admin,
            succeeded: false,
            mounts: Vec::new(),
        };
        if let Some((id, size_mib)) = cluster.options.tmpfs {
            let index = cluster.index_of(id);
            let data_dir = cluster.nodes[index].data_dir.clone();
            std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
            cluster.mounts.push(Tmpfs::mount(&data_dir, size_mib)?);
        }
        for index in 0..cluster.nodes.len() {
            if cluster.nodes[index].member {
                cluster.spawn(index, index == 0)?;
            }
        }
        cluster.wait_ready(CLUSTER_READY_TIMEOUT).await?;
        Ok(cluster)
    }

    /// Client endpoints (real ports) of every node slot, spares included.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.client_addr.to_string()).collect()
    }

    /// Ids of the nodes in the intended membership.
    pub fn members(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|n| n.member).map(|n| n.id).collect()
    }

    /// Client endpoints of the nodes in the intended membership.
    pub fn member_endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.member)
            .map(|n| n.client_addr.to_string())
            .collect()
    }

    /// The client endpoint of node `id`.
    pub fn endpoint(&self, id: NodeId) -> String {
        self.nodes[self.index_of(id)].client_addr.to_string()
    }

    /// The index of node `id`.
    pub fn index_of(&self, id: NodeId) -> usize {
        let index = usize::try_from(id).unwrap_or(usize::MAX).wrapping_sub(1);
        assert!(index < self.nodes.len(), "no node {id}");
        index
    }

    /// Marks the run as passed: the run directory is removed on drop.
    pub fn success(&mut self) {
        self.succeeded = true;
    }

    /// Starts node `index` on its data directory (it must not be running).
    fn spawn(&mut self, index: usize, init: bool) -> Result<()> {
        // Only `--init` reads the peers: the initial members.
        let peers: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.member)
            .map(|n| format!("{}={}", n.id, n.peer_addr))
            .collect();
        let options = self.options.clone();
        let node = &mut self.nodes[index];
        assert!(node.child.is_none(), "node {} is already running", node.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .with_context(|| format!("opening {}", node.log_path.display()))?;
        let mut command = Command::new(&self.binary);
        command
            .arg("--id")
            .arg(node.id.to_string())
            .arg("--listen")
            .arg(node.client_addr.to_string())
            .arg("--advertise")
            .arg(node.peer_addr.to_string())
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--peers")
            .arg(peers.join(","))
            .arg("--heartbeat-ms")
            .arg(options.heartbeat_ms.to_string())
            .arg("--election-timeout-ms-min")
            .arg(options.election_timeout_ms_min.to_string())
            .arg("--election-timeout-ms-max")
            .arg(options.election_timeout_ms_max.to_string())
            .arg("--snapshot-logs")
            .arg(options.snapshot_logs.to_string())
            .arg("--logs-kept-after-snapshot")
            .arg(options.logs_kept_after_snapshot.to_string())
            .arg("--memtable-mb")
            .arg("4")
            .arg("--block-cache-mb")
            .arg("8")
            // The workload's padded values (see `workload::value`) go to
            // the engine's blob files, so crashes and snapshot transfers
            // meet them too.
            .arg("--blob-value-min-bytes")
            .arg(crate::workload::PADDED_VALUE_BYTES.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if init {
            command.arg("--init");
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.links.set_pid(node.id, Some(child.id()));
        node.child = Some(child);
        node.frozen = false;
        Ok(())
    }

    /// Restarts node `index` on its existing data (never with `--init`).
    pub fn restart(&mut self, index: usize) -> Result<()> {
        self.spawn(index, false)
    }

    /// SIGKILLs node `index` and reaps it. A node that is down stays down.
    pub fn kill(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.frozen = false;
        self.links.set_pid(node.id, None);
    }

    /// Waits up to `timeout` for node `index` to exit on its own (as a node
    /// does after a fatal storage error); returns its exit status, or
    /// `None` if it still runs. An exited node counts as down.
    pub async fn wait_exit(&mut self, index: usize, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            let node = &mut self.nodes[index];
            let Some(child) = node.child.as_mut() else {
                bail!("node {} is not running", node.id);
            };
            if let Some(status) = child.try_wait()? {
                node.child = None;
                node.frozen = false;
                self.links.set_pid(node.id, None);
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Cuts node `id` off from every other node: every link to and from
    /// it drops. Clients still reach it.
    pub fn isolate(&self, id: NodeId) {
        for other in self.nodes.iter().map(|n| n.id).filter(|other| *other != id) {
            self.links.set_both(id, other, LinkMode::Drop);
        }
    }

    /// SIGSTOPs node `index`.
    pub fn freeze(&mut self, index: usize) -> Result<()> {
        self.signal(index, "-STOP")?;
        self.nodes[index].frozen = true;
        Ok(())
    }

    /// SIGCONTs node `index`.
    pub fn thaw(&mut self, index: usize) -> Result<()> {
        self.signal(index, "-CONT")?;
        self.nodes[index].frozen = false;
        Ok(())
    }

    fn signal(&self, index: usize, signal: &str) -> Result<()> {
        let pid = self.nodes[index]
            .pid()
            .ok_or_else(|| anyhow!("node {} is down", index + 1))?;
        let status = Command::new("kill").arg(signal).arg(pid.to_string()).status()?;
        if !status.success() {
            bail!("kill {signal} {pid} failed: {status}");
        }
        Ok(())
    }

    /// Thaws frozen nodes, heals every link and starts every node that is down.
    pub fn heal_and_restart_all(&mut self) -> Result<()> {
        self.links.heal();
        for index in 0..self.nodes.len() {
            if self.nodes[index].frozen {
                self.thaw(index)?;
            }
            if self.nodes[index].member && !self.nodes[index].is_up() {
                self.restart(index)?;
            }
        }
        Ok(())
    }

    /// Node `index`: SIGKILL, removal from the membership, wiped data, a
    /// fresh start, then back as a learner and a voter.
    pub async fn wipe_and_readd(&mut self, index: usize) -> Result<()> {
        self.remove_member(index).await?;
        self.add_member(index).await
    }

    /// Removes node `index` from the membership (it may be down, frozen or
    /// cut off), then SIGKILLs it and deletes its data: it is a spare again.
    pub async fn remove_member(&mut self, index: usize) -> Result<()> {
        let id = self.nodes[index].id;
        retry_admin("remove_node", || self.admin.remove_node(id)).await?;
        self.nodes[index].member = false;
        self.kill(index);
        let data_dir = &self.nodes[index].data_dir;
        if data_dir.exists() {
            std::fs::remove_dir_all(data_dir).with_context(|| format!("wiping {}", data_dir.display()))?;
        }
        Ok(())
    }

    /// Starts node `index` (a spare: not running, not a member) on an
    /// empty data directory, adds it as a learner (which returns once it
    /// caught up) and makes every member and it the voters.
    pub async fn add_member(&mut self, index: usize) -> Result<()> {
        let node = &self.nodes[index];
        assert!(!node.member && !node.is_up(), "node {} is not a spare", node.id);
        let (id, addr) = (node.id, node.peer_addr.to_string());
        if node.data_dir.exists() {
            std::fs::remove_dir_all(&node.data_dir).with_context(|| format!("wiping {}", node.data_dir.display()))?;
        }
        self.spawn(index, false)?;
        retry_admin("add_learner", || self.admin.add_learner(id, addr.clone())).await?;
        self.nodes[index].member = true;
        let voters = self.members();
        retry_admin("change_membership", || self.admin.change_membership(voters.clone())).await?;
        Ok(())
    }

    /// The id of the node that the majority of reachable nodes name leader,
    /// if that node also says it leads.
    pub async fn leader(&self) -> Option<NodeId> {
        let mut leaders = Vec::new();
        for node in self.nodes.iter().filter(|n| n.is_up() && !n.frozen) {
            if let Ok(status) = self.admin.status(&node.client_addr.to_string()).await {
                if status.role == "leader" {
                    leaders.push((status.term, status.id));
                }
            }
        }
        leaders.into_iter().max().map(|(_, id)| id)
    }

    /// Waits until a leader is known; returns its id.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<NodeId> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(id) = self.leader().await {
                return Ok(id);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        bail!("no leader within {} ms", timeout.as_millis())
    }

    /// Waits until a leader exists whose voters are exactly the intended
    /// members, with no other member, and every running node answers status.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("nothing asked yet");
        while Instant::now() < deadline {
            self.check_alive()?;
            match self.admin.leader_status().await {
                Ok(status) if is_membership(&status.members, &self.members()) => {
                    let mut all = true;
                    for node in self.nodes.iter().filter(|n| n.is_up()) {
                        all &= self.admin.status(&node.client_addr.to_string()).await.is_ok();
                    }
                    if all {
                        return Ok(());
                    }
                    last = "a node does not answer status".into();
                }
                Ok(status) => last = format!("members {:?}", status.members),
                Err(error) => last = error.to_string(),
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        bail!(
            "cluster not ready within {} ms ({last}); logs in {}",
            timeout.as_millis(),
            self.dir.display()
        )
    }

    /// Waits until node `id` has applied every entry the leader had
    /// committed when this was called.
    pub async fn wait_caught_up(&self, id: NodeId, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let target = loop {
            match self.admin.leader_status().await {
                Ok(status) => break status.commit_index,
                Err(error) if Instant::now() >= deadline => bail!("no leader to catch up with: {error}"),
                Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
            }
        };
        let endpoint = self.endpoint(id);
        let mut applied = None;
        while Instant::now() < deadline {
            if let Ok(status) = self.admin.status(&endpoint).await {
                if status.applied_index >= target {
                    return Ok(());
                }
                applied = Some(status.applied_index);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        bail!(
            "node {id} applied {applied:?}, not the leader's commit index {target}, within {} ms",
            timeout.as_millis()
        )
    }

    /// Asks node `id`'s gRPC health service about the whole node.
    pub async fn health(&self, id: NodeId) -> Health {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        let ask = async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.endpoint(id)))
                .ok()?
                .connect_timeout(HEALTH_CHECK_TIMEOUT)
                .connect()
                .await
                .ok()?;
            let request = HealthCheckRequest { service: String::new() };
            let reply = HealthClient::new(channel).check(request).await.ok()?;
            Some(reply.into_inner().status)
        };
        match tokio::time::timeout(HEALTH_CHECK_TIMEOUT, ask).await {
            Ok(Some(status)) if status == ServingStatus::Serving as i32 => Health::Serving,
            Ok(Some(_)) => Health::NotServing,
            Ok(None) | Err(_) => Health::NoAnswer,
        }
    }

    /// Fails when a node that should run has exited.
    pub fn check_alive(&self) -> Result<()> {
        for node in &self.nodes {
            // A running node never exits on its own in these tests.
            if let Some(pid) = node.pid() {
                if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
                    bail!("node {} (pid {pid}) exited; see {}", node.id, node.log_path.display());
                }
            }
        }
        Ok(())
    }

    /// The admin client (real ports of every node).
    pub fn admin(&self) -> &Client {
        &self.admin
    }
}

/// Whether `members` are exactly `voters`, every one a voter.
fn is_membership(members: &[cluster_client::Member], voters: &[NodeId]) -> bool {
    let mut have: Vec<NodeId> = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    have.sort_unstable();
    let mut want = voters.to_vec();
    want.sort_unstable();
    have.len() == members.len() && have == want
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Runs an admin call until it succeeds, at most 20 times in about 20 s:
/// membership calls are refused while an earlier change is in progress.
async fn retry_admin<T, F, Fut>(what: &str, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = cluster_client::Result<T>>,
{
    const ATTEMPTS_MAX: u32 = 20;
    let mut last = None;
    for _ in 0..ATTEMPTS_MAX {
        match call().await {
            Ok(value) => return Ok(value),
            Err(error) => {
                eprintln!("chaos: {what} failed, will retry: {error}");
                last = Some(error);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(anyhow!("{what} failed {ATTEMPTS_MAX} times: {last:?}"))
}

/// A port that was free a moment ago, below the kernel's ephemeral range
/// (32768 and up): a node restarts on its port, and an outgoing connection
/// (the proxies dial out) must not be able to take it meanwhile.
fn free_port() -> Result<SocketAddr> {
    for _ in 0..1000 {
        let port = 20_000 + fastrand::u16(..12_000);
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return Ok(listener.local_addr()?);
        }
    }
    Err(anyhow!("no free port in 20000..32000"))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
        // Every process on a mount is gone: unmount before removing the dir.
        self.mounts.clear();
        if self.succeeded && !std::thread::panicking() && std::env::var_os("CHAOS_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("chaos: run directory kept: {}", self.dir.display());
            for node in &self.nodes {
                eprintln!("chaos:   node {} log: {}", node.id, node.log_path.display());
            }
        }
    }
}
