//! Convergence: after every fault healed, all replicas reach the same
//! applied index and report the same digest of their keyspace.
//!
//! [`wait`] polls every node's `Cluster.Digest` until they agree (or the
//! timeout passes); [`compare`] is the pure decision on one round of
//! answers.

use std::time::{Duration, Instant};

use cluster_client::{Client, DigestResponse};

use super::Verdict;

/// Poll period of [`wait`].
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// One node's answer: its endpoint and digest (or why it did not answer).
pub type Answer = (String, Result<DigestResponse, String>);

/// Whether every node answered with the same applied index and digest.
pub fn compare(answers: &[Answer]) -> Verdict {
    let mut first: Option<(&str, &DigestResponse)> = None;
    for (endpoint, answer) in answers {
        let digest = match answer {
            Ok(digest) => digest,
            Err(error) => return Verdict::Fail(format!("{endpoint} did not answer Digest: {error}")),
        };
        match first {
            None => first = Some((endpoint, digest)),
            Some((first_endpoint, expected)) => {
                if digest.applied_index != expected.applied_index
                    || digest.digest != expected.digest
                    || digest.keys != expected.keys
                {
                    return Verdict::Fail(format!(
                        "{first_endpoint}: applied {} keys {} digest {} but {endpoint}: applied {} keys {} digest {}",
                        expected.applied_index,
                        expected.keys,
                        expected.digest,
                        digest.applied_index,
                        digest.keys,
                        digest.digest
                    ));
                }
            }
        }
    }
    match first {
        Some((_, digest)) => Verdict::Pass(format!(
            "{} replicas at applied index {} with {} keys, digest {}",
            answers.len(),
            digest.applied_index,
            digest.keys,
            digest.digest
        )),
        None => Verdict::Fail("no replica answered".into()),
    }
}

/// Asks every endpoint for its digest until they agree or `timeout` passes;
/// the verdict of the last round.
pub async fn wait(client: &Client, endpoints: &[String], timeout: Duration) -> Verdict {
    let deadline = Instant::now() + timeout;
    loop {
        let mut answers = Vec::new();
        for endpoint in endpoints {
            let answer = client.digest(endpoint).await.map_err(|e| e.to_string());
            answers.push((endpoint.clone(), answer));
        }
        let verdict = compare(&answers);
        if !verdict.is_fail() || Instant::now() >= deadline {
            return match verdict {
                Verdict::Fail(why) => Verdict::Fail(format!("after {} ms: {why}", timeout.as_millis())),
                other => other,
            };
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(endpoint: &str, applied: u64, digest: &str) -> Answer {
        let response = DigestResponse {
            applied_index: applied,
            keys: 3,
            digest: digest.into(),
        };
        (endpoint.into(), Ok(response))
    }

    #[test]
    fn equal_replicas_converge() {
        let answers = [answer("n1", 9, "ab"), answer("n2", 9, "ab"), answer("n3", 9, "ab")];
        assert!(matches!(compare(&answers), Verdict::Pass(_)));
    }

    #[test]
    fn a_diverged_or_lagging_replica_is_rejected() {
        // Same index, different data: divergence, the worst case.
        assert!(compare(&[answer("n1", 9, "ab"), answer("n2", 9, "cd")]).is_fail());
        // A lagging replica is not converged (yet).
        assert!(compare(&[answer("n1", 9, "ab"), answer("n2", 8, "ab")]).is_fail());
        // A silent replica is not converged either.
        assert!(compare(&[answer("n1", 9, "ab"), ("n2".into(), Err("down".into()))]).is_fail());
    }
}
