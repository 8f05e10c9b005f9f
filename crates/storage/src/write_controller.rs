//! The write controller: how fast writers may go, given how far compaction
//! is behind.
//!
//! Compaction debt is measured two ways: the number of L0 files (each one
//! more file every read must check) and the bytes compaction still has to
//! rewrite to bring every level under its target. Below the slowdown
//! thresholds writers go at full speed. Past them, writes are paced to a
//! delayed write rate that falls geometrically from
//! `delayed_write_bytes_per_sec_max` at the slowdown threshold to
//! `delayed_write_bytes_per_sec_min` just before the stop threshold, and
//! rises again as debt shrinks. Only at a stop threshold do writers wait
//! for compaction outright, as a last resort.
//!
//! [`throttle`] (debt to decision) and [`Pacer`] (decision to sleep) are
//! pure: the write path reads the clock and sleeps, they only compute.

/// Compaction debt as the write path sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Debt {
    /// Files in L0.
    pub l0_files: usize,
    /// Bytes compaction must still rewrite to bring every level under its
    /// target (see `picker::pending_compaction_bytes`).
    pub pending_compaction_bytes: u64,
}

/// The thresholds and rates the controller works between (from `Options`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub l0_slowdown_files: usize,
    pub l0_stop_files: usize,
    pub pending_compaction_slowdown_bytes: u64,
    pub pending_compaction_stop_bytes: u64,
    pub delayed_write_bytes_per_sec_max: u64,
    pub delayed_write_bytes_per_sec_min: u64,
}

/// What the write path must do before committing a write group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Throttle {
    /// Write at full speed.
    None,
    /// Pace writes to this many bytes per second.
    Delay { bytes_per_sec: u64 },
    /// Wait for compaction before writing anything.
    Stop,
}

/// The decision for `debt` under `limits`.
pub(crate) fn throttle(debt: Debt, limits: &Limits) -> Throttle {
    if debt.l0_files >= limits.l0_stop_files || debt.pending_compaction_bytes >= limits.pending_compaction_stop_bytes {
        return Throttle::Stop;
    }
    let l0 = pressure(
        debt.l0_files as f64,
        limits.l0_slowdown_files as f64,
        limits.l0_stop_files as f64,
    );
    let bytes = pressure(
        debt.pending_compaction_bytes as f64,
        limits.pending_compaction_slowdown_bytes as f64,
        limits.pending_compaction_stop_bytes as f64,
    );
    let Some(pressure) = max_pressure(l0, bytes) else {
        return Throttle::None;
    };
    let max = limits.delayed_write_bytes_per_sec_max.max(1) as f64;
    let min = limits
        .delayed_write_bytes_per_sec_min
        .clamp(1, limits.delayed_write_bytes_per_sec_max.max(1)) as f64;
    // Geometric: each step of debt takes the same fraction off the rate,
    // so the brake is gentle at first and firm near the stop.
    let rate = max * (min / max).powf(pressure);
    Throttle::Delay {
        bytes_per_sec: (rate.round() as u64).clamp(min as u64, max as u64),
    }
}

/// How far `value` is from `slowdown` (0.0) to `stop` (1.0), or `None`
/// below `slowdown`.
fn pressure(value: f64, slowdown: f64, stop: f64) -> Option<f64> {
    if value < slowdown {
        return None;
    }
    if stop <= slowdown {
        return Some(1.0);
    }
    Some(((value - slowdown) / (stop - slowdown)).clamp(0.0, 1.0))
}

fn max_pressure(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Paces writes to a rate: a virtual clock of when the next byte may be
/// written. Writes below a sleep's worth are let through and their time is
/// carried, so the average rate holds without a sleep per write.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pacer {
    /// When (on the caller's clock, in microseconds) the next write may
    /// start; `None` when writes are not being paced.
    next_write_micros: Option<u64>,
}

impl Pacer {
    /// Charges a write of `bytes` at `now_micros` under a rate of
    /// `bytes_per_sec`, returning how long the writer must wait before
    /// writing, in microseconds.
    pub fn charge(&mut self, now_micros: u64, bytes: u64, bytes_per_sec: u64) -> u64 {
        let start = self.next_write_micros.map_or(now_micros, |next| next.max(now_micros));
        let cost_micros = u128::from(bytes) * 1_000_000 / u128::from(bytes_per_sec.max(1));
        let cost_micros = u64::try_from(cost_micros).unwrap_or(u64::MAX);
        self.next_write_micros = Some(start.saturating_add(cost_micros));
        start - now_micros
    }

    /// Stops pacing: the next paced write starts with no carried time.
    pub fn reset(&mut self) {
        self.next_write_micros = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        l0_slowdown_files: 20,
        l0_stop_files: 36,
        pending_compaction_slowdown_bytes: 1000,
        pending_compaction_stop_bytes: 5000,
        delayed_write_bytes_per_sec_max: 16 << 20,
        delayed_write_bytes_per_sec_min: 1 << 20,
    };

    fn debt(l0_files: usize, pending_compaction_bytes: u64) -> Debt {
        Debt {
            l0_files,
            pending_compaction_bytes,
        }
    }

    fn rate(throttle: Throttle) -> u64 {
        match throttle {
            Throttle::Delay { bytes_per_sec } => bytes_per_sec,
            other => panic!("expected a delay, got {other:?}"),
        }
    }

    #[test]
    fn no_debt_means_no_delay() {
        // Below both slowdown thresholds writers must go at full speed.
        assert_eq!(throttle(debt(19, 999), &LIMITS), Throttle::None);
        assert_eq!(throttle(debt(0, 0), &LIMITS), Throttle::None);
    }

    #[test]
    fn the_rate_falls_as_l0_debt_grows_and_recovers_as_it_shrinks() {
        // Each more L0 file past the slowdown threshold slows writers more; fewer speeds them up again.
        assert_eq!(rate(throttle(debt(20, 0), &LIMITS)), 16 << 20);
        let rates: Vec<u64> = (20..36).map(|files| rate(throttle(debt(files, 0), &LIMITS))).collect();
        assert!(rates.windows(2).all(|w| w[1] < w[0]), "{rates:?}");
        assert!(*rates.last().expect("rates") >= 1 << 20);
        // Half way the geometric rate is the geometric mean of max and min.
        assert_eq!(rate(throttle(debt(28, 0), &LIMITS)), 4 << 20);
        assert_eq!(throttle(debt(36, 0), &LIMITS), Throttle::Stop);
    }

    #[test]
    fn pending_bytes_slow_writers_too_and_the_larger_pressure_wins() {
        // Byte debt alone triggers a delay; with both, the more urgent one sets the rate.
        assert_eq!(rate(throttle(debt(0, 1000), &LIMITS)), 16 << 20);
        assert_eq!(rate(throttle(debt(0, 3000), &LIMITS)), 4 << 20);
        assert_eq!(rate(throttle(debt(22, 3000), &LIMITS)), 4 << 20);
        assert_eq!(rate(throttle(debt(28, 1500), &LIMITS)), 4 << 20);
        assert_eq!(throttle(debt(0, 5000), &LIMITS), Throttle::Stop);
    }

    #[test]
    fn equal_slowdown_and_stop_thresholds_go_straight_to_the_slowest_rate() {
        // A degenerate range must not divide by zero.
        let limits = Limits {
            l0_slowdown_files: 8,
            l0_stop_files: 8,
            ..LIMITS
        };
        assert_eq!(throttle(debt(7, 0), &limits), Throttle::None);
        assert_eq!(throttle(debt(8, 0), &limits), Throttle::Stop);
        let limits = Limits {
            pending_compaction_slowdown_bytes: 10,
            pending_compaction_stop_bytes: 10,
            ..LIMITS
        };
        assert_eq!(throttle(debt(0, 10), &limits), Throttle::Stop);
    }

    #[test]
    fn the_pacer_holds_the_average_rate_without_sleeping_per_write() {
        // 1000 writes of 1 KiB at 1 MiB/s take about a second, whatever their spacing.
        let mut pacer = Pacer::default();
        let bytes_per_sec = 1 << 20;
        let mut now = 0;
        for _ in 0..1024 {
            let wait = pacer.charge(now, 1024, bytes_per_sec);
            now += wait + 10;
        }
        assert!((990_000..=1_000_000).contains(&now), "took {now} us");
        // The first write of a paced period goes at once.
        let mut pacer = Pacer::default();
        assert_eq!(pacer.charge(5, 1 << 20, bytes_per_sec), 0);
        assert_eq!(pacer.charge(5, 1, bytes_per_sec), 1_000_000);
        pacer.reset();
        assert_eq!(pacer.charge(7, 1, bytes_per_sec), 0);
    }

    #[test]
    fn the_pacer_does_not_bank_idle_time() {
        // A writer idle for a minute must not then burst unpaced.
        let mut pacer = Pacer::default();
        assert_eq!(pacer.charge(0, 1 << 20, 1 << 20), 0);
        assert_eq!(pacer.charge(60_000_000, 1 << 20, 1 << 20), 0);
        assert_eq!(pacer.charge(60_000_000, 1, 1 << 20), 1_000_000);
    }
}
