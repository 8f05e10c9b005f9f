//! One chaos run: seed and sizes from the environment, a cluster, a
//! workload, a fault loop written by the test, then the checks.
//!
//! Environment (all optional):
//!
//! - `CHAOS_SEED`: the seed of every random choice (faults, victims,
//!   operations); default: from the clock. Timing is real, so a rerun with
//!   the same seed makes the same choices but not the same interleaving.
//! - `CHAOS_ITERATIONS`: fault rounds at least (default per scenario).
//! - `CHAOS_SECONDS`: keep starting rounds until this many seconds of
//!   faults passed (default 0: only `CHAOS_ITERATIONS`).
//!
//! On any failure (a check, or a panic in the fault loop) the run prints
//! its seed and rerun command and keeps its directory: node logs and
//! `history.jsonl`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_client::{Client, Consistency};

use crate::check::{self, Verdict};
use crate::harness::{Cluster, ClusterOptions, CLUSTER_READY_TIMEOUT};
use crate::history::{write_jsonl, Recorder};
use crate::proxy::NodeId;
use crate::workload::{Workload, WorkloadOptions};

/// Fault rounds of one run, at most, whatever the environment says.
pub const ROUNDS_MAX: u32 = 10_000;
/// How long replicas may take to converge once every fault healed.
pub const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to catch up with the leader after a fault.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the leader may take to purge its log past a stopped follower.
pub const PURGE_WAIT_MAX: Duration = Duration::from_secs(30);

/// Seed and sizes of a run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// The test binary's name (for the rerun command).
    pub name: String,
    /// The seed of every random choice.
    pub seed: u64,
    /// Fault rounds at least.
    pub iterations: u32,
    /// Keep starting rounds until this much time of faults passed.
    pub seconds: u64,
}

impl ChaosConfig {
    /// Reads `CHAOS_SEED`, `CHAOS_ITERATIONS`, `CHAOS_SECONDS`.
    pub fn from_env(name: &str, default_iterations: u32) -> ChaosConfig {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok());
        let seed = var("CHAOS_SEED").unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            nanos ^ u64::from(std::process::id()).rotate_left(32)
        });
        ChaosConfig {
            name: name.to_owned(),
            seed,
            iterations: var("CHAOS_ITERATIONS").map_or(default_iterations, |n| n.min(u64::from(ROUNDS_MAX)) as u32),
            seconds: var("CHAOS_SECONDS").unwrap_or(0),
        }
    }

    /// The command that reruns this run.
    pub fn rerun_command(&self) -> String {
        format!(
            "CHAOS_SEED={} CHAOS_ITERATIONS={} CHAOS_SECONDS={} cargo test -p chaos --test {} -- --nocapture",
            self.seed, self.iterations, self.seconds, self.name
        )
    }
}

/// A chaos run in progress.
pub struct Run {
    /// Seed and sizes.
    pub config: ChaosConfig,
    /// The nodes and links.
    pub cluster: Cluster,
    /// Random choices of the fault loop (from the seed).
    pub rng: fastrand::Rng,
    /// The operations of the workload.
    pub recorder: Arc<Recorder>,
    /// Unavailability windows measured after leader kills.
    pub windows: Vec<Option<Duration>>,
    /// A client with short deadlines for probes.
    pub probe: Client,
    /// Faults injected (kills, freezes, wipes, dropped or delayed links),
    /// for the report; recoveries and observations are only logged.
    pub faults: Vec<String>,
    workload: Option<Workload>,
    rounds: u32,
    faults_started: Option<Instant>,
    history_written: bool,
}

impl Run {
    /// Starts the cluster; prints the seed and the rerun command first.
    pub async fn start(name: &str, options: ClusterOptions, default_iterations: u32) -> Run {
        let config = ChaosConfig::from_env(name, default_iterations);
        eprintln!(
            "chaos {name}: seed {} iterations {} seconds {}\nchaos {name}: rerun with: {}",
            config.seed,
            config.iterations,
            config.seconds,
            config.rerun_command()
        );
        let cluster = match Cluster::start(name, options).await {
            Ok(cluster) => cluster,
            Err(error) => panic!("chaos {name}: seed {}: cluster did not start: {error:#}", config.seed),
        };
        eprintln!("chaos {name}: run directory {}", cluster.dir.display());
        let probe = Client::builder(cluster.endpoints())
            .request_timeout(Duration::from_millis(1000))
            .attempt_timeout(Duration::from_millis(500))
            .connect_timeout(Duration::from_millis(300))
            .backoff_max(Duration::from_millis(100))
            .build()
            .expect("probe client");
        Run {
            rng: fastrand::Rng::with_seed(config.seed),
            config,
            cluster,
            recorder: Arc::new(Recorder::default()),
            windows: Vec::new(),
            probe,
            faults: Vec::new(),
            workload: None,
            rounds: 0,
            faults_started: None,
            history_written: false,
        }
    }

    /// Starts the workload (its operations are drawn from the seed too).
    pub fn start_workload(&mut self, options: WorkloadOptions) {
        let seed = self.config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let workload = Workload::start(&self.cluster.endpoints(), &options, seed, self.recorder.clone())
            .expect("starting the workload");
        self.workload = Some(workload);
    }

    /// Whether to run another fault round: fewer than `iterations` done, or
    /// fewer than `seconds` passed; never past [`ROUNDS_MAX`].
    pub fn next_round(&mut self) -> bool {
        let started = *self.faults_started.get_or_insert_with(Instant::now);
        let more = self.rounds < self.config.iterations || started.elapsed().as_secs() < self.config.seconds;
        if more && self.rounds < ROUNDS_MAX {
            self.rounds += 1;
            self.cluster.check_alive().expect("a node died on its own");
            true
        } else {
            false
        }
    }

    /// The current fault round, from 1 (0 before the first).
    pub fn round(&self) -> u32 {
        self.rounds
    }

    /// Notes an injected fault (a kill, a freeze, a wipe, a cut or delayed
    /// link): logged and counted in the report.
    pub fn fault(&mut self, what: impl Into<String>) {
        let what = what.into();
        self.log(&format!("fault: {what}"));
        self.faults.push(what);
    }

    /// Notes a recovery (restart, thaw, heal) or an observation (a new
    /// leader, a snapshot installed): logged, not counted as a fault.
    pub fn note(&mut self, what: impl Into<String>) {
        self.log(&what.into());
    }

    fn log(&self, what: &str) {
        eprintln!(
            "chaos {}: round {} at {} ms: {what}",
            self.config.name,
            self.rounds,
            self.recorder.now().as_millis()
        );
    }

    /// The current leader's id (waits up to 10 s).
    pub async fn leader(&self) -> NodeId {
        self.cluster
            .wait_leader(Duration::from_secs(10))
            .await
            .expect("no leader")
    }

    /// A member other than `leader`, drawn at random.
    pub fn random_follower(&mut self, leader: NodeId) -> NodeId {
        let followers: Vec<NodeId> = self.cluster.members().into_iter().filter(|id| *id != leader).collect();
        assert!(!followers.is_empty(), "no member besides leader {leader}");
        followers[self.rng.usize(..followers.len())]
    }

    /// Injects a pause: SIGSTOPs node `id` (`role` names it in the log).
    /// Thaw it with [`Run::resume`].
    pub fn pause(&mut self, id: NodeId, role: &str, frozen: Duration) {
        self.fault(format!("SIGSTOP {role} {id} for {} ms", frozen.as_millis()));
        let index = self.cluster.index_of(id);
        self.cluster.freeze(index).expect("SIGSTOP");
    }

    /// SIGCONTs node `id` paused by [`Run::pause`]; `why` adds to the log.
    pub fn resume(&mut self, id: NodeId, why: &str) {
        self.note(format!("SIGCONT node {id}{why}"));
        let index = self.cluster.index_of(id);
        self.cluster.thaw(index).expect("SIGCONT");
    }

    /// Waits until node `id` applied everything the leader had committed
    /// when asked; panics after [`CATCH_UP_TIMEOUT`].
    pub async fn wait_caught_up(&mut self, id: NodeId) {
        let started = Instant::now();
        self.cluster
            .wait_caught_up(id, CATCH_UP_TIMEOUT)
            .await
            .unwrap_or_else(|error| panic!("node {id} did not catch up: {error:#}"));
        self.note(format!("node {id} caught up in {} ms", started.elapsed().as_millis()));
    }

    /// SIGKILLs follower `id` (an injected fault) and waits until the
    /// leader purged its log past the follower's last entry, so that,
    /// restarted, the follower can only catch up by a snapshot. Returns
    /// that last log index. Needs a small `snapshot_logs` and a workload
    /// that writes.
    pub async fn kill_behind_purge(&mut self, id: NodeId) -> u64 {
        let endpoint = self.cluster.endpoint(id);
        let behind = self
            .cluster
            .admin()
            .status(&endpoint)
            .await
            .expect("status")
            .last_log_index;
        self.fault(format!("SIGKILL follower {id} at log index {behind}"));
        self.cluster.kill(self.cluster.index_of(id));
        let deadline = Instant::now() + PURGE_WAIT_MAX;
        loop {
            let leader = self.cluster.admin().leader_status().await;
            if leader.is_ok_and(|s| s.purged_index > behind + 1) {
                return behind;
            }
            assert!(Instant::now() < deadline, "the leader never purged past {behind}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A random duration in `[min_ms, max_ms]`.
    pub fn random_ms(&mut self, min_ms: u64, max_ms: u64) -> Duration {
        Duration::from_millis(self.rng.u64(min_ms..=max_ms))
    }

    /// Stops the workload, heals and restarts everything, waits for the
    /// replicas to converge, runs every check and panics (with the seed and
    /// rerun command) if one fails or is inconclusive.
    pub async fn finish(mut self) {
        let name = self.config.name.clone();
        let workload = match self.workload.take() {
            Some(workload) => {
                let clients = workload.clients();
                crate::workload::verdict(clients, &workload.stop().await)
            }
            None => Verdict::Pass("no workload".to_owned()),
        };
        self.cluster.heal_and_restart_all().expect("restarting every node");
        self.cluster
            .wait_ready(CLUSTER_READY_TIMEOUT)
            .await
            .expect("cluster ready after healing");
        let convergence = check::convergence::wait(
            self.cluster.admin(),
            &self.cluster.member_endpoints(),
            CONVERGENCE_TIMEOUT,
        )
        .await;
        let final_state = self.final_state().await;
        let ops = self.recorder.ops();
        self.write_history();
        let durability = check::durability::check(&ops, &final_state);
        let linearizability = check::linearizability::check(&ops);
        let atomicity = check::atomicity::check(&ops);
        let snapshot = check::snapshot::check(&ops);
        let availability = check::availability::check(&self.windows, check::availability::WRITE_UNAVAILABLE_MAX);
        let count = |outcome| ops.iter().filter(|op| op.outcome == outcome).count();
        use crate::history::Outcome;
        let report = format!(
            "chaos {name}: seed {}: {} rounds, {} faults injected; {} ops ({} ok, {} failed, {} unknown)\n  \
             workload: {workload}\n  durability: {durability}\n  linearizability: {linearizability}\n  \
             batch atomicity: {atomicity}\n  range snapshot: {snapshot}\n  convergence: {convergence}\n  availability: {availability}",
            self.config.seed,
            self.rounds,
            self.faults.len(),
            ops.len(),
            count(Outcome::Ok),
            count(Outcome::Fail),
            count(Outcome::Unknown),
        );
        eprintln!("{report}");
        let verdicts = [
            &workload,
            &durability,
            &linearizability,
            &atomicity,
            &convergence,
            &availability,
        ];
        if !run_passes(&verdicts) {
            panic!(
                "chaos {name} FAILED (seed {}); rerun with: {}\n{report}",
                self.config.seed,
                self.config.rerun_command()
            );
        }
        self.cluster.success();
    }

    /// The whole key set, read linearizably once everything healed.
    async fn final_state(&self) -> BTreeMap<String, String> {
        let client = self.cluster.admin();
        let mut last_error = None;
        for _ in 0..20 {
            match client.range_page("k", "k~", 0, Consistency::Linearizable).await {
                Ok(page) => {
                    assert!(page.next_start.is_none(), "the final range was paged");
                    return page
                        .pairs
                        .into_iter()
                        .map(|(k, v)| {
                            (
                                String::from_utf8_lossy(&k).into_owned(),
                                String::from_utf8_lossy(&v).into_owned(),
                            )
                        })
                        .collect();
                }
                Err(error) => last_error = Some(error),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("the final read failed 20 times: {last_error:?}")
    }

    fn write_history(&mut self) {
        let path = self.cluster.dir.join("history.jsonl");
        match write_jsonl(&path, &self.recorder.ops()) {
            Ok(()) => eprintln!("chaos {}: history in {}", self.config.name, path.display()),
            Err(error) => eprintln!("chaos {}: cannot write {}: {error}", self.config.name, path.display()),
        }
        self.history_written = true;
    }
}

/// Whether a run with these verdicts passes: every check passed. An
/// inconclusive check fails the run too: it checked nothing.
pub fn run_passes(verdicts: &[&Verdict]) -> bool {
    verdicts.iter().all(|v| v.is_pass())
}

impl Drop for Run {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if !self.history_written {
                self.write_history();
            }
            eprintln!(
                "chaos {} FAILED with seed {}; rerun with:\n  {}\nkept: {}",
                self.config.name,
                self.config.seed,
                self.config.rerun_command(),
                self.cluster.dir.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inconclusive_check_fails_the_run() {
        // A checker that gave up proved nothing; the run must not pass.
        let pass = Verdict::Pass("checked".into());
        let gave_up = Verdict::Inconclusive("search budget spent".into());
        let fail = Verdict::Fail("stale read".into());
        assert!(run_passes(&[&pass, &pass]));
        assert!(!run_passes(&[&pass, &gave_up]));
        assert!(!run_passes(&[&fail, &pass]));
    }
}
