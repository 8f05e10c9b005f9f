//! Goal: a follower paused (SIGSTOP) for several election timeouts under
//! load neither stalls writes nor loses or breaks anything, and catches up
//! once thawed (SIGCONT). The paused leader is `freeze_leader`.

use std::time::{Duration, Instant};

use chaos::check::availability;
use chaos::harness::ClusterOptions;
use chaos::scenario::Run;
use chaos::workload::WorkloadOptions;

/// Election timeouts (the maximum) a follower stays paused, at least.
const PAUSE_ELECTION_TIMEOUTS_MIN: u64 = 3;
/// Election timeouts (the maximum) a follower stays paused, at most.
const PAUSE_ELECTION_TIMEOUTS_MAX: u64 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_follower_stalls_nothing_and_catches_up() {
    // A paused follower holds open sockets and answers nothing: the leader
    // must keep committing with the other follower, and the thawed one must
    // take the entries it missed (or a snapshot) without confusion.
    let options = ClusterOptions::fast(3);
    let timeout_ms = options.election_timeout_ms_max;
    let mut run = Run::start("pause_follower", options, 3).await;
    run.start_workload(WorkloadOptions::default());
    while run.next_round() {
        tokio::time::sleep(run.random_ms(300, 1000)).await;
        let leader = run.leader().await;
        let follower = run.random_follower(leader);
        let paused = run.random_ms(
            timeout_ms * PAUSE_ELECTION_TIMEOUTS_MIN,
            timeout_ms * PAUSE_ELECTION_TIMEOUTS_MAX,
        );
        run.pause(follower, "follower", paused);
        let paused_at = Instant::now();
        // The majority keeps accepting writes while the follower sleeps.
        let window = availability::measure(&run.probe, paused_at).await;
        run.windows.push(window);
        tokio::time::sleep(paused.saturating_sub(paused_at.elapsed())).await;
        let leader_now = run.leader().await;
        run.resume(follower, &format!(" (leader {leader_now})"));
        run.wait_caught_up(follower).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    run.finish().await;
}
