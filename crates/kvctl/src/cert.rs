//! `kvctl cert`: a throwaway CA and certificates for a local cluster over
//! TLS (`scripts/start-cluster.sh --tls`). For trying TLS out, not for
//! production: the CA's key is not kept, and nothing expires soon.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::cli::CertArgs;

/// The CA certificate's file name; give it to nodes as `--tls-ca` and to
/// kvctl as `--ca`.
pub const CA_FILE: &str = "ca.pem";
/// The name of the client identity for admin calls to mutual-TLS peer
/// ports: `admin.pem` and `admin.key`.
pub const ADMIN_NAME: &str = "admin";

/// Writes `ca.pem`, `nodeN.pem`/`nodeN.key` for N in 1..=nodes and
/// `admin.pem`/`admin.key` into the directory of `args`.
pub fn run(args: &CertArgs) -> Result<ExitCode> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if dir.join(CA_FILE).exists() && !args.force {
        bail!(
            "{} exists; give --force to replace every certificate in {}",
            dir.join(CA_FILE).display(),
            dir.display()
        );
    }
    let names: Vec<String> = args
        .hosts
        .iter()
        .filter(|h| !h.trim().is_empty())
        .map(|h| h.trim().to_string())
        .collect();
    if names.is_empty() {
        bail!("--host needs at least one name or IP address");
    }
    let ca_key = KeyPair::generate().context("cannot generate the CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.distinguished_name.push(DnType::CommonName, "kv throwaway CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("cannot sign the CA certificate")?;
    let ca = Issuer::new(ca_params, ca_key);
    write_file(&dir.join(CA_FILE), &ca_cert.pem(), false)?;
    let mut written = vec![dir.join(CA_FILE)];
    let leaves = (1..=args.nodes)
        .map(|id| format!("node{id}"))
        .chain(std::iter::once(ADMIN_NAME.to_string()));
    for name in leaves {
        let (cert, key) = leaf(&ca, &name, &names)?;
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        write_file(&cert_path, &cert, false)?;
        write_file(&key_path, &key, true)?;
        written.extend([cert_path, key_path]);
    }
    for path in written {
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// A certificate named `name` for `hosts`, for servers and clients alike
/// (a node is both: it serves its ports and calls its peers), with its key.
fn leaf(ca: &Issuer<'_, KeyPair>, name: &str, hosts: &[String]) -> Result<(String, String)> {
    let key = KeyPair::generate().with_context(|| format!("cannot generate the key of {name}"))?;
    let mut params = CertificateParams::new(hosts.to_vec()).with_context(|| format!("bad --host in {hosts:?}"))?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params
        .signed_by(&key, ca)
        .with_context(|| format!("cannot sign the certificate of {name}"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `text` to `path`, readable by its owner only if `private`.
fn write_file(path: &Path, text: &str, private: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if private { 0o600 } else { 0o644 };
    // A key file that existed with wider permissions keeps them through
    // `open`: remove it first so the new one gets `mode`.
    if private && path.exists() {
        std::fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn args(dir: &Path, force: bool) -> CertArgs {
        CertArgs {
            dir: dir.to_path_buf(),
            nodes: 2,
            hosts: vec!["127.0.0.1".into(), "localhost".into()],
            force,
        }
    }

    #[test]
    fn writes_files_a_node_and_a_client_accept_and_keeps_keys_private() {
        // The quickstart feeds these files to kv-node and kvctl as they are.
        let tmp = tempfile::tempdir().expect("tempdir");
        run(&args(tmp.path(), false)).expect("cert");
        let path = |name: &str| tmp.path().join(name);
        for id in 1..=2 {
            let node = raft_node::tls::TlsConfig::from_files(
                &path(&format!("node{id}.pem")),
                &path(&format!("node{id}.key")),
                Some(&path(CA_FILE)),
            );
            assert!(node.is_ok(), "node {id}: {node:?}");
            let mode = std::fs::metadata(path(&format!("node{id}.key")))
                .expect("key file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "node {id}'s key is readable by others");
        }
        let read = |name: &str| std::fs::read_to_string(path(name)).expect("read");
        let identity = cluster_client::ClientIdentity {
            cert_pem: read("admin.pem"),
            key_pem: read("admin.key"),
        };
        let built = cluster_client::Client::builder(["127.0.0.1:1"])
            .tls(read(CA_FILE), Some(identity))
            .build();
        assert!(built.is_ok(), "{built:?}");
    }

    #[test]
    fn refuses_to_replace_certificates_without_force() {
        // A second run must not silently swap the CA of a running cluster.
        let tmp = tempfile::tempdir().expect("tempdir");
        run(&args(tmp.path(), false)).expect("first run");
        assert!(run(&args(tmp.path(), false)).is_err());
        run(&args(tmp.path(), true)).expect("with --force");
    }
}
