//! TLS settings of a client: the CA it trusts the nodes through, and the
//! certificate it presents to a peer port that requires mutual TLS.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::error::{Error, Result};

/// How long a TLS handshake with a node may take, in ms.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// How long the probe of [`serves_tls`] may take, in ms.
pub const TLS_PROBE_MS_MAX: u64 = 1_000;

/// The bytes a plaintext HTTP/2 client opens a connection with.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A TLS record's first byte when it is an alert (RFC 8446, 5.1).
const TLS_ALERT_RECORD: u8 = 0x15;
/// The first byte of the legacy version every TLS record carries (3.x).
const TLS_RECORD_VERSION_MAJOR: u8 = 0x03;

/// Whether the server at `addr` speaks TLS: it answers the plaintext
/// HTTP/2 preface with a TLS alert record. `false` when it cannot tell
/// (no connection, no answer within [`TLS_PROBE_MS_MAX`]).
pub(crate) async fn serves_tls(addr: &str) -> bool {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.write_all(HTTP2_PREFACE).await.ok()?;
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.ok()?;
        Some(is_tls_alert(&head))
    };
    tokio::time::timeout(Duration::from_millis(TLS_PROBE_MS_MAX), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Whether `head` (a reply's first bytes) starts a TLS alert record.
fn is_tls_alert(head: &[u8; 2]) -> bool {
    head[0] == TLS_ALERT_RECORD && head[1] == TLS_RECORD_VERSION_MAJOR
}

/// What a plaintext client hears when the node at `addr` serves TLS.
pub(crate) fn plaintext_on_tls_port(addr: &str, error: &str) -> String {
    format!(
        "{addr} serves TLS, but this client connects in plaintext: give it the cluster's CA \
         certificate (kvctl --ca FILE or KV_CA; ClientBuilder::tls in the library) [{error}]"
    )
}

/// A client certificate and its private key, in PEM: what a peer port
/// with mutual TLS (`kv-node --tls-ca`) asks admin tools for.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The certificate (chain), signed by the cluster's CA.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<hidden>")
            .finish()
    }
}

/// The TLS side of a client's connections.
#[derive(Debug, Clone)]
pub(crate) struct ClientTls {
    ca_pem: String,
    identity: Option<ClientIdentity>,
}

impl ClientTls {
    pub(crate) fn new(ca_pem: String, identity: Option<ClientIdentity>) -> ClientTls {
        ClientTls { ca_pem, identity }
    }

    fn config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .timeout(std::time::Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS));
        match &self.identity {
            Some(identity) => config.identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem)),
            None => config,
        }
    }

    /// `endpoint` (an `https://` URI) speaking TLS with these settings.
    pub(crate) fn apply(&self, endpoint: Endpoint) -> Result<Endpoint> {
        endpoint
            .tls_config(self.config())
            .map_err(|e| Error::Tls { reason: e.to_string() })
    }

    /// Checks that the CA and identity hold PEM blocks of the right kinds
    /// and parse, so that a wrong file is reported when the client is
    /// built, not as an unreachable cluster after the first deadline.
    pub(crate) fn check(&self) -> Result<()> {
        require_pem_block("the CA", &self.ca_pem, "CERTIFICATE")?;
        if let Some(identity) = &self.identity {
            require_pem_block("the client certificate", &identity.cert_pem, "CERTIFICATE")?;
            require_pem_block("the client key", &identity.key_pem, "PRIVATE KEY")?;
        }
        self.apply(Endpoint::from_static("https://127.0.0.1:1")).map(|_| ())
    }
}

/// Fails unless `text` holds a PEM block whose label ends in `label`
/// (`PRIVATE KEY` matches `EC PRIVATE KEY` and `RSA PRIVATE KEY` too).
fn require_pem_block(what: &str, text: &str, label: &str) -> Result<()> {
    let found = text.lines().any(|line| {
        line.trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|found| found.ends_with(label))
    });
    if found {
        Ok(())
    } else {
        Err(Error::Tls {
            reason: format!("{what} holds no PEM {label} block"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_tls_alert_record_counts_as_tls() {
        // A plaintext HTTP/2 server answers the preface with a SETTINGS frame.
        assert!(is_tls_alert(&[0x15, 0x03]));
        assert!(!is_tls_alert(&[0x00, 0x00]), "an HTTP/2 frame header");
        assert!(
            !is_tls_alert(&[0x16, 0x03]),
            "a handshake record is no answer to garbage"
        );
        let message = plaintext_on_tls_port("127.0.0.1:7001", "transport error");
        assert!(
            message.contains("--ca") && message.contains("127.0.0.1:7001"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_plaintext_grpc_server_is_not_taken_for_tls() {
        // The explanation must never blame TLS for a plaintext node's failure.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut preface = [0u8; 24];
            stream.read_exact(&mut preface).await.expect("preface");
            // An empty SETTINGS frame, as an HTTP/2 server's first bytes.
            stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.expect("settings");
        });
        assert!(!serves_tls(&addr).await);
        server.await.expect("server");
        assert!(!serves_tls("127.0.0.1:1").await, "nothing listening");
    }

    #[test]
    fn a_ca_that_is_not_pem_is_refused_when_the_client_is_built() {
        // A mistyped --ca must fail at once with a TLS error, not as an
        // unreachable cluster after the first deadline.
        let tls = ClientTls::new("not a certificate".into(), None);
        assert!(matches!(tls.check(), Err(Error::Tls { .. })));
    }

    #[test]
    fn a_key_given_as_the_certificate_is_refused() {
        // Swapped --cert and --key are named, not found at the handshake.
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let swapped = ClientIdentity {
            cert_pem: key.into(),
            key_pem: cert.into(),
        };
        let tls = ClientTls::new(cert.into(), Some(swapped));
        assert!(matches!(tls.check(), Err(Error::Tls { reason }) if reason.contains("client certificate")));
    }

    #[test]
    fn debug_output_hides_the_key() {
        // Builders are printed in logs; the key must not be.
        let identity = ClientIdentity {
            cert_pem: "cert".into(),
            key_pem: "secret key".into(),
        };
        assert!(!format!("{identity:?}").contains("secret"));
    }
}
