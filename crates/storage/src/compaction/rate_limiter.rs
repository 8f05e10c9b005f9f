//! The compaction I/O rate limiter: compaction threads together merge at
//! most a set number of bytes per second, so foreground reads and the WAL
//! keep some of the disk. Paced by the write controller's [`Pacer`].

use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::write_controller::Pacer;

/// Shares one byte rate among every thread that asks for bytes.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    bytes_per_sec: u64,
    /// The pacer and the start of its clock.
    pacer: Mutex<(Pacer, Instant)>,
}

impl RateLimiter {
    /// A limiter granting `bytes_per_sec` bytes per second in total.
    pub fn new(bytes_per_sec: u64) -> Self {
        assert!(bytes_per_sec > 0, "a rate limiter needs a positive rate");
        RateLimiter {
            bytes_per_sec,
            pacer: Mutex::new((Pacer::default(), Instant::now())),
        }
    }

    /// Blocks until `bytes` more may be used; returns how long it slept.
    pub fn request(&self, bytes: u64) -> Duration {
        let wait_micros = {
            let mut guard = self.pacer.lock();
            let (pacer, epoch) = &mut *guard;
            let now_micros = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
            pacer.charge(now_micros, bytes, self.bytes_per_sec)
        };
        // Sleeping outside the lock: later requests queue behind this one
        // on the pacer's clock, not on the mutex.
        let wait = Duration::from_micros(wait_micros);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_beyond_the_rate_wait_for_it() {
        // 1 MiB/s: a first 256 KiB goes at once, four more take about a second together.
        let limiter = RateLimiter::new(1 << 20);
        assert!(limiter.request(256 << 10).is_zero());
        let started = Instant::now();
        for _ in 0..4 {
            limiter.request(256 << 10);
        }
        assert!(
            started.elapsed() >= Duration::from_millis(990),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn threads_share_one_rate() {
        // Two threads asking 512 KiB each at 1 MiB/s wait 7/8 s together (the first 128 KiB goes at once), not half that.
        let limiter = RateLimiter::new(1 << 20);
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    for _ in 0..4 {
                        limiter.request(128 << 10);
                    }
                });
            }
        });
        assert!(
            started.elapsed() >= Duration::from_millis(870),
            "{:?}",
            started.elapsed()
        );
    }
}
