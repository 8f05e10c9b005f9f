//! `kv-node`: one node of the replicated key/value database.
//!
//! ```text
//! kv-node --id 1 --listen 127.0.0.1:7001 --data-dir data/node1 \
//!     --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 --init
//! ```
//!
//! With a separate peer port (Raft and membership calls, firewalled to the
//! cluster's hosts), each peer is `id=client_addr/peer_addr`:
//!
//! ```text
//! kv-node --id 1 --listen 127.0.0.1:7001 --peer-listen 127.0.0.1:7051 \
//!     --data-dir data/node1 --init --peers \
//!     1=127.0.0.1:7001/127.0.0.1:7051,2=127.0.0.1:7002/127.0.0.1:7052,3=127.0.0.1:7003/127.0.0.1:7053
//! ```
//!
//! With TLS (a separate peer port is then needed; with `--tls-ca` peers
//! hold each other to mutual TLS):
//!
//! ```text
//! kv-node ... --peer-listen 127.0.0.1:7051 \
//!     --tls-cert certs/node1.pem --tls-key certs/node1.key --tls-ca certs/ca.pem
//! ```
//!
//! Every flag has an environment fallback (`KV_NODE_ID`, `KV_LISTEN`, ...).
//! SIGTERM or SIGINT stops the node gracefully: it refuses new requests
//! (`UNAVAILABLE`, with the leader hint), turns health `NOT_SERVING`, hands
//! leadership to its most up-to-date follower if it leads, lets requests in
//! flight finish (at most 2 s) and exits.
//!
//! Exit status: 0 after a requested stop; [`FATAL_EXIT_STATUS`] when Raft
//! stopped on a fatal storage error (a full disk, a failed fsync), after
//! a short drain with health `NOT_SERVING`: fix the cause and restart the
//! node, it catches up from its peers; 1 for any other failure.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser};
use raft_node::config::file;
use raft_node::config::parse_peer_spec;
use raft_node::tls::TlsConfig;
use raft_node::{KvNode, Limits, NodeConfig, NodeError, RaftTiming, ServeOptions};

/// The exit status after Raft stopped on a fatal storage error.
const FATAL_EXIT_STATUS: i32 = 3;

/// One node of the replicated key/value database.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// A TOML file of settings: each key a long flag name (`data-dir =
    /// "data/n1"`, `init = true`, `peers = ["1=...", "2=..."]`). Flags and
    /// KV_* variables override the file.
    #[arg(long, env = "KV_CONFIG")]
    config: Option<PathBuf>,
    /// Print the settings in effect (file, environment and flags merged)
    /// and exit.
    #[arg(long)]
    check_config: bool,
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long, env = "KV_NODE_ID")]
    id: u64,
    /// The address to listen on for clients (and peers, without --peer-listen).
    #[arg(long, env = "KV_LISTEN", default_value = "127.0.0.1:7001")]
    listen: String,
    /// The address clients (and peers, without --peer-advertise) reach this
    /// node at (default: --listen).
    #[arg(long, env = "KV_ADVERTISE")]
    advertise: Option<String>,
    /// A separate address to listen on for peers: Raft and the calls that
    /// initialize or change membership are then served there only, not on
    /// --listen. Firewall it to the cluster's hosts (and admin host).
    #[arg(long, env = "KV_PEER_LISTEN")]
    peer_listen: Option<String>,
    /// The address peers and admin tools reach the peer port at (default:
    /// --peer-listen). Needs --peer-listen.
    #[arg(long, env = "KV_PEER_ADVERTISE", requires = "peer_listen")]
    peer_advertise: Option<String>,
    /// An address to serve Prometheus metrics on over HTTP, at `/metrics`
    /// (default: none, no metrics).
    #[arg(long, env = "KV_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// This node's TLS certificate (PEM): the client port then serves TLS.
    /// Needs --tls-key and --peer-listen.
    #[arg(long, env = "KV_TLS_CERT", requires_all = ["tls_key", "peer_listen"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "KV_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA (PEM) that signs every node's certificate: the peer port then
    /// requires mutual TLS (callers present a certificate it signed), and
    /// this node's Raft calls present --tls-cert and accept only peers it
    /// signed. Without it the peer port stays plaintext. Needs --tls-cert.
    #[arg(long, env = "KV_TLS_CA", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// The node's data directory (Raft log and state machine).
    #[arg(long, env = "KV_DATA_DIR")]
    data_dir: PathBuf,
    /// The initial voters, as `id=host:port,...`, or `id=host:port/peer_host:port`
    /// for voters with a separate peer port (used with --init).
    #[arg(long, env = "KV_PEERS", value_delimiter = ',')]
    peers: Vec<String>,
    /// Form a new cluster of --peers if this node has no Raft state yet.
    /// Give it to one node, on the cluster's first start only.
    #[arg(long, env = "KV_INIT")]
    init: bool,
    /// With --init: seed the new cluster from this backup (`kvctl snapshot
    /// save`) instead of starting empty. The other nodes start empty,
    /// without --init, and receive the data from the leader.
    #[arg(long, env = "KV_RESTORE", requires = "init")]
    restore: Option<PathBuf>,
    /// Leader heartbeat period, in ms.
    #[arg(long, env = "KV_HEARTBEAT_MS", default_value_t = RaftTiming::default().heartbeat_ms)]
    heartbeat_ms: u64,
    /// Election timeout lower bound, in ms.
    #[arg(long, env = "KV_ELECTION_TIMEOUT_MS_MIN", default_value_t = RaftTiming::default().election_timeout_ms_min)]
    election_timeout_ms_min: u64,
    /// Election timeout upper bound, in ms.
    #[arg(long, env = "KV_ELECTION_TIMEOUT_MS_MAX", default_value_t = RaftTiming::default().election_timeout_ms_max)]
    election_timeout_ms_max: u64,
    /// Applied entries between snapshots.
    #[arg(long, env = "KV_SNAPSHOT_LOGS", default_value_t = RaftTiming::default().snapshot_logs_since_last)]
    snapshot_logs: u64,
    /// Log entries kept behind a snapshot.
    #[arg(long, env = "KV_LOGS_KEPT_AFTER_SNAPSHOT", default_value_t = RaftTiming::default().logs_kept_after_snapshot)]
    logs_kept_after_snapshot: u64,
    /// Bytes of applied log since the last snapshot that trigger a snapshot, in MiB.
    #[arg(long, env = "KV_SNAPSHOT_LOG_MB", default_value_t = RaftTiming::default().snapshot_log_bytes_max >> 20)]
    snapshot_log_mb: u64,
    /// Recent log entries held in memory, in MiB.
    #[arg(long, env = "KV_LOG_WINDOW_MB", default_value_t = RaftTiming::default().log_memory_window_bytes_max >> 20)]
    log_window_mb: u64,
    /// Engine memtable size, in MiB.
    #[arg(long, env = "KV_MEMTABLE_MB", default_value_t = 64)]
    memtable_mb: usize,
    /// Engine block cache size, in MiB.
    #[arg(long, env = "KV_BLOCK_CACHE_MB", default_value_t = 128)]
    block_cache_mb: usize,
    /// Values of at least this many bytes live in the engine's blob files,
    /// apart from its tables (compactions then move a pointer, not the
    /// value); 0 keeps every value in the tables.
    #[arg(long, env = "KV_BLOB_VALUE_MIN_BYTES", default_value_t = 1024)]
    blob_value_min_bytes: usize,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `raft_node=debug`.
    /// openraft's replication streams log every failed call to a peer (tens a
    /// second while one is down); they are off by default, and the node logs
    /// each peer's reachability changes instead (`raft_node::reachability`).
    #[arg(
        long,
        env = "KV_LOG",
        default_value = "info,openraft=warn,openraft::replication=off,openraft::engine::handler::replication_handler=off"
    )]
    log: String,
}

/// The command line, with the settings of the `--config` file (if any)
/// under it.
fn parse_args() -> Result<Args> {
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let Some(path) = file::config_path(&raw, std::env::var_os("KV_CONFIG")) else {
        return Ok(Args::parse_from(raw));
    };
    let path = PathBuf::from(path);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read --config {}", path.display()))?;
    let merged = file::args_with_file(&Args::command(), raw, &text, |var| std::env::var_os(var).is_some())
        .with_context(|| format!("--config {}", path.display()))?;
    Ok(Args::parse_from(merged))
}

/// The initial voters' client addresses and their separate peer addresses.
fn parse_peers(peers: &[String]) -> Result<(BTreeMap<u64, String>, BTreeMap<u64, String>)> {
    let mut members = BTreeMap::new();
    let mut peer_addrs = BTreeMap::new();
    for peer in peers.iter().filter(|p| !p.is_empty()) {
        let (id, node) = parse_peer_spec(peer)?;
        if members.insert(id, node.addr).is_some() {
            bail!("peer id {id} appears twice");
        }
        if let Some(peer_addr) = node.peer_addr {
            peer_addrs.insert(id, peer_addr);
        }
    }
    Ok((members, peer_addrs))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the node with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    if args.check_config {
        println!("{args:#?}");
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("invalid --log filter")?)
        .with_target(false)
        .init();
    let (members, peer_addrs) = parse_peers(&args.peers)?;
    if args.init && !members.contains_key(&args.id) {
        bail!("--init needs --peers that include this node (id {})", args.id);
    }
    let advertise = args.advertise.clone().unwrap_or_else(|| args.listen.clone());
    let peer_advertise = args.peer_advertise.clone().or_else(|| args.peer_listen.clone());
    // Peers reach a node with a peer port only there: an entry without its
    // peer address would leave this node unreachable for Raft.
    if args.init && peer_advertise.is_some() != peer_addrs.contains_key(&args.id) {
        bail!(
            "--peers gives node {} {}, but it {}; write its entry as id=client_addr/peer_addr \
             exactly when it runs with --peer-listen",
            args.id,
            peer_addrs
                .get(&args.id)
                .map_or_else(|| "no peer address".to_string(), |a| format!("the peer address {a}")),
            if peer_advertise.is_some() {
                "runs with --peer-listen"
            } else {
                "has no --peer-listen"
            }
        );
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsConfig::from_files(cert, key, args.tls_ca.as_deref())?),
        _ => None,
    };
    let config = NodeConfig {
        id: args.id,
        advertise_addr: advertise.clone(),
        peer_advertise_addr: peer_advertise.clone(),
        data_dir: args.data_dir.clone(),
        initial_members: members,
        initial_peer_addrs: peer_addrs,
        initialize: args.init,
        restore_from: args.restore.clone(),
        timing: RaftTiming {
            heartbeat_ms: args.heartbeat_ms,
            election_timeout_ms_min: args.election_timeout_ms_min,
            election_timeout_ms_max: args.election_timeout_ms_max,
            snapshot_logs_since_last: args.snapshot_logs,
            logs_kept_after_snapshot: args.logs_kept_after_snapshot,
            snapshot_log_bytes_max: args.snapshot_log_mb << 20,
            log_memory_window_bytes_max: args.log_window_mb << 20,
            log_segment_bytes_max: raft_node::log_store::SEGMENT_BYTES_MAX,
        },
        engine: storage::Options {
            memtable_bytes_max: args.memtable_mb << 20,
            block_cache_bytes: args.block_cache_mb << 20,
            blob_value_bytes_min: (args.blob_value_min_bytes > 0).then_some(args.blob_value_min_bytes),
            ..storage::Options::default()
        },
        limits: Limits::default(),
        tls,
        fs: storage::io::RealFs::shared(),
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let peer_listener = match &args.peer_listen {
        Some(peer_listen) => Some(
            tokio::net::TcpListener::bind(peer_listen)
                .await
                .with_context(|| format!("cannot listen for peers on {peer_listen}"))?,
        ),
        None => None,
    };
    let metrics_listener = match &args.metrics_listen {
        Some(metrics_listen) => Some(
            tokio::net::TcpListener::bind(metrics_listen)
                .await
                .with_context(|| format!("cannot listen for metrics scrapes on {metrics_listen}"))?,
        ),
        None => None,
    };
    let node = KvNode::start(config)
        .await
        .with_context(|| format!("cannot start node {} on {}", args.id, args.data_dir.display()))?;
    tracing::info!(
        id = args.id,
        listen = %args.listen,
        advertise = %advertise,
        peer_listen = ?args.peer_listen,
        peer_advertise = ?peer_advertise,
        metrics_listen = ?args.metrics_listen,
        tls = args.tls_cert.is_some(),
        peer_mtls = args.tls_ca.is_some(),
        "serving"
    );
    let options = ServeOptions::default()
        .with_peer_listener(peer_listener)
        .with_metrics_listener(metrics_listener);
    match node.serve_with_options(listener, options, shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            Ok(())
        }
        Err(NodeError::Fatal { reason }) => {
            tracing::error!(
                data_dir = %args.data_dir.display(),
                "exiting with status {FATAL_EXIT_STATUS}: raft stopped on a fatal storage error: {reason}"
            );
            std::process::exit(FATAL_EXIT_STATUS)
        }
        Err(error) => Err(error).context("serving"),
    }
}
