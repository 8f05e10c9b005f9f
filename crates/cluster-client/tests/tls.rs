//! The client over TLS against a real three-node cluster in this process:
//! data calls with the cluster's CA, admin calls on a mutual-TLS peer port
//! with a client certificate.

use std::time::Duration;

use cluster_client::{Client, ClientIdentity, Error};
use raft_node::testing::{TestCa, TestCluster};

/// The deadline of a call that is expected to fail.
const REFUSED_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trusting_the_cluster_ca_reads_and_writes_and_others_are_refused() {
    // `ClientBuilder::tls` is all a user adds to talk to a TLS cluster; a
    // client without it, or trusting another CA, gets nothing done.
    let ca = TestCa::new("cluster CA");
    let cluster = TestCluster::start_with_tls(3, |id| ca.node(id)).await;
    let leader = cluster.wait_for_leader(None).await;

    let client = Client::builder(cluster.addrs())
        .tls(ca.pem.clone(), None)
        .build()
        .expect("client");
    client.put("k", "over tls").await.expect("put over TLS");
    assert_eq!(client.get("k").await.expect("get").as_deref(), Some(&b"over tls"[..]));

    let plaintext = Client::builder(cluster.addrs())
        .request_timeout(REFUSED_REQUEST_TIMEOUT)
        .build()
        .expect("client");
    assert!(plaintext.get("k").await.is_err(), "a plaintext client must be refused");
    let stranger = Client::builder(cluster.addrs())
        .request_timeout(REFUSED_REQUEST_TIMEOUT)
        .tls(TestCa::new("another CA").pem, None)
        .build()
        .expect("client");
    assert!(
        stranger.get("k").await.is_err(),
        "a client trusting another CA must be refused"
    );

    // Admin calls on the peer port need a certificate from the cluster CA.
    let peer_addr = cluster.peer_addr(leader);
    let admin_leaf = ca.leaf("admin");
    let identity = ClientIdentity {
        cert_pem: admin_leaf.cert_pem,
        key_pem: admin_leaf.key_pem,
    };
    let admin = Client::builder([peer_addr.clone()])
        .tls(ca.pem.clone(), Some(identity))
        .build()
        .expect("admin client");
    let status = admin.status(&peer_addr).await.expect("status over mutual TLS");
    assert_eq!(status.id, leader);
    let anonymous = Client::builder([peer_addr.clone()])
        .request_timeout(REFUSED_REQUEST_TIMEOUT)
        .tls(ca.pem.clone(), None)
        .build()
        .expect("client");
    assert!(
        anonymous.status(&peer_addr).await.is_err(),
        "the peer port must refuse a client without a certificate"
    );
    cluster.shutdown().await;
}

#[test]
fn a_ca_that_is_not_pem_fails_the_build() {
    // A wrong file given as the CA is reported at once, as a TLS error.
    let built = Client::builder(["127.0.0.1:1"]).tls("not a certificate", None).build();
    assert!(matches!(built, Err(Error::Tls { .. })), "{built:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_on_a_tls_port_is_told_to_trust_the_ca() {
    // "transport error" says nothing; the operator needs to hear "TLS, give the CA".
    let ca = TestCa::new("cluster CA");
    let cluster = TestCluster::start_with_tls(1, |id| ca.node(id)).await;
    let plaintext = Client::builder(cluster.addrs())
        .request_timeout(REFUSED_REQUEST_TIMEOUT)
        .build()
        .expect("client");
    let error = plaintext.get("k").await.expect_err("a plaintext client is refused");
    println!("plaintext client on a TLS port: {error}");
    let text = error.to_string();
    assert!(text.contains("TLS") && text.contains("--ca"), "{text}");
    cluster.shutdown().await;
}
