//! `kvctl` end to end against a real three-node cluster in this process:
//! every subcommand, its output formats and exit codes.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use raft_node::testing::TestCluster;

/// Runs kvctl against `endpoints` with `args` and `stdin`, off the async
/// runtime so the in-process nodes keep serving.
async fn kvctl_with_input(endpoints: &[String], args: &[&str], stdin: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kvctl"));
    command
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .args(args)
        .env_remove("KV_ENDPOINTS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let stdin = stdin.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().expect("kvctl starts");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin.as_bytes()).expect("write stdin");
        drop(input);
        child.wait_with_output().expect("kvctl runs")
    })
    .await
    .expect("join")
}

async fn kvctl(endpoints: &[String], args: &[&str]) -> Output {
    kvctl_with_input(endpoints, args, "").await
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts success and returns stdout.
fn ok(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(output));
    stdout(output)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_commands_put_get_delete_and_range() {
    let cluster = TestCluster::start(3).await;
    let e = cluster.addrs();

    assert!(ok(&kvctl(&e, &["put", "alpha", "1"]).await).starts_with("OK (applied at index"));
    ok(&kvctl(&e, &["put", "beta", "2"]).await);
    let put = json(&ok(&kvctl(&e, &["--output", "json", "put", "gamma", "3"]).await));
    assert_eq!(put["duplicate"], false);
    assert!(put["applied_index"].as_u64().is_some_and(|i| i > 0));

    assert_eq!(ok(&kvctl(&e, &["get", "alpha"]).await), "1\n");
    // A stale read may briefly miss a fresh write, but never errs otherwise.
    let stale = kvctl(&e, &["get", "alpha", "--stale"]).await;
    assert!(
        stdout(&stale) == "1\n" || stale.status.code() == Some(1),
        "{}",
        stderr(&stale)
    );
    assert_eq!(
        json(&ok(&kvctl(&e, &["get", "beta", "--output", "json"]).await))["value"],
        "2"
    );

    let missing = kvctl(&e, &["get", "nope"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(missing.stdout.is_empty(), "a missing key prints nothing on stdout");
    assert!(stderr(&missing).contains("not found"), "{}", stderr(&missing));

    assert_eq!(ok(&kvctl(&e, &["range", "a"]).await), "alpha\t1\nbeta\t2\ngamma\t3\n");
    assert_eq!(ok(&kvctl(&e, &["range", "a", "c"]).await), "alpha\t1\nbeta\t2\n");
    assert_eq!(ok(&kvctl(&e, &["range", "", "--limit", "1"]).await), "alpha\t1\n");
    let lines = ok(&kvctl(&e, &["range", "b", "--output", "json"]).await);
    let objects: Vec<_> = lines.lines().map(json).collect();
    assert_eq!(objects.len(), 2);
    assert_eq!(
        (objects[0]["key"].as_str(), objects[0]["value"].as_str()),
        (Some("beta"), Some("2"))
    );

    ok(&kvctl(&e, &["delete", "beta"]).await);
    assert_eq!(kvctl(&e, &["get", "beta"]).await.status.code(), Some(1));
    ok(&kvctl(&e, &["delete", "beta"]).await); // deleting a missing key succeeds

    // Hex keys and values: binary data round-trips.
    ok(&kvctl(&e, &["--hex", "put", "00ff", "0a0b"]).await);
    assert_eq!(ok(&kvctl(&e, &["--hex", "get", "00ff"]).await), "0a0b\n");
    assert_eq!(ok(&kvctl(&e, &["--hex", "range", "00", "01"]).await), "00ff\t0a0b\n");

    // Bad input is refused by the server: exit 1, not applied.
    let refused = kvctl(&e, &["put", "", "v"]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("not applied"), "{}", stderr(&refused));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_put_reads_tsv_files_and_json_lines_from_stdin() {
    let cluster = TestCluster::start(3).await;
    let e = cluster.addrs();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pairs.tsv");
    let tsv: String = (0..250).map(|i| format!("k{i:03}\tv{i}\n")).collect();
    std::fs::write(&file, tsv).expect("write input");

    let path = file.to_str().expect("utf-8 path");
    let summary = json(&ok(&kvctl(
        &e,
        &["--output", "json", "batch-put", path, "--batch-size", "100"],
    )
    .await));
    assert_eq!(
        (summary["pairs"].as_u64(), summary["batches"].as_u64()),
        (Some(250), Some(3))
    );
    assert_eq!(ok(&kvctl(&e, &["get", "k249"]).await), "v249\n");
    assert_eq!(
        ok(&kvctl(&e, &["range", "k", "--limit", "1000"]).await).lines().count(),
        250
    );

    // range --output json | batch-put --json-lines copies pairs.
    let exported = ok(&kvctl(&e, &["--output", "json", "range", "k000", "k010"]).await);
    let renamed = exported.replace("\"k0", "\"copy0");
    let text = ok(&kvctl_with_input(&e, &["batch-put", "-", "--json-lines"], &renamed).await);
    assert!(text.starts_with("wrote 10 pairs in 1 batches"), "{text}");
    assert_eq!(ok(&kvctl(&e, &["get", "copy009"]).await), "v9\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_and_digest_describe_every_node() {
    let mut cluster = TestCluster::start(3).await;
    let e = cluster.addrs();
    ok(&kvctl(&e, &["put", "k", "v"]).await);

    let table = ok(&kvctl(&e, &["cluster", "status", "--require-leader"]).await);
    assert!(table.starts_with("ID"), "{table}");
    assert_eq!(
        table.matches("leader ").count() + table.matches("follower").count(),
        3,
        "{table}"
    );
    let rows = json(&ok(&kvctl(&e, &["--output", "json", "cluster", "status"]).await));
    let rows = rows.as_array().expect("array");
    assert_eq!(rows.len(), 3);
    assert!(rows
        .iter()
        .all(|r| r["reachable"] == true && r["leader_id"] == rows[0]["leader_id"]));

    // Replicas converge: wait until the digests agree at one applied index.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let digest = ok(&kvctl(&e, &["cluster", "digest"]).await);
        if digest.contains("replicas agree") {
            assert_eq!(digest.lines().filter(|l| l.contains(" 1  ")).count(), 3, "{digest}");
            break;
        }
        assert!(Instant::now() < deadline, "replicas never agreed: {digest}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A stopped node shows as unreachable and fails --require-leader.
    let leader = cluster.wait_for_leader(None).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.stop(follower).await;
    let output = kvctl(&e, &["cluster", "status", "--require-leader"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("unreachable"), "{}", stdout(&output));
    assert!(stderr(&output).contains("agree on one leader"), "{}", stderr(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_metrics_shows_each_nodes_figures_from_its_metrics_endpoint() {
    // An operator's one-look view: every node's scraped figures, and the
    // leader's request counter moving with writes made through kvctl.
    let cluster = TestCluster::start_with_metrics(3).await;
    let e = cluster.addrs();
    let leader = cluster.wait_for_leader(None).await;
    let leader_requests = |rows: &serde_json::Value| {
        rows.as_array()
            .expect("array")
            .iter()
            .find(|r| r["id"] == leader)
            .and_then(|r| r["metrics"]["requests"].as_f64())
            .unwrap_or(0.0)
    };
    let before = json(&ok(
        &kvctl(&e, &["--output", "json", "cluster", "status", "--metrics"]).await
    ));
    for i in 0..5 {
        ok(&kvctl(&e, &["put", &format!("m{i}"), "v"]).await);
    }
    let rows = json(&ok(
        &kvctl(&e, &["--output", "json", "cluster", "status", "--metrics"]).await
    ));
    for row in rows.as_array().expect("array") {
        let id = row["id"].as_u64().expect("id");
        assert_eq!(row["metrics_addr"], serde_json::Value::from(cluster.metrics_addr(id)));
        assert_eq!(row["cluster_id"].as_str().map(str::len), Some(32), "{row}");
        let metrics = &row["metrics"];
        assert_eq!(metrics["role"], row["role"], "{row}");
        for figure in [
            "term",
            "applied_index",
            "memtable_bytes",
            "l0_files",
            "rss_bytes",
            "open_fds",
        ] {
            assert!(metrics[figure].as_f64().is_some(), "{figure} missing: {row}");
        }
    }
    assert!(
        leader_requests(&rows) >= leader_requests(&before) + 5.0,
        "the leader counted the puts: {before} -> {rows}"
    );
    let leader_row = &rows
        .as_array()
        .expect("array")
        .iter()
        .find(|r| r["id"] == leader)
        .expect("leader row")["metrics"];
    assert!(leader_row["latency_p99_seconds"].as_f64().is_some(), "{leader_row}");
    assert!(leader_row["replication_lag_entries"].as_f64().is_some(), "{leader_row}");

    let table = ok(&kvctl(&e, &["cluster", "status", "--metrics"]).await);
    println!("{table}");
    let figures = table.split_once("\nID ").map(|(_, rest)| rest).expect("a second table");
    assert!(figures.contains("P99") && figures.contains("PENDING"), "{table}");
    assert_eq!(figures.lines().count(), 4, "a header and three nodes: {table}");
    assert!(figures.contains("leader") && figures.contains("<="), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_metrics_says_which_nodes_serve_no_metrics() {
    // A node started without --metrics-listen is named, not a failure.
    let cluster = TestCluster::start(1).await;
    let e = cluster.addrs();
    let table = ok(&kvctl(&e, &["cluster", "status", "--metrics"]).await);
    assert!(
        table.contains("serves no metrics (start it with --metrics-listen)"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_init_forms_a_cluster_that_status_then_accepts() {
    // The start script's sequence: start nodes, init, poll --require-leader.
    let cluster = TestCluster::start_uninitialized(3).await;
    let e = cluster.addrs();
    let text = ok(&kvctl(&e, &["cluster", "init"]).await);
    assert!(text.contains("initialized a cluster of 3 voters"), "{text}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while kvctl(&e, &["cluster", "status", "--require-leader"])
        .await
        .status
        .code()
        != Some(0)
    {
        assert!(Instant::now() < deadline, "no leader after init");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ok(&kvctl(&e, &["put", "k", "v"]).await);
    let again = kvctl(&e, &["cluster", "init"]).await;
    assert_eq!(again.status.code(), Some(1), "a second init fails");
    assert!(stderr(&again).contains("initialize failed"), "{}", stderr(&again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_promoted_and_removed() {
    let mut cluster = TestCluster::start(3).await;
    let e = cluster.addrs();
    let addr4 = cluster.start_extra(4).await;
    // A write first: until the new leader commits an entry of its term, the
    // server refuses membership changes (FAILED_PRECONDITION, "already
    // undergoing a configuration change").
    ok(&kvctl(&e, &["put", "k", "v"]).await);

    let added = ok(&kvctl(&e, &["member", "add-learner", "4", &addr4]).await);
    assert!(added.contains(&addr4) && added.contains("learner"), "{added}");

    let promoted = json(&ok(&kvctl(&e, &["--output", "json", "member", "promote", "4"]).await));
    let members = promoted["members"].as_array().expect("members");
    assert_eq!(members.iter().filter(|m| m["voter"] == true).count(), 4, "{promoted}");

    let removed = json(&ok(&kvctl(&e, &["--output", "json", "member", "remove", "4"]).await));
    let members = removed["members"].as_array().expect("members");
    assert!(members.iter().all(|m| m["id"] != 4), "{removed}");

    let unknown = kvctl(&e, &["member", "promote", "9"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("not a member"), "{}", stderr(&unknown));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_cluster_with_peer_ports_are_added_through_the_peer_ports() {
    // Membership calls are served on peer ports only; kvctl reaches them
    // there and tells the cluster where the new node serves its peers.
    let mut cluster = TestCluster::start_with_peer_ports(3).await;
    let e = cluster.addrs();
    let peers: Vec<String> = (1..=3).map(|id| cluster.peer_addr(id)).collect();
    let addr4 = cluster.start_extra(4).await;
    let peer4 = cluster.peer_addr(4);
    ok(&kvctl(&e, &["put", "k", "v"]).await);

    let refused = kvctl(&e, &["member", "add", "4", &addr4, "--peer-addr", &peer4]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("peer port"), "{}", stderr(&refused));

    let added = json(&ok(&kvctl(
        &peers,
        &["--output", "json", "member", "add", "4", &addr4, "--peer-addr", &peer4],
    )
    .await));
    let members = added["members"].as_array().expect("members");
    let member4 = members.iter().find(|m| m["id"] == 4).expect("node 4 added");
    assert_eq!(
        (&member4["addr"], &member4["peer_addr"]),
        (&addr4.clone().into(), &peer4.clone().into())
    );
    ok(&kvctl(&peers, &["member", "promote", "4"]).await);

    // Clients keep using the client ports; node 4 gets the log over its peer port.
    ok(&kvctl(&e, &["put", "k2", "v2"]).await);
    let node4 = vec![addr4.clone()];
    let deadline = Instant::now() + Duration::from_secs(20);
    while stdout(&kvctl(&node4, &["get", "k2", "--stale"]).await) != "v2\n" {
        assert!(Instant::now() < deadline, "node 4 never got k2");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = json(&ok(&kvctl(&node4, &["--output", "json", "cluster", "status"]).await));
    assert_eq!(status[0]["peer_addr"], serde_json::Value::from(peer4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_throughput_and_latency() {
    let cluster = TestCluster::start(3).await;
    let e = cluster.addrs();
    for workload in ["put", "mixed", "get", "range"] {
        let args = [
            "--output",
            "json",
            "bench",
            "--workload",
            workload,
            "--clients",
            "4",
            "--ops",
            "200",
            "--keyspace",
            "300",
        ];
        let report = json(&ok(&kvctl(&e, &args).await));
        assert_eq!(report["ops"], 200, "{report}");
        assert_eq!(report["errors"], 0, "{report}");
        assert!(report["ops_per_sec"].as_f64().is_some_and(|t| t > 0.0), "{report}");
        let latency = &report["latency_ms"];
        assert!(latency["p50"].as_f64() <= latency["max"].as_f64(), "{report}");
    }
    let table = ok(&kvctl(
        &e,
        &[
            "bench",
            "--ops",
            "50",
            "--stale",
            "--workload",
            "get",
            "--keyspace",
            "10",
        ],
    )
    .await);
    assert!(table.contains("ops/s") && table.contains("p99.9"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_prints_a_thousand_values_of_4_kb_across_pages() {
    // A page of 1,000 × 4.19 KB values once overran the client's 4 MiB receive limit.
    let cluster = TestCluster::start(3).await;
    let e = cluster.addrs();
    let value = "v".repeat(4_190);
    let lines: String = (0..1_000).map(|i| format!("big-{i:04}\t{value}\n")).collect();
    ok(&kvctl_with_input(&e, &["batch-put", "-"], &lines).await);
    let printed = ok(&kvctl(&e, &["range", "big-", "big.", "--limit", "1000"]).await);
    assert_eq!(printed.lines().count(), 1_000);
    assert!(printed.lines().all(|line| line.ends_with(&value)));
    cluster.shutdown().await;
}
