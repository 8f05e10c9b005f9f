//! The command line, as clap derive types.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Shown after `kvctl --help`.
pub const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  the operation failed (unreachable cluster, refused or unknown-outcome write,
     missing key for `get`, no agreed leader for `cluster status --require-leader`);
     the reason is printed on stderr
  2  bad usage (unknown option, missing argument)

A failed write says whether it was certainly not applied or may have been.";

/// The default `--endpoints`: the three nodes of `scripts/start-cluster.sh`.
pub const ENDPOINTS_DEFAULT: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

/// The command line client of the replicated key/value database.
#[derive(Debug, Parser)]
#[command(name = "kvctl", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Nodes to talk to, as a comma-separated list of host:port.
    #[arg(long, global = true, env = "KV_ENDPOINTS", value_delimiter = ',', default_value = ENDPOINTS_DEFAULT)]
    pub endpoints: Vec<String>,
    /// How results are printed.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Keys and values are given and printed as hex.
    #[arg(long, global = true)]
    pub hex: bool,
    /// Deadline of each operation, retries included, in ms (default 5000).
    #[arg(long, global = true, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: Option<u64>,
    /// Talk TLS, trusting the nodes whose certificates this CA (PEM)
    /// signed: the nodes' --tls-ca, or `ca.pem` of `kvctl cert`.
    #[arg(long, global = true, env = "KV_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// With --ca: the client certificate (PEM) to present, for admin calls
    /// to a peer port with mutual TLS. Needs --key.
    // (Named `client_*`, not `cert`/`key`: a global argument's id must
    // not clash with a subcommand's, such as `put`'s KEY.)
    #[arg(long = "cert", global = true, env = "KV_CERT", value_name = "FILE", requires_all = ["ca", "client_key"])]
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(
        long = "key",
        global = true,
        env = "KV_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Text for people: tables, `key<TAB>value` lines.
    Table,
    /// JSON for programs (one object per line for `range`).
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sets KEY to VALUE.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Prints the value of KEY (exit 1 if it is missing).
    Get {
        /// The key.
        key: String,
        /// Read any node's copy at once (may be slightly stale).
        #[arg(long)]
        stale: bool,
    },
    /// Deletes KEY (deleting a missing key succeeds).
    Delete {
        /// The key.
        key: String,
    },
    /// Prints the pairs with START <= key < END, as key<TAB>value lines.
    Range {
        /// First key (inclusive); "" for the beginning.
        start: String,
        /// End key (exclusive); the end of the keyspace if not given.
        end: Option<String>,
        /// Print at most this many pairs.
        #[arg(long)]
        limit: Option<u64>,
        /// Read any node's copy at once (may be slightly stale).
        #[arg(long)]
        stale: bool,
    },
    /// Writes key<TAB>value lines from FILE (or stdin) in atomic batches.
    BatchPut(BatchPutArgs),
    /// Cluster status and setup.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Membership changes.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Measures throughput and latency.
    Bench(BenchArgs),
    /// Backups: save one from the leader, check one.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Writes a throwaway CA and certificates for a local TLS cluster:
    /// ca.pem, nodeN.pem/.key per node, admin.pem/.key (for admin calls
    /// to peer ports with mutual TLS). For trying TLS out only.
    Cert(CertArgs),
}

/// The most node certificates `kvctl cert` writes at once.
pub const CERT_NODES_MAX: u64 = 100;

/// Arguments of `cert`.
#[derive(Debug, Args)]
pub struct CertArgs {
    /// The directory to write into (created if needed).
    #[arg(long, default_value = "certs")]
    pub dir: PathBuf,
    /// Node certificates to write: node1 up to nodeN.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=CERT_NODES_MAX))]
    pub nodes: u64,
    /// The names and IP addresses every certificate is valid for
    /// (comma-separated or repeated).
    #[arg(long = "host", value_delimiter = ',', default_value = "127.0.0.1,localhost")]
    pub hosts: Vec<String>,
    /// Replace certificates already in the directory.
    #[arg(long)]
    pub force: bool,
}

/// `snapshot` subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Saves a backup of the cluster to FILE: a consistent checkpoint taken
    /// by the leader after every write acknowledged before the call.
    /// Restore it with `kv-node --restore FILE --init --peers ...`.
    Save {
        /// The file to write (replaced atomically once complete).
        file: PathBuf,
    },
    /// Checks a backup file (every checksum) and prints its log index and
    /// term, voters, files, bytes, keys and keyspace digest.
    Status {
        /// The backup file.
        file: PathBuf,
    },
}

/// Arguments of `batch-put`.
#[derive(Debug, Args)]
pub struct BatchPutArgs {
    /// The input file; "-" or none for stdin.
    pub file: Option<PathBuf>,
    /// Lines are JSON objects {"key": "...", "value": "..."}.
    #[arg(long)]
    pub json_lines: bool,
    /// Pairs per batch (each batch is applied atomically).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub batch_size: u64,
}

/// `cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Shows every endpoint's view: role, term, leader, log and lag.
    Status {
        /// Exit 1 unless every endpoint answers and all agree on one leader.
        #[arg(long)]
        require_leader: bool,
        /// Also read each node's Prometheus metrics (at the address its
        /// status names, `kv-node --metrics-listen`) and show the key
        /// figures: role, term, commit/applied index, replication lag,
        /// requests, p99 latency, proposals in flight, memtable bytes, L0
        /// files, pending compaction bytes, stall time, RSS, open files.
        #[arg(long)]
        metrics: bool,
    },
    /// Forms a new cluster (once): the endpoints become voters 1..n in order.
    ///
    /// Nodes started with --peer-listen serve this call on their peer port
    /// only: give their peer ports as --endpoints and each member as
    /// ID=CLIENT_HOST:PORT/PEER_HOST:PORT.
    Init {
        /// A member as ID=HOST:PORT, or ID=HOST:PORT/PEER_HOST:PORT for a
        /// node with a separate peer port, instead of the endpoints
        /// (repeatable).
        #[arg(long = "member", value_name = "ID=ADDR[/PEER_ADDR]", value_parser = parse_member)]
        members: Vec<MemberSpec>,
    },
    /// Shows each endpoint's applied index, key count and keyspace digest.
    Digest,
}

/// `member` subcommands.
#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Adds node ID at ADDR as a learner (it receives the log, does not vote).
    ///
    /// Nodes started with --peer-listen serve membership calls on their
    /// peer port only: give their peer ports as --endpoints.
    #[command(alias = "add")]
    AddLearner {
        /// The new node's id (not 0).
        id: u64,
        /// The new node's client host:port.
        addr: String,
        /// The new node's peer host:port, when it runs with --peer-listen
        /// (default: peers reach it at ADDR).
        #[arg(long, value_name = "HOST:PORT")]
        peer_addr: Option<String>,
    },
    /// Makes learner ID a voter.
    Promote {
        /// The learner's id.
        id: u64,
    },
    /// Removes node ID from the cluster.
    Remove {
        /// The node's id.
        id: u64,
    },
}

/// What `bench` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Puts of random keys.
    Put,
    /// Gets of random (preloaded) keys.
    Get,
    /// Range pages of up to 100 pairs from random start keys.
    Range,
    /// Half puts, half gets.
    Mixed,
}

/// Arguments of `bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The operations to run.
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    pub workload: Workload,
    /// Concurrent clients (tasks sharing one connection per node).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub clients: u64,
    /// Operations in all.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ops: u64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(8..=4096))]
    pub key_size: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    pub value_size: u64,
    /// Distinct keys the operations pick from.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keyspace: u64,
    /// Reads are stale (served by any node).
    #[arg(long)]
    pub stale: bool,
    /// Each client writes in a session of its own (over the shared
    /// connections) instead of all sharing one; each session allows 1024
    /// unanswered writes, so thousands of clients need their own to
    /// overload a leader.
    #[arg(long)]
    pub session_per_client: bool,
    /// Stop after this many seconds even if operations remain.
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..))]
    pub duration_s: Option<u64>,
}

/// A member of `cluster init`: `ID=ADDR` or `ID=ADDR/PEER_ADDR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    /// The node id (not 0).
    pub id: u64,
    /// Its client host:port.
    pub addr: String,
    /// Its peer host:port, when it runs with --peer-listen.
    pub peer_addr: Option<String>,
}

fn parse_member(text: &str) -> Result<MemberSpec, String> {
    let (id, addrs) = text.split_once('=').ok_or("expected ID=HOST:PORT")?;
    let id: u64 = id.parse().map_err(|_| format!("node id {id:?} is not a number"))?;
    if id == 0 {
        return Err("node id 0 is reserved".to_owned());
    }
    let (addr, peer_addr) = match addrs.split_once('/') {
        Some((addr, peer_addr)) => (addr, Some(peer_addr)),
        None => (addrs, None),
    };
    for a in std::iter::once(addr).chain(peer_addr) {
        if !a.contains(':') {
            return Err(format!("address {a:?} is not host:port"));
        }
    }
    Ok(MemberSpec {
        id,
        addr: addr.to_owned(),
        peer_addr: peer_addr.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kvctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn global_options_work_before_and_after_the_subcommand() {
        let cli = parse(&[
            "--endpoints",
            "a:1,b:2",
            "get",
            "k",
            "--stale",
            "--hex",
            "--output",
            "json",
        ]);
        let cli = cli.expect("parses");
        assert_eq!(cli.endpoints, vec!["a:1", "b:2"]);
        assert!(cli.hex);
        assert_eq!(cli.output, OutputFormat::Json);
        assert!(matches!(cli.command, Command::Get { ref key, stale: true } if key == "k"));
    }

    #[test]
    fn endpoints_default_to_the_local_three_node_cluster() {
        // (KV_ENDPOINTS is not set in the test environment.)
        if std::env::var_os("KV_ENDPOINTS").is_none() {
            let cli = parse(&["delete", "k"]).expect("parses");
            assert_eq!(cli.endpoints.len(), 3);
            assert_eq!(cli.endpoints[0], "127.0.0.1:7001");
        }
    }

    #[test]
    fn range_takes_an_optional_end_and_limit() {
        let cli = parse(&["range", "a", "--limit", "5"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Range {
                end: None,
                limit: Some(5),
                ..
            }
        ));
        let cli = parse(&["range", "a", "z"]).expect("parses");
        assert!(matches!(cli.command, Command::Range { end: Some(ref e), .. } if e == "z"));
    }

    #[test]
    fn members_parse_as_id_equals_address() {
        let cli = parse(&["cluster", "init", "--member", "1=a:1", "--member", "2=b:2"]).expect("parses");
        let Command::Cluster(ClusterCommand::Init { members }) = cli.command else {
            panic!("not cluster init");
        };
        let member = |id, addr: &str, peer_addr: Option<&str>| MemberSpec {
            id,
            addr: addr.to_owned(),
            peer_addr: peer_addr.map(str::to_owned),
        };
        assert_eq!(members, vec![member(1, "a:1", None), member(2, "b:2", None)]);
        let cli = parse(&["cluster", "init", "--member", "1=a:1/a:51"]).expect("parses");
        let Command::Cluster(ClusterCommand::Init { members }) = cli.command else {
            panic!("not cluster init");
        };
        assert_eq!(members, vec![member(1, "a:1", Some("a:51"))]);
        assert!(parse(&["cluster", "init", "--member", "1=a:1/"]).is_err());
        assert!(parse(&["cluster", "init", "--member", "0=a:1"]).is_err());
        assert!(parse(&["cluster", "init", "--member", "x=a:1"]).is_err());
        assert!(parse(&["cluster", "init", "--member", "1"]).is_err());
    }

    #[test]
    fn bad_usage_is_a_clap_error() {
        for args in [
            &["put", "k"][..],
            &["frobnicate"],
            &["bench", "--workload", "nope"],
            &["batch-put", "--batch-size", "0"],
            &["--output", "xml", "get", "k"],
            &["--timeout-ms", "0", "get", "k"],
        ] {
            let error = parse(args).expect_err("refused");
            assert_eq!(error.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn bench_has_sane_defaults() {
        let cli = parse(&["bench"]).expect("parses");
        let Command::Bench(bench) = cli.command else {
            panic!("not bench");
        };
        assert_eq!((bench.workload, bench.clients, bench.ops), (Workload::Put, 16, 10_000));
    }
}
