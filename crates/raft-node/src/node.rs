//! A whole node: storage, Raft and the gRPC server, wired together.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use openraft::error::{Fatal, ForwardToLeader};
use openraft::{Config, SnapshotPolicy};
use proto::kv::cluster_server::ClusterServer;
use proto::kv::kv_server::KvServer;
use proto::raft::raft_server::RaftServer;
use storage::io::{FileLock, FileSystem};
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::{Router, TcpIncoming};
use tonic::transport::{Server, ServerTlsConfig};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::cluster_id::{ClusterId, ClusterIdentity, IdentityFile, IDENTITY_FILE};
use crate::config::NodeConfig;
use crate::handoff::{Handoff, SHUTDOWN_DRAIN_MS};
use crate::log_store::{LogReader, LogStore, LogStoreOptions};
use crate::metrics::{Metered, NodeMetrics};
use crate::network::{Network, RAFT_MESSAGE_BYTES_MAX};
use crate::service::admin::{AdminService, Port as AdminPort};
use crate::service::proposer::ProposerHooks;
use crate::service::{kv::KvService, raft::RaftService};
use crate::state_machine::{Engine, StateMachine};
use crate::tls::TlsConfig;
use crate::types::{Node as MemberNode, NodeId, Raft};
use crate::{restore, snapshot_trigger};

/// The file at the top of a data directory that a running node holds an
/// exclusive lock on (flock), so that no second process opens the same
/// directory.
pub const LOCK_FILE: &str = "LOCK";
/// How long a snapshot transfer may take at most, in ms.
const SNAPSHOT_TRANSFER_MS_MAX: u64 = 600_000;
/// Streams a peer may reset before they are accepted, at most.
const PENDING_RESET_STREAMS_MAX: usize = 1024;
/// Entries per append-entries message at most.
const APPEND_ENTRIES_MAX: u64 = 1000;
/// How long a node whose Raft stopped on a fatal error keeps answering
/// (health `NOT_SERVING`, requests `UNAVAILABLE`) before it stops serving,
/// in ms: time for health checkers and clients to move to another node.
pub const FATAL_DRAIN_MS: u64 = 1000;

/// Why a node could not start or serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// Another process (another `kv-node`, or a second node in this
    /// process) holds the data directory's lock.
    #[error("data directory {path} is in use: another process holds its lock file {LOCK_FILE} (is another kv-node running on it?)")]
    DataDirLocked {
        /// The directory.
        path: String,
    },
    /// The data directory belongs to another node or another format.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The directory.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The Raft log could not be opened.
    #[error("raft log: {0}")]
    Log(#[from] crate::log_store::LogStoreError),
    /// The state machine could not be opened.
    #[error("state machine: {0}")]
    StateMachine(#[from] crate::state_machine::StateMachineError),
    /// Raft stopped.
    #[error("raft: {0}")]
    Raft(String),
    /// Raft stopped on a fatal error while serving (a full disk, a failed
    /// fsync, a panic in its storage): the node stopped serving after
    /// [`FATAL_DRAIN_MS`]. Restart it once the cause is fixed; it catches
    /// up from its peers.
    #[error("raft stopped on a fatal error: {reason}")]
    Fatal {
        /// openraft's error.
        reason: String,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// The optional listeners of [`KvNode::serve_with_options`]; each is off
/// by default.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ServeOptions {
    /// A separate port for Raft and the calls that initialize or change
    /// membership (see [`KvNode::serve_with_peer_listener`]). Default: none,
    /// the client port serves them.
    pub peer_listener: Option<TcpListener>,
    /// A port serving Prometheus metrics over HTTP at `/metrics`. Default:
    /// none, no metrics are kept (the KV service then counts nothing).
    pub metrics_listener: Option<TcpListener>,
}

impl ServeOptions {
    /// With a separate peer port.
    pub fn with_peer_listener(mut self, listener: Option<TcpListener>) -> ServeOptions {
        self.peer_listener = listener;
        self
    }

    /// With Prometheus metrics served on `listener`.
    pub fn with_metrics_listener(mut self, listener: Option<TcpListener>) -> ServeOptions {
        self.metrics_listener = listener;
        self
    }
}

/// A running node.
#[derive(Clone)]
pub struct KvNode {
    raft: Raft,
    engine: Engine,
    /// A read handle on the Raft log, for metrics.
    log_reader: LogReader,
    config: NodeConfig,
    /// The cluster id this node's Raft calls carry and accept.
    identity: ClusterIdentity,
    /// The transport to the peers (TLS and cluster id included), shared
    /// with Raft; a graceful stop's handoff calls the successor through it.
    network: Network,
    /// The data directory's lock, released when the last clone is dropped.
    _lock: Arc<FileLock>,
}

impl KvNode {
    /// Opens the node's storage and starts Raft.
    pub async fn start(config: NodeConfig) -> Result<KvNode, NodeError> {
        if config.id == 0 {
            return Err(NodeError::Config("node id 0 is reserved".into()));
        }
        if config.limits.request_bytes_max() >= RAFT_MESSAGE_BYTES_MAX {
            return Err(NodeError::Config(format!(
                "a full batch ({} bytes) would not fit in one Raft message ({RAFT_MESSAGE_BYTES_MAX} bytes)",
                config.limits.request_bytes_max()
            )));
        }
        if config.tls.is_some() && config.peer_advertise_addr.is_none() {
            return Err(NodeError::Config(
                "TLS needs a separate peer port (--peer-listen): one port cannot both admit clients \
                 without certificates and require them of peers"
                    .into(),
            ));
        }
        // The lock comes before anything in the directory is read: the log
        // store deletes spare segments and truncates the last one on open,
        // which would damage a node already running on this directory.
        let fs = config.fs.as_ref();
        let lock = lock_data_dir(fs, &config.data_dir)?;
        let cluster_id = check_identity(fs, &config.data_dir, config.id)?;
        let identity = ClusterIdentity::new(config.id, Arc::clone(&config.fs), &config.data_dir, cluster_id);
        let has_log =
            storage::io::exists(fs, &config.data_dir.join(restore::LOG_DIR)).map_err(|e| NodeError::DataDir {
                path: config.data_dir.display().to_string(),
                reason: e.to_string(),
            })?;
        if config.initialize && !has_log {
            // A new cluster (a restored one too: its nodes must not take
            // calls from the cluster the backup came from) gets a new id,
            // durable before Raft can send anything.
            let id = ClusterId::random();
            identity.set_durably(id).map_err(|e| NodeError::DataDir {
                path: config.data_dir.display().to_string(),
                reason: e.to_string(),
            })?;
            tracing::info!(cluster_id = %id, "forming a new cluster");
        }
        let log_options = LogStoreOptions {
            memory_window_bytes_max: config.timing.log_memory_window_bytes_max,
            segment_bytes_max: config.timing.log_segment_bytes_max,
            node_id: Some(config.id),
            ..LogStoreOptions::default()
        };
        if let (true, Some(backup)) = (config.initialize, &config.restore_from) {
            restore::restore(&config, backup)?;
        }
        let mut log_store = LogStore::open_on(
            Arc::clone(&config.fs),
            &config.data_dir.join(restore::LOG_DIR),
            log_options,
        )?;
        let log_reader = log_store.reader();
        let state_machine = StateMachine::open(&config.data_dir.join("sm"), config.engine_options())?;
        log_store.purge_after_applied(state_machine.applied_index());
        let engine = state_machine.engine();
        let timing = &config.timing;
        let raft_config = Config {
            cluster_name: "kv".into(),
            heartbeat_interval: timing.heartbeat_ms,
            election_timeout_min: timing.election_timeout_ms_min,
            election_timeout_max: timing.election_timeout_ms_max,
            install_snapshot_timeout: SNAPSHOT_TRANSFER_MS_MAX,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(timing.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: timing.logs_kept_after_snapshot,
            max_payload_entries: APPEND_ENTRIES_MAX,
            purge_batch_size: 256,
            ..Config::default()
        }
        .validate()
        .map_err(|e| NodeError::Config(e.to_string()))?;
        let network =
            Network::new(config.tls.as_ref().and_then(TlsConfig::raft_client)).with_cluster_identity(identity.clone());
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config),
            network.clone(),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        // Snapshots by bytes too, besides openraft's entry count; the task
        // ends when Raft shuts down.
        snapshot_trigger::spawn(raft.clone(), log_reader.clone(), timing.snapshot_log_bytes_max);
        Ok(KvNode {
            raft,
            engine,
            log_reader,
            config,
            identity,
            network,
            _lock: Arc::new(lock),
        })
    }

    /// The Raft handle.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// If this node leads, hands leadership to its most up-to-date follower
    /// now, as a graceful stop does first (see [`crate::handoff`]); this
    /// node stops standing for election. For a node about to stop.
    pub async fn hand_off(&self) -> Handoff {
        crate::handoff::hand_off(&self.raft, &self.network).await
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The id of the cluster this node belongs to; `None` before it formed
    /// or joined one (and for clusters formed before cluster ids existed).
    pub fn cluster_id(&self) -> Option<ClusterId> {
        self.identity.get()
    }

    /// Serves the KV, Cluster, Raft, health and reflection services on
    /// `listener` until `shutdown` resolves, then stops Raft. The same as
    /// [`KvNode::serve_with_peer_listener`] without a peer listener.
    ///
    /// When `shutdown` resolves, the node refuses new KV requests with
    /// `UNAVAILABLE` (and the leader hint), turns health `NOT_SERVING`,
    /// hands leadership to its most up-to-date follower if it leads (see
    /// [`crate::handoff`]), lets the requests in flight finish for at most
    /// [`SHUTDOWN_DRAIN_MS`], and then stops Raft.
    ///
    /// If Raft stops on its own (a fatal storage error), health turns
    /// `NOT_SERVING` and KV requests are refused with `UNAVAILABLE` at once;
    /// after [`FATAL_DRAIN_MS`] the server stops and this returns
    /// [`NodeError::Fatal`].
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), NodeError> {
        self.serve_with_peer_listener(listener, None, shutdown).await
    }

    /// Serves until `shutdown` resolves, then stops Raft; with a
    /// `peer_listener`, on two ports:
    /// - `listener` (the client port): KV, the read-only Cluster calls
    ///   (Status, Digest), health and reflection;
    /// - `peer_listener`: Raft and every Cluster call, including those that
    ///   initialize or change membership (refused on the client port), and
    ///   health.
    ///
    /// Without a peer listener, `listener` serves all of it. Both servers
    /// stop together: on `shutdown`, on a fatal Raft error (as for
    /// [`KvNode::serve`]), or when either fails.
    pub async fn serve_with_peer_listener(
        &self,
        listener: TcpListener,
        peer_listener: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), NodeError> {
        let options = ServeOptions::default().with_peer_listener(peer_listener);
        self.serve_with_options(listener, options, shutdown).await
    }

    /// Serves until `shutdown` resolves, then stops Raft: `listener` as for
    /// [`KvNode::serve_with_peer_listener`], with the optional listeners of
    /// `options` (a separate peer port, Prometheus metrics).
    pub async fn serve_with_options(
        &self,
        listener: TcpListener,
        options: ServeOptions,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), NodeError> {
        let ServeOptions {
            peer_listener,
            metrics_listener,
        } = options;
        if self.config.initialize {
            self.spawn_initialize();
        }
        let limits = self.config.limits.clone();
        let request_bytes_max = limits.request_bytes_max();
        let stopped: Arc<OnceLock<String>> = Arc::default();
        let metrics = metrics_listener.map(|listener| {
            let metrics = NodeMetrics::new(self.raft.clone(), self.engine.clone(), self.log_reader.clone());
            (metrics, listener)
        });
        // Set when a graceful stop starts: the service refuses new requests
        // and the proposer the writes it has not proposed yet.
        let (draining, draining_rx) = tokio::sync::watch::channel(false);
        let hooks = ProposerHooks {
            draining: Some(draining_rx.clone()),
            metrics: metrics.as_ref().map(|(metrics, _)| metrics.proposals()),
        };
        let kv = KvServer::new(KvService::with_hooks(
            self.raft.clone(),
            self.engine.clone(),
            limits,
            hooks,
        ))
        .max_decoding_message_size(request_bytes_max)
        .max_encoding_message_size(request_bytes_max);
        let kv = InterceptedService::new(
            kv,
            refuse_when_closed(Arc::clone(&stopped), draining_rx, leader_elsewhere(self.raft.clone())),
        );
        let kv = Metered::new(kv, metrics.as_ref().map(|(metrics, _)| metrics.rpc()));
        let metrics_addr = metrics
            .as_ref()
            .and_then(|(_, listener)| listener.local_addr().ok())
            .map(|bound| reachable_addr(bound, &self.config.advertise_addr));
        let advertised = MemberNode::with_peer_addr(
            self.config.advertise_addr.clone(),
            self.config.peer_advertise_addr.clone(),
        );
        let admin = |port: AdminPort| {
            ClusterServer::new(
                AdminService::new(self.raft.clone(), self.engine.clone(), advertised.clone(), port)
                    .with_cluster_identity(self.identity.clone())
                    .with_metrics_addr(metrics_addr.clone()),
            )
        };
        let raft = RaftServer::new(RaftService::new(self.raft.clone(), self.identity.clone()))
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter.set_serving::<KvServer<KvService>>().await;
        // Reflection in both versions: tools that still ask for v1alpha
        // (older grpcurl builds, several GUI clients) get UNIMPLEMENTED
        // from a v1-only server.
        let reflection_builder = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        };
        let reflection = reflection_builder()
            .build_v1()
            .map_err(|e| NodeError::Config(format!("reflection: {e}")))?;
        let reflection_v1alpha = reflection_builder()
            .build_v1alpha()
            .map_err(|e| NodeError::Config(format!("reflection: {e}")))?;
        let tls = self.config.tls.as_ref();
        if tls.is_some() && peer_listener.is_none() {
            return Err(NodeError::Config(
                "TLS needs a separate peer listener; serve with ServeOptions::with_peer_listener".into(),
            ));
        }
        let client_port = server_builder(tls.map(TlsConfig::client_port))?
            .add_service(kv)
            .add_service(health.clone());
        let (client_port, peer_port) = match peer_listener {
            Some(peer_listener) => {
                let peer_port = server_builder(tls.and_then(TlsConfig::peer_port))?
                    .add_service(raft)
                    .add_service(admin(AdminPort::Peer))
                    .add_service(health);
                (
                    client_port.add_service(admin(AdminPort::Client)),
                    Some((peer_port, peer_listener)),
                )
            }
            None => (
                client_port.add_service(admin(AdminPort::Shared)).add_service(raft),
                None,
            ),
        };
        let client_port = client_port.add_service(reflection).add_service(reflection_v1alpha);
        // Spawned after the last early return, and aborted (which ends every
        // scrape connection) once the gRPC servers stop.
        let serve_metrics =
            metrics.map(|(metrics, listener)| tokio::spawn(crate::metrics::serve(listener, metrics)).abort_handle());
        let (drained, drained_rx) = tokio::sync::oneshot::channel::<()>();
        let watch = tokio::spawn(watch_fatal(
            self.raft.clone(),
            health_reporter.clone(),
            Arc::clone(&stopped),
            drained,
        ));
        let check = tokio::spawn(warn_on_misplaced_entry(self.raft.clone(), advertised));
        let (stopping, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let raft = self.raft.clone();
        let network = self.network.clone();
        let shutdown = async move {
            tokio::select! {
                () = shutdown => close_gracefully(&raft, &network, &health_reporter, &draining).await,
                _ = drained_rx => {}
            }
            let _ = stopping.send(());
        };
        // The servers stop taking connections once `shutdown` resolves and
        // wait for the requests in flight; past the drain deadline those
        // are dropped.
        let serving = serve_ports((client_port, listener), peer_port, shutdown);
        let drain_deadline = async {
            if stopping_rx.await.is_err() {
                return std::future::pending().await;
            }
            tokio::time::sleep(Duration::from_millis(SHUTDOWN_DRAIN_MS)).await;
        };
        let served = tokio::select! {
            served = serving => served,
            () = drain_deadline => {
                tracing::warn!(drain_ms = SHUTDOWN_DRAIN_MS, "requests still in flight after the drain deadline; dropping them");
                Ok(())
            }
        };
        watch.abort();
        check.abort();
        if let Some(serve_metrics) = serve_metrics {
            serve_metrics.abort();
        }
        if let Some(reason) = stopped.get() {
            return Err(NodeError::Fatal { reason: reason.clone() });
        }
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft did not shut down cleanly");
        }
        served.map_err(NodeError::from)
    }

    /// Forms the cluster of `initial_members` unless Raft state exists.
    fn spawn_initialize(&self) {
        let raft = self.raft.clone();
        let members = restore::initial_members(&self.config);
        let identity = self.identity.clone();
        tokio::spawn(async move {
            match raft.is_initialized().await {
                Ok(false) => {
                    let initialized = match identity.ensure_for_new_cluster() {
                        Ok(_) => raft.initialize(members).await.map_err(|e| e.to_string()),
                        Err(error) => Err(error.to_string()),
                    };
                    match initialized {
                        Ok(()) => tracing::info!("initialized a new cluster"),
                        Err(error) => tracing::warn!(%error, "could not initialize the cluster"),
                    }
                }
                Ok(true) => tracing::info!("raft state exists; not initializing"),
                Err(error) => tracing::warn!(%error, "raft stopped before initializing"),
            }
        });
    }
}

/// Refuses every request with [`crate::service::status::node_stopped`]
/// once `stopped` holds a reason, and with
/// [`crate::service::status::shutting_down`] (hinting at `leader()`) once
/// `draining` is set.
fn refuse_when_closed(
    stopped: Arc<OnceLock<String>>,
    draining: tokio::sync::watch::Receiver<bool>,
    leader: impl Fn() -> ForwardToLeader<NodeId, MemberNode> + Clone,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |request| {
        if let Some(reason) = stopped.get() {
            return Err(crate::service::status::node_stopped(reason));
        }
        if *draining.borrow() {
            return Err(crate::service::status::shutting_down(&leader()));
        }
        Ok(request)
    }
}

/// The leader as a refusal's hint: another node that leads, or none (this
/// node leads, or no leader is known).
fn leader_elsewhere(raft: Raft) -> impl Fn() -> ForwardToLeader<NodeId, MemberNode> + Clone {
    move || crate::service::status::leader_hint(&raft)
}

/// The first steps of a graceful shutdown, before the servers stop and
/// drain: refuse new KV requests, turn health `NOT_SERVING`, and, on a
/// leader, hand leadership over (see [`crate::handoff`]).
async fn close_gracefully(
    raft: &Raft,
    network: &Network,
    health: &HealthReporter,
    draining: &tokio::sync::watch::Sender<bool>,
) {
    // Refuse first, then tell health checkers: a checker that sees
    // NOT_SERVING finds requests refused too. Writes refused from here on
    // also stop the log from growing, so the successor can catch up.
    draining.send_replace(true);
    health.set_not_serving::<KvServer<KvService>>().await;
    health.set_service_status("", ServingStatus::NotServing).await;
    match crate::handoff::hand_off(raft, network).await {
        Handoff::NotLeader => tracing::info!("shutting down: health is NOT_SERVING; draining"),
        Handoff::NoSuccessor => tracing::info!("shutting down the only voter; draining"),
        Handoff::Moved { to, elapsed_ms } => {
            tracing::info!(to, elapsed_ms, "shutting down: handed leadership over; draining")
        }
        Handoff::Failed { reason } => {
            tracing::warn!(%reason, "shutting down: leadership handoff failed; the cluster elects a leader by timeout")
        }
    }
}

/// The address a listener bound at `bound` is reached at: `bound` itself,
/// or, when it is a wildcard (`0.0.0.0`, `::`), the host of the node's
/// advertised address with `bound`'s port.
fn reachable_addr(bound: std::net::SocketAddr, advertised: &str) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    match advertised.rsplit_once(':') {
        Some((host, _port)) => format!("{host}:{}", bound.port()),
        None => bound.to_string(),
    }
}

/// Why peers cannot reach this node's Raft through the membership's entry
/// for it, if they cannot: the entry names another peer address than the
/// one the node serves Raft at (`advertised`).
fn misplaced_entry(entry: &MemberNode, advertised: &MemberNode) -> Option<String> {
    (entry.peer_addr() != advertised.peer_addr()).then(|| {
        format!(
            "the cluster's membership reaches this node's Raft at {}, but it serves Raft at {}: \
             peers cannot replicate to it; remove it and add it again with its peer address \
             (kvctl member add ID ADDR --peer-addr PEER_ADDR), or restart it to match",
            entry.peer_addr(),
            advertised.peer_addr()
        )
    })
}

/// Logs an error, once per membership change, while the membership's
/// entry for this node names a peer address it does not serve Raft at (a
/// node restarted with or without `--peer-listen`, or added without
/// `--peer-addr`).
async fn warn_on_misplaced_entry(raft: Raft, advertised: MemberNode) {
    let mut metrics = raft.metrics();
    let mut last_warned = None;
    loop {
        let (id, membership) = {
            let m = metrics.borrow_and_update();
            (m.id, m.membership_config.clone())
        };
        let problem = membership
            .membership()
            .get_node(&id)
            .and_then(|entry| misplaced_entry(entry, &advertised));
        if let Some(problem) = &problem {
            if last_warned.as_ref() != Some(membership.log_id()) {
                tracing::error!("{problem}");
                last_warned = Some(*membership.log_id());
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Waits until Raft stops on its own; then records why in `stopped`, turns
/// health `NOT_SERVING`, and after [`FATAL_DRAIN_MS`] fires `drained`.
/// Returns quietly if Raft stops because it was told to.
async fn watch_fatal(
    raft: Raft,
    health: HealthReporter,
    stopped: Arc<OnceLock<String>>,
    drained: tokio::sync::oneshot::Sender<()>,
) {
    let mut metrics = raft.metrics();
    let reason = loop {
        let running = metrics.borrow_and_update().running_state.clone();
        match running {
            Ok(()) => {}
            Err(Fatal::Stopped) => return,
            Err(fatal) => break fatal.to_string(),
        }
        if metrics.changed().await.is_err() {
            return;
        }
    };
    // Refuse first, then tell health checkers: no request is accepted by a
    // node already known to be dead.
    let _ = stopped.set(reason.clone());
    health.set_not_serving::<KvServer<KvService>>().await;
    health.set_service_status("", ServingStatus::NotServing).await;
    tracing::error!(
        %reason,
        drain_ms = FATAL_DRAIN_MS,
        "raft stopped on a fatal error; health is NOT_SERVING and the node stops serving after the drain"
    );
    tokio::time::sleep(Duration::from_millis(FATAL_DRAIN_MS)).await;
    let _ = drained.send(());
}

/// Serves `client` (and `peer`, if given) until `shutdown` resolves or
/// either server fails; both stop together, so neither outlives the other.
async fn serve_ports(
    (client, listener): (Router, TcpListener),
    peer: Option<(Router, TcpListener)>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (stop, _) = tokio::sync::watch::channel(false);
    let stop_requested = |stop: &tokio::sync::watch::Sender<bool>| {
        let mut stopping = stop.subscribe();
        async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        }
    };
    let trigger = async {
        tokio::select! {
            () = shutdown => {}
            () = stop_requested(&stop) => {}
        }
        stop.send_replace(true);
    };
    let client_served = async {
        let served = client
            .serve_with_incoming_shutdown(incoming(listener), stop_requested(&stop))
            .await;
        stop.send_replace(true);
        served
    };
    let peer_served = async {
        let Some((peer, peer_listener)) = peer else {
            return Ok(());
        };
        let served = peer
            .serve_with_incoming_shutdown(incoming(peer_listener), stop_requested(&stop))
            .await;
        stop.send_replace(true);
        served
    };
    let ((), client_served, peer_served) = tokio::join!(trigger, client_served, peer_served);
    client_served.and(peer_served)
}

/// A gRPC server with the settings both ports share, serving TLS with
/// `tls` if given.
fn server_builder(tls: Option<ServerTlsConfig>) -> Result<Server, NodeError> {
    let server = Server::builder()
        // Every Raft RPC that times out during a partition resets its
        // stream; h2's default guard (20 pending resets) would then drop
        // the peer's whole connection right after the partition heals.
        .http2_max_pending_accept_reset_streams(Some(PENDING_RESET_STREAMS_MAX));
    match tls {
        Some(tls) => server
            .tls_config(tls)
            .map_err(|e| NodeError::Config(format!("TLS certificate or key: {e}"))),
        None => Ok(server),
    }
}

/// The connections a node accepts, with Nagle's algorithm off on each.
///
/// The server builder's own `tcp_nodelay` only covers listeners tonic binds
/// itself. Without it here, a reply written after an await (a linearizable
/// read) waited for the client's delayed ACK: ~40 ms on one read in ten.
fn incoming(listener: tokio::net::TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Creates `data_dir` if needed and takes an exclusive, non-blocking lock
/// on its lock file; the lock lasts as long as the returned lock lives.
fn lock_data_dir(fs: &dyn FileSystem, data_dir: &Path) -> Result<FileLock, NodeError> {
    let fail = |reason: String| NodeError::DataDir {
        path: data_dir.display().to_string(),
        reason,
    };
    storage::io::create_dir_all(fs, data_dir).map_err(|e| fail(e.to_string()))?;
    match storage::io::lock(fs, data_dir, &data_dir.join(LOCK_FILE)) {
        Ok(lock) => Ok(lock),
        Err(storage::Error::Locked { .. }) => Err(NodeError::DataDirLocked {
            path: data_dir.display().to_string(),
        }),
        Err(e) => Err(fail(format!("cannot lock {LOCK_FILE}: {e}"))),
    }
}

/// Creates or checks the identity file, so a data directory is never
/// served by another node id or read by an incompatible build; returns the
/// cluster id it names, if any.
pub(crate) fn check_identity(fs: &dyn FileSystem, data_dir: &Path, id: NodeId) -> Result<Option<ClusterId>, NodeError> {
    let fail = |reason: String| NodeError::DataDir {
        path: data_dir.display().to_string(),
        reason,
    };
    // Durably: the identity file must not outlive a directory entry a
    // crash forgot.
    storage::io::create_dir_all(fs, data_dir).map_err(|e| fail(e.to_string()))?;
    let path = data_dir.join(IDENTITY_FILE);
    let expected = IdentityFile {
        node_id: id,
        cluster_id: None,
    }
    .encode();
    match storage::io::read_if_exists(fs, &path).map_err(|e| fail(e.to_string()))? {
        Some(found) => {
            let found = IdentityFile::decode(&String::from_utf8_lossy(&found)).map_err(fail)?;
            if found.node_id != id {
                return Err(fail(format!("it belongs to node {}, not node {id}", found.node_id)));
            }
            Ok(found.cluster_id)
        }
        // The disk seam's one atomic replace (temp file, fsync, rename,
        // fsync dir): a crash leaves no identity file or the whole one.
        None => {
            storage::io::write_atomically(fs, data_dir, IDENTITY_FILE, expected.as_bytes())
                .map_err(|e| fail(e.to_string()))?;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    #[test]
    fn once_stopped_every_kv_request_is_refused_as_unavailable_with_the_reason() {
        // A node whose Raft died must send clients elsewhere, saying why.
        let stopped: Arc<OnceLock<String>> = Arc::default();
        let (_draining, not_draining) = tokio::sync::watch::channel(false);
        let mut interceptor = refuse_when_closed(Arc::clone(&stopped), not_draining, ForwardToLeader::empty);
        assert!(interceptor(tonic::Request::new(())).is_ok(), "a healthy node serves");
        stopped.set("No space left on device".into()).expect("set once");
        let status = interceptor(tonic::Request::new(())).expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("No space left on device"), "{status:?}");
        assert!(
            status
                .metadata()
                .get(crate::service::status::NOT_APPLIED_HEADER)
                .is_some(),
            "refused before Raft: certainly not applied"
        );
    }

    #[test]
    fn a_draining_node_refuses_kv_requests_with_the_leader_hint() {
        // A node shutting down must send clients to the new leader at once,
        // saying the request was not applied.
        let (draining, draining_rx) = tokio::sync::watch::channel(false);
        let leader = || ForwardToLeader::new(2, MemberNode::new("127.0.0.1:7002"));
        let mut interceptor = refuse_when_closed(Arc::default(), draining_rx, leader);
        assert!(
            interceptor(tonic::Request::new(())).is_ok(),
            "serving before the shutdown"
        );
        draining.send_replace(true);
        let status = interceptor(tonic::Request::new(())).expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("shutting down"), "{status:?}");
        let header = |key: &str| status.metadata().get(key).and_then(|v| v.to_str().ok());
        assert_eq!(header(crate::service::status::LEADER_ID_HEADER), Some("2"));
        assert_eq!(
            header(crate::service::status::LEADER_ADDR_HEADER),
            Some("127.0.0.1:7002")
        );
        assert_eq!(header(crate::service::status::NOT_APPLIED_HEADER), Some("1"));
    }

    #[test]
    fn a_membership_entry_that_misses_the_peer_port_is_reported() {
        // Peers dial the entry's peer address: if the node serves Raft
        // elsewhere, it silently stops receiving the log.
        let split = MemberNode::with_peer_addr("127.0.0.1:7001", Some("127.0.0.1:7051".into()));
        let one_port = MemberNode::new("127.0.0.1:7001");
        assert_eq!(misplaced_entry(&split, &split), None);
        assert_eq!(misplaced_entry(&one_port, &one_port), None);
        let problem = misplaced_entry(&one_port, &split).expect("entry lacks the peer port");
        assert!(problem.contains("127.0.0.1:7051"), "{problem}");
        assert!(
            misplaced_entry(&split, &one_port).is_some(),
            "entry names a port not served"
        );
    }

    #[test]
    fn a_wildcard_listener_is_reached_at_the_advertised_host() {
        // Status tells tools where to scrape; 0.0.0.0 is no address to dial.
        let bound: std::net::SocketAddr = "0.0.0.0:7101".parse().expect("addr");
        assert_eq!(reachable_addr(bound, "10.0.0.5:7001"), "10.0.0.5:7101");
        let bound: std::net::SocketAddr = "127.0.0.1:7101".parse().expect("addr");
        assert_eq!(reachable_addr(bound, "10.0.0.5:7001"), "127.0.0.1:7101");
        let bound: std::net::SocketAddr = "[::]:7101".parse().expect("addr");
        assert_eq!(reachable_addr(bound, "[fd00::5]:7001"), "[fd00::5]:7101");
    }

    #[test]
    fn a_data_directory_is_locked_by_one_holder_at_a_time() {
        // A second node on the same directory would truncate the first one's log.
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("node");
        let fs = storage::io::RealFs;
        let held = lock_data_dir(&fs, &data_dir).expect("first lock");
        let error = lock_data_dir(&fs, &data_dir).expect_err("second lock");
        assert!(matches!(error, NodeError::DataDirLocked { .. }), "{error:?}");
        assert!(error.to_string().contains(&data_dir.display().to_string()), "{error}");
        drop(held);
        lock_data_dir(&fs, &data_dir).expect("free again once the holder is gone");
    }

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        // Nagle on the server side delayed one linearizable read in ten by ~40 ms.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut incoming = incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let accepted = incoming.next().await.expect("a connection").expect("accepted");
        assert!(accepted.nodelay().expect("read TCP_NODELAY"));
    }
}
