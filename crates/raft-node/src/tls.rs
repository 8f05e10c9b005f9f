//! TLS for a node's ports and its Raft connections (rustls through tonic).
//!
//! - The client port serves TLS with the node's certificate; clients need
//!   not present one (they trust the node through its CA, `kvctl --ca`).
//! - With a CA ([`TlsConfig::ca_pem`]) the peer port requires mutual TLS:
//!   a caller must present a certificate signed by that CA. The node's own
//!   Raft calls to its peers present its certificate and accept only peers
//!   whose certificate that CA signed. A node with a certificate from
//!   another CA can neither call this node's Raft nor be called by it.
//! - Without a CA the peer port stays plaintext (firewall it), and so do
//!   the node's Raft calls.
//!
//! TLS needs a separate peer port (`--peer-listen`): one port cannot both
//! admit clients without certificates and hold peers to theirs.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// How long a TLS handshake may take on either port, in ms.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// A TLS file that cannot be read, or does not hold what it should.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate, key or CA file cannot be read.
    #[error("cannot read the TLS {what} file {path}: {source}")]
    Read {
        /// Which file: `certificate`, `key` or `CA`.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file does not hold a PEM block of the expected kind.
    #[error("the TLS {what} file {path} holds no PEM {label} block")]
    NotPem {
        /// Which file: `certificate`, `key` or `CA`.
        what: &'static str,
        /// The file.
        path: String,
        /// The PEM label looked for (`CERTIFICATE`, `PRIVATE KEY`).
        label: &'static str,
    },
}

/// A node's TLS material, in PEM. `Debug` never shows the key.
#[derive(Clone)]
pub struct TlsConfig {
    /// The node's certificate (chain), served on both ports and presented
    /// to peers.
    pub cert_pem: String,
    /// The private key of `cert_pem`.
    pub key_pem: String,
    /// The CA that signs every node's certificate. Default `None`: the
    /// peer port and the Raft calls stay plaintext. With it, the peer port
    /// requires mutual TLS and Raft calls verify their peers against it.
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<hidden>")
            .field("ca_pem", &self.ca_pem.as_ref().map(|ca| format!("{} bytes", ca.len())))
            .finish()
    }
}

/// Reads a PEM file and checks that it holds a block whose label ends in
/// `label` (`PRIVATE KEY` matches `EC PRIVATE KEY` and `RSA PRIVATE KEY`).
fn read_pem(what: &'static str, path: &Path, label: &'static str) -> Result<String, TlsError> {
    let text = std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })?;
    let has_block = text.lines().any(|line| {
        line.strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|found| found.ends_with(label))
    });
    if !has_block {
        return Err(TlsError::NotPem {
            what,
            path: path.display().to_string(),
            label,
        });
    }
    Ok(text)
}

impl TlsConfig {
    /// Reads the node's certificate, its key and (optionally) the CA from
    /// PEM files.
    pub fn from_files(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<TlsConfig, TlsError> {
        Ok(TlsConfig {
            cert_pem: read_pem("certificate", cert, "CERTIFICATE")?,
            key_pem: read_pem("key", key, "PRIVATE KEY")?,
            ca_pem: ca.map(|ca| read_pem("CA", ca, "CERTIFICATE")).transpose()?,
        })
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }

    /// Whether the peer port requires mutual TLS (and Raft calls use TLS).
    pub fn mutual(&self) -> bool {
        self.ca_pem.is_some()
    }

    /// The client port's server configuration: the node's certificate, no
    /// client certificate asked for.
    pub fn client_port(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity())
            .timeout(std::time::Duration::from_millis(HANDSHAKE_TIMEOUT_MS))
    }

    /// The peer port's server configuration: the node's certificate, and a
    /// client certificate signed by the CA required. `None` without a CA
    /// (the peer port stays plaintext).
    pub fn peer_port(&self) -> Option<ServerTlsConfig> {
        let ca = self.ca_pem.as_ref()?;
        Some(
            self.client_port()
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(false),
        )
    }

    /// The configuration of the node's Raft calls to its peers: present
    /// the node's certificate, trust only the CA. `None` without a CA.
    pub fn raft_client(&self) -> Option<ClientTlsConfig> {
        let ca = self.ca_pem.as_ref()?;
        Some(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .identity(self.identity())
                .timeout(std::time::Duration::from_millis(HANDSHAKE_TIMEOUT_MS)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_files_must_hold_the_expected_block() {
        // A swapped or empty file is named at startup, not at the first handshake.
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").expect("write");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").expect("write");
        assert!(TlsConfig::from_files(&cert, &key, Some(&cert)).is_ok());
        assert!(matches!(
            TlsConfig::from_files(&key, &key, None),
            Err(TlsError::NotPem {
                what: "certificate",
                ..
            })
        ));
        assert!(matches!(
            TlsConfig::from_files(&cert, &cert, None),
            Err(TlsError::NotPem { what: "key", .. })
        ));
        assert!(matches!(
            TlsConfig::from_files(&cert, &dir.join("absent.pem"), None),
            Err(TlsError::Read { what: "key", .. })
        ));
    }

    #[test]
    fn debug_output_hides_the_key() {
        // Node configs are logged (`--check-config`); the key must not be.
        let config = TlsConfig {
            cert_pem: "cert".into(),
            key_pem: "secret key".into(),
            ca_pem: None,
        };
        assert!(!format!("{config:?}").contains("secret"));
    }
}
