//! Goal: a follower cut off from both peers (a minority partition) while
//! the majority keeps serving loses and breaks nothing, falls behind while
//! cut off, and catches up once the partition heals.

use std::time::Instant;

use chaos::check::availability;
use chaos::harness::ClusterOptions;
use chaos::scenario::Run;
use chaos::workload::WorkloadOptions;

/// Election timeouts (the maximum) the follower stays cut off, at least.
const CUT_ELECTION_TIMEOUTS_MIN: u64 = 3;
/// Election timeouts (the maximum) the follower stays cut off, at most.
const CUT_ELECTION_TIMEOUTS_MAX: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_follower_falls_behind_and_catches_up() {
    // The cut-off follower times out and campaigns again and again at
    // higher terms; clients still reach it. It must answer nothing stale,
    // and its higher term on healing must not cost an acknowledged write.
    let options = ClusterOptions::fast(3);
    let timeout_ms = options.election_timeout_ms_max;
    let mut run = Run::start("partition_follower", options, 3).await;
    run.start_workload(WorkloadOptions::default());
    while run.next_round() {
        tokio::time::sleep(run.random_ms(300, 1000)).await;
        let leader = run.leader().await;
        let follower = run.random_follower(leader);
        let cut = run.random_ms(
            timeout_ms * CUT_ELECTION_TIMEOUTS_MIN,
            timeout_ms * CUT_ELECTION_TIMEOUTS_MAX,
        );
        run.fault(format!(
            "cut follower {follower} off from both peers for {} ms",
            cut.as_millis()
        ));
        run.cluster.isolate(follower);
        let cut_at = Instant::now();
        // The majority keeps accepting writes.
        let window = availability::measure(&run.probe, cut_at).await;
        run.windows.push(window);
        tokio::time::sleep(cut.saturating_sub(cut_at.elapsed())).await;
        // Evidence the cut bit: the majority committed past what the
        // follower applied (the workload writes all the time).
        let committed = run
            .cluster
            .admin()
            .leader_status()
            .await
            .expect("leader status")
            .commit_index;
        let endpoint = run.cluster.endpoint(follower);
        let applied = run
            .cluster
            .admin()
            .status(&endpoint)
            .await
            .expect("status")
            .applied_index;
        assert!(
            applied < committed,
            "follower {follower} applied {applied}, the majority committed {committed}: the cut did nothing"
        );
        run.note(format!(
            "heal every link (follower {follower} applied {applied}, majority committed {committed})"
        ));
        run.cluster.links.heal();
        run.wait_caught_up(follower).await;
    }
    run.finish().await;
}
