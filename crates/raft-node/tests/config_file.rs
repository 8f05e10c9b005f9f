//! `kv-node --config FILE`: the example file in `docs/` is accepted, its
//! settings take effect, and flags and the environment override it.

use std::path::PathBuf;
use std::process::Command;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/kv-node.example.toml")
}

/// What `kv-node --check-config` prints for `args` with `env` set.
fn effective(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kv-node"));
    command.args(args).arg("--check-config");
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("KV_")) {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let output = command.output().expect("run kv-node");
    assert!(
        output.status.success(),
        "kv-node refused {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_example_config_file_takes_effect_under_flags_and_environment() {
    // Documented precedence: flag, then KV_* variable, then the file, then the default.
    let file = example();
    let file = file.to_str().expect("utf-8 path");
    let shown = effective(&["--config", file], &[]);
    assert!(shown.contains("data_dir: \"data/n1\""), "{shown}");
    assert!(shown.contains("init: true"), "{shown}");
    assert!(shown.contains("\"3=127.0.0.1:7003/127.0.0.1:7053\""), "{shown}");
    assert!(shown.contains("heartbeat_ms: 50"), "{shown}");

    let shown = effective(
        &["--config", file, "--heartbeat-ms", "75"],
        &[("KV_DATA_DIR", "/srv/kv")],
    );
    assert!(shown.contains("heartbeat_ms: 75"), "the flag wins: {shown}");
    assert!(shown.contains("data_dir: \"/srv/kv\""), "the environment wins: {shown}");
    assert!(shown.contains("memtable_mb: 64"), "{shown}");
}

#[test]
fn a_typo_in_the_config_file_stops_the_node_naming_the_key() {
    // An unknown key must not be ignored: the node would run with a setting the operator did not mean.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "id = 1\ndata-dri = \"x\"\n").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_kv-node"))
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .env_remove("KV_CONFIG")
        .output()
        .expect("run kv-node");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("data-dri"), "{stderr}");
}
