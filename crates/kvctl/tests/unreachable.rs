//! `kvctl` against endpoints where nothing listens, and with bad usage: it
//! must fail with a clear message and the documented exit code, never panic.

use std::process::{Command, Output};

/// An address where nothing listens (port 1 on loopback refuses at once).
const NOWHERE: &str = "127.0.0.1:1";

fn kvctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(args)
        .env_remove("KV_ENDPOINTS")
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("kvctl runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_clean_failure(output: &Output, expect: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains(expect), "stderr lacks {expect:?}: {err}");
    assert!(!err.contains("panicked"), "kvctl panicked: {err}");
    assert!(!err.contains("stack backtrace"), "backtrace printed: {err}");
}

#[test]
fn every_command_fails_cleanly_when_no_node_answers() {
    let base = ["--endpoints", NOWHERE, "--timeout-ms", "1000"];
    let commands: &[(&[&str], &str)] = &[
        (&["put", "k", "v"], "not applied"),
        (&["get", "k"], "Connection refused"),
        (&["get", "k", "--stale"], "Connection refused"),
        (&["delete", "k"], "not applied"),
        (&["range", "a", "z"], "range failed"),
        (&["cluster", "digest"], "unreachable"),
        (&["cluster", "init"], "initialize failed"),
        (&["member", "add-learner", "4", "127.0.0.1:7004"], "add-learner failed"),
        (&["member", "promote", "4"], "cannot find the leader"),
        (&["member", "remove", "4"], "remove failed"),
        // Without its first probe, this would take 100 000 x 1 s / 16 clients.
        (&["bench", "--ops", "100000"], "the cluster does not answer"),
    ];
    for (args, expect) in commands {
        let all: Vec<&str> = base.iter().chain(args.iter()).copied().collect();
        let output = kvctl(&all);
        if args[0] == "cluster" && args[1] == "digest" {
            // Digest reports unreachable endpoints in its table and succeeds.
            assert_eq!(output.status.code(), Some(0), "{args:?}: {}", stderr(&output));
            assert!(String::from_utf8_lossy(&output.stdout).contains(expect));
            continue;
        }
        assert_clean_failure(&output, expect);
        assert!(
            output.stdout.is_empty() || args[0] == "cluster",
            "{args:?} printed to stdout"
        );
    }
}

#[test]
fn cluster_status_shows_unreachable_nodes_and_require_leader_fails() {
    let output = kvctl(&["--endpoints", &format!("{NOWHERE},127.0.0.1:2"), "cluster", "status"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("127.0.0.1:1") && table.contains("127.0.0.1:2"),
        "{table}"
    );
    assert!(table.contains("unreachable"), "{table}");

    let output = kvctl(&["--endpoints", NOWHERE, "cluster", "status", "--require-leader"]);
    assert_clean_failure(&output, "agree on one leader");
}

#[test]
fn batch_put_reports_bad_input_before_touching_the_network() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pairs.tsv");
    std::fs::write(&file, "a\t1\nno-tab-here\n").expect("write input");
    let output = kvctl(&["--endpoints", NOWHERE, "batch-put", file.to_str().expect("utf-8 path")]);
    assert_clean_failure(&output, "line 2");

    let output = kvctl(&["--endpoints", NOWHERE, "batch-put", "/no/such/file"]);
    assert_clean_failure(&output, "cannot open");
}

#[test]
fn bad_hex_is_reported() {
    let output = kvctl(&["--endpoints", NOWHERE, "--hex", "put", "zz", "00"]);
    assert_clean_failure(&output, "non-hex");
}

#[test]
fn bad_usage_exits_2() {
    for args in [
        &["put", "only-key"][..],
        &["no-such-command"],
        &["--output", "yaml", "get", "k"],
        &["bench", "--clients", "0"],
        &["cluster"],
    ] {
        let output = kvctl(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", stderr(&output));
    }
}

#[test]
fn help_documents_the_exit_codes() {
    let output = kvctl(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("Exit codes:") && help.contains("2  bad usage"), "{help}");
}

#[test]
fn bad_endpoints_are_refused() {
    let output = kvctl(&["--endpoints", "no-port", "get", "k"]);
    assert_clean_failure(&output, "host:port");
}
