//! Wall-clock time for freshness: every pure core takes `now` as a parameter, and the
//! request path reads it here, so tests drive a manual clock and check expiry without
//! sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Wall-clock time in unix milliseconds. Tests drive a manual clock so that expiry is
/// checked without sleeping.
#[derive(Clone, Debug)]
pub enum Clock {
    System,
    Manual(Arc<AtomicU64>),
}

impl Clock {
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Clock::Manual(t) => t.load(Ordering::Relaxed),
        }
    }

    /// A clock that moves only when told, starting at the current time.
    pub fn manual() -> Clock {
        Clock::Manual(Arc::new(AtomicU64::new(Clock::System.now_ms())))
    }

    /// Move a manual clock forward (no effect on the system clock).
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(t) = self {
            t.fetch_add(
                u64::try_from(by.as_millis()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
    }
}
