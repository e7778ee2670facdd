//! How L2 stays out of the way when Redis fails: a circuit breaker that stops the request path
//! from waiting on a Redis that keeps failing (closed ─► open ─► half-open probe ─► closed), and
//! the back-off between reconnection attempts.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::metrics::L2Metrics;

/// 100 ms doubling up to 5 s.
pub(super) struct Backoff {
    pub(super) attempts: u32,
}

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff { attempts: 0 }
    }

    pub(super) fn next(&mut self) -> Duration {
        let ms = 100u64.saturating_mul(1 << self.attempts.min(6)).min(5_000);
        self.attempts = self.attempts.saturating_add(1);
        Duration::from_millis(ms)
    }
}

/// Closed (count consecutive failures) ─► open (skip) ─► after the cooldown, half-open (one
/// probe) ─► closed on success, open again on failure.
pub(super) struct Breaker {
    threshold: u32,
    pub(super) cooldown: Duration,
    state: Mutex<BreakerState>,
}

#[derive(Clone, Copy)]
enum BreakerState {
    Closed(u32),
    Open { until: Instant },
    HalfOpen { since: Instant },
}

impl Breaker {
    pub(super) fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(BreakerState::Closed(0)),
        }
    }

    /// May this operation go to Redis?
    pub(super) fn allow(&self, m: &L2Metrics) -> bool {
        let mut s = self.state.lock();
        let now = Instant::now();
        match *s {
            BreakerState::Closed(_) => true,
            BreakerState::Open { until } if now >= until => {
                *s = BreakerState::HalfOpen { since: now };
                m.breaker_state.set(2.0);
                true
            }
            BreakerState::Open { .. } => false,
            // A probe whose caller vanished must not keep the breaker half-open for ever.
            BreakerState::HalfOpen { since } if now.duration_since(since) >= self.cooldown => {
                *s = BreakerState::HalfOpen { since: now };
                true
            }
            BreakerState::HalfOpen { .. } => false,
        }
    }

    pub(super) fn success(&self, m: &L2Metrics) {
        let mut s = self.state.lock();
        if !matches!(*s, BreakerState::Closed(0)) {
            if !matches!(*s, BreakerState::Closed(_)) {
                tracing::info!("Redis answering again: circuit breaker closed");
            }
            *s = BreakerState::Closed(0);
            m.breaker_state.set(0.0);
        }
    }

    /// Returns `true` when this failure opened the breaker.
    pub(super) fn failure(&self, m: &L2Metrics) -> bool {
        let mut s = self.state.lock();
        let open = BreakerState::Open {
            until: Instant::now() + self.cooldown,
        };
        match *s {
            BreakerState::Closed(n) if n + 1 < self.threshold => {
                *s = BreakerState::Closed(n + 1);
                false
            }
            BreakerState::Closed(_) => {
                *s = open;
                m.breaker_state.set(1.0);
                true
            }
            BreakerState::HalfOpen { .. } | BreakerState::Open { .. } => {
                *s = open;
                m.breaker_state.set(1.0);
                false
            }
        }
    }

    pub(super) fn state_name(&self) -> &'static str {
        match *self.state.lock() {
            BreakerState::Closed(_) => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half-open",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn breaker_opens_after_threshold_and_probes_after_cooldown() {
        let m = Metrics::new(&[]).l2();
        let b = Breaker::new(3, Duration::from_millis(30));
        assert!(b.allow(&m));
        assert!(!b.failure(&m) && !b.failure(&m));
        b.success(&m); // a success resets the count
        assert!(!b.failure(&m) && !b.failure(&m));
        assert!(b.failure(&m), "third consecutive failure opens");
        assert_eq!(b.state_name(), "open");
        assert!(!b.allow(&m));
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(&m), "one probe after the cooldown");
        assert_eq!(b.state_name(), "half-open");
        assert!(!b.allow(&m), "only one probe at a time");
        b.failure(&m);
        assert_eq!(b.state_name(), "open");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(&m));
        b.success(&m);
        assert_eq!(b.state_name(), "closed");
        assert!(b.allow(&m));
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::new();
        let v: Vec<u64> = (0..9).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(v, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }
}
