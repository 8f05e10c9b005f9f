//! Availability: after the leader is killed, the time until the first
//! write succeeds stays under a bound.
//!
//! [`measure`] probes with writes to a key outside the workload's key set
//! from the moment of the kill until one succeeds; [`check`] is the pure
//! decision over the measured windows.

use std::time::{Duration, Instant};

use cluster_client::Client;

use super::Verdict;

/// The bound on the unavailability window after a leader kill.
pub const WRITE_UNAVAILABLE_MAX: Duration = Duration::from_secs(5);
/// The key probed; outside the workload's `k*` ranges.
pub const PROBE_KEY: &str = "probe";
/// How long [`measure`] probes at most before giving up.
const PROBE_DURATION_MAX: Duration = Duration::from_secs(15);
/// Pause between two failed probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// The time from `since` (the kill) to the first successful probe write;
/// `None` when none succeeded within the probe bound.
pub async fn measure(client: &Client, since: Instant) -> Option<Duration> {
    let mut n = 0u64;
    while since.elapsed() < PROBE_DURATION_MAX {
        n += 1;
        if client.put(PROBE_KEY, format!("probe-{n}")).await.is_ok() {
            return Some(since.elapsed());
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    None
}

/// Every window must be measured and at most `bound`.
pub fn check(windows: &[Option<Duration>], bound: Duration) -> Verdict {
    let shown: Vec<String> = windows
        .iter()
        .map(|w| w.map_or("none".to_owned(), |d| format!("{} ms", d.as_millis())))
        .collect();
    let worst = windows.iter().map(|w| w.unwrap_or(Duration::MAX)).max();
    match worst {
        None => Verdict::Pass("no leader kill measured".into()),
        Some(worst) if worst > bound => Verdict::Fail(format!(
            "write unavailability after a leader kill exceeded {} ms: windows [{}]",
            bound.as_millis(),
            shown.join(", ")
        )),
        Some(worst) => Verdict::Pass(format!(
            "windows [{}], worst {} ms <= {} ms",
            shown.join(", "),
            worst.as_millis(),
            bound.as_millis()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_windows_pass_and_long_or_missing_ones_fail() {
        let ms = |m| Some(Duration::from_millis(m));
        assert!(matches!(
            check(&[ms(700), ms(1200)], WRITE_UNAVAILABLE_MAX),
            Verdict::Pass(_)
        ));
        assert!(check(&[ms(700), ms(5001)], WRITE_UNAVAILABLE_MAX).is_fail());
        assert!(check(&[ms(700), None], WRITE_UNAVAILABLE_MAX).is_fail());
    }
}
