//! `kv-node --config FILE`: every command-line flag as a TOML key.
//!
//! Keys are the long flag names (`data-dir`; `data_dir` works too). Values
//! are strings, integers, booleans (for switches such as `init`: `true`
//! turns it on) or arrays of strings (for lists such as `peers`). A flag
//! given on the command line wins over its environment variable (`KV_*`),
//! which wins over the file, which wins over the default. An unknown key
//! or a value of the wrong kind is an error naming the key: a typo never
//! passes silently.

use std::ffi::OsString;

use clap::{ArgAction, Command};
use toml_edit::{DocumentMut, Item, Value};

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The file is not valid TOML.
    #[error("not valid TOML: {0}")]
    Syntax(String),
    /// A key names no flag.
    #[error("unknown key `{0}` (keys are kv-node's long flag names, e.g. `data-dir`)")]
    UnknownKey(String),
    /// A key's value has the wrong kind for its flag.
    #[error("key `{key}`: {reason}")]
    BadValue {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// The command line `args` (program name first) with the settings of the
/// config file `text` added for `command`'s flags that neither `args` nor
/// the environment (`env_is_set` of a flag's variable) set.
pub fn args_with_file(
    command: &Command,
    args: Vec<OsString>,
    text: &str,
    env_is_set: impl Fn(&str) -> bool,
) -> Result<Vec<OsString>, ConfigFileError> {
    let document: DocumentMut = text.parse().map_err(|e| ConfigFileError::Syntax(format!("{e}")))?;
    let mut from_file = Vec::new();
    for (key, item) in document.iter() {
        let name = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(name.as_str()) && name != "config")
            .ok_or_else(|| ConfigFileError::UnknownKey(key.to_owned()))?;
        let given_on_command_line = args.iter().skip(1).any(|a| {
            let a = a.to_string_lossy();
            a == format!("--{name}") || a.starts_with(&format!("--{name}="))
        });
        let given_in_env = arg.get_env().is_some_and(|v| env_is_set(&v.to_string_lossy()));
        if given_on_command_line || given_in_env {
            continue;
        }
        let bad = |reason: &str| ConfigFileError::BadValue {
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        let value = match item {
            Item::Value(value) => value,
            _ => return Err(bad("expected a value, found a table")),
        };
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            match value {
                Value::Boolean(on) if *on.value() => from_file.push(OsString::from(format!("--{name}"))),
                Value::Boolean(_) => {}
                _ => return Err(bad("expected true or false")),
            }
            continue;
        }
        let text = match value {
            Value::String(s) => s.value().clone(),
            Value::Integer(i) => i.value().to_string(),
            Value::Array(items) => {
                let parts: Option<Vec<String>> = items.iter().map(|v| v.as_str().map(str::to_owned)).collect();
                let parts = parts.ok_or_else(|| bad("expected an array of strings"))?;
                if arg.get_value_delimiter().is_none() && parts.len() != 1 {
                    return Err(bad("takes one value, not a list"));
                }
                parts.join(",")
            }
            _ => return Err(bad("expected a string, an integer or an array of strings")),
        };
        from_file.push(OsString::from(format!("--{name}={text}")));
    }
    let mut merged = Vec::with_capacity(args.len() + from_file.len());
    let mut args = args.into_iter();
    merged.extend(args.next());
    merged.extend(from_file);
    merged.extend(args);
    Ok(merged)
}

/// The config file named by `--config FILE` / `--config=FILE` in `args`,
/// else by the environment variable `KV_CONFIG` (`env`).
pub fn config_path(args: &[OsString], env: Option<OsString>) -> Option<OsString> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--config" {
            return iter.next().cloned();
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(OsString::from(path));
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use clap::{Arg, ArgAction, Command};

    use super::*;

    fn command() -> Command {
        Command::new("kv-node")
            .arg(Arg::new("id").long("id").env("KV_NODE_ID"))
            .arg(Arg::new("data-dir").long("data-dir").env("KV_DATA_DIR"))
            .arg(Arg::new("heartbeat-ms").long("heartbeat-ms").env("KV_HEARTBEAT_MS"))
            .arg(Arg::new("init").long("init").action(ArgAction::SetTrue).env("KV_INIT"))
            .arg(
                Arg::new("peers")
                    .long("peers")
                    .env("KV_PEERS")
                    .value_delimiter(',')
                    .action(ArgAction::Append),
            )
            .arg(Arg::new("config").long("config").env("KV_CONFIG"))
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    const FILE: &str = r#"
id = 1
data_dir = "data/n1"
heartbeat-ms = 50
init = true
peers = ["1=127.0.0.1:7001", "2=127.0.0.1:7002"]
"#;

    #[test]
    fn file_keys_become_flags_before_the_command_line() {
        // Every kind of value turns into the flag a user would have typed.
        let merged = args_with_file(&command(), os(&["kv-node", "--config", "f"]), FILE, |_| false).expect("merges");
        assert_eq!(
            strings(&merged),
            [
                "kv-node",
                "--id=1",
                "--data-dir=data/n1",
                "--heartbeat-ms=50",
                "--init",
                "--peers=1=127.0.0.1:7001,2=127.0.0.1:7002",
                "--config",
                "f"
            ]
        );
        let matches = command()
            .try_get_matches_from(merged)
            .expect("clap accepts the merged line");
        assert_eq!(matches.get_many::<String>("peers").map(|v| v.count()), Some(2));
    }

    #[test]
    fn the_command_line_and_the_environment_win_over_the_file() {
        // A flag given twice would append or fail; the file's copy must be left out instead.
        let args = os(&["kv-node", "--id=7", "--heartbeat-ms", "90"]);
        let merged = args_with_file(&command(), args, FILE, |var| var == "KV_PEERS").expect("merges");
        assert_eq!(
            strings(&merged),
            [
                "kv-node",
                "--data-dir=data/n1",
                "--init",
                "--id=7",
                "--heartbeat-ms",
                "90"
            ]
        );
    }

    #[test]
    fn unknown_keys_and_wrong_kinds_are_errors_naming_the_key() {
        // A typo in a config file must stop the node, not be ignored.
        let error = args_with_file(&command(), os(&["kv-node"]), "data-dri = \"x\"", |_| false).expect_err("unknown");
        assert!(error.to_string().contains("data-dri"), "{error}");
        let error = args_with_file(&command(), os(&["kv-node"]), "init = \"yes\"", |_| false).expect_err("kind");
        assert!(error.to_string().contains("init"), "{error}");
        let error = args_with_file(&command(), os(&["kv-node"]), "id = [\"1\", \"2\"]", |_| false).expect_err("list");
        assert!(error.to_string().contains("id"), "{error}");
        let error = args_with_file(&command(), os(&["kv-node"]), "config = \"other\"", |_| false).expect_err("nested");
        assert!(error.to_string().contains("config"), "{error}");
        assert!(args_with_file(&command(), os(&["kv-node"]), "id = ", |_| false).is_err());
    }

    #[test]
    fn the_config_path_comes_from_the_flag_then_the_environment() {
        // Both spellings of the flag are found, and the flag beats KV_CONFIG.
        let env = Some(OsString::from("env.toml"));
        assert_eq!(
            config_path(&os(&["kv-node", "--config", "a.toml"]), env.clone()),
            Some("a.toml".into())
        );
        assert_eq!(
            config_path(&os(&["kv-node", "--config=b.toml"]), env.clone()),
            Some("b.toml".into())
        );
        assert_eq!(
            config_path(&os(&["kv-node", "--id", "1"]), env),
            Some("env.toml".into())
        );
        assert_eq!(config_path(&os(&["kv-node"]), None), None);
    }
}
