//! Hit-for-pass marks, asked before a lookup joins a flight: a key whose response said it is
//! uncacheable skips coalescing for `PASS_MARK`, so a burst of requests for it fetches
//! concurrently instead of queueing behind one leader that will not store anything. A mark is
//! only a hint (losing one costs one coalesced round), so the table is bounded by dropping
//! marks, never by refusing one. pingora-cache calls the same idea its predictor.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;

use crate::key::CacheKey;

/// How long a key whose response was uncacheable skips coalescing ("hit-for-pass").
pub(super) const PASS_MARK: Duration = Duration::from_secs(5);

/// Marks kept at most; past this, expired ones are dropped, then all of them.
const MAX_MARKS: usize = 65_536;

pub(super) struct PassMarks {
    /// Key ─► until when (unix ms) it is marked.
    marks: Mutex<HashMap<CacheKey, u64>>,
    max: usize,
}

impl PassMarks {
    pub(super) fn new() -> PassMarks {
        PassMarks {
            marks: Mutex::new(HashMap::new()),
            max: MAX_MARKS,
        }
    }

    /// Is `key` marked at `now` (unix ms)? An expired mark is dropped on the way.
    pub(super) fn is_marked(&self, key: &CacheKey, now: u64) -> bool {
        let mut marks = self.marks.lock();
        match marks.get(key) {
            Some(&until) if until > now => true,
            Some(_) => {
                marks.remove(key);
                false
            }
            None => false,
        }
    }

    /// Mark `key` for `PASS_MARK` from `now` (unix ms).
    pub(super) fn mark(&self, key: CacheKey, now: u64) {
        let mut marks = self.marks.lock();
        // Bounded: drop expired marks when the table grows.
        if marks.len() >= self.max {
            marks.retain(|_, until| *until > now);
            if marks.len() >= self.max {
                marks.clear();
            }
        }
        marks.insert(key, now + PASS_MARK.as_millis() as u64);
    }

    /// `key` was stored or purged: it is no longer known to be uncacheable.
    pub(super) fn clear(&self, key: &CacheKey) {
        self.marks.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARK_MS: u64 = PASS_MARK.as_millis() as u64;

    fn k(n: u8) -> CacheKey {
        CacheKey([n; 16])
    }

    #[test]
    fn a_mark_expires_after_pass_mark() {
        let m = PassMarks::new();
        assert!(!m.is_marked(&k(1), 1_000));
        m.mark(k(1), 1_000);
        assert!(m.is_marked(&k(1), 1_000));
        assert!(m.is_marked(&k(1), 1_000 + MARK_MS - 1));
        assert!(!m.is_marked(&k(1), 1_000 + MARK_MS));
        // Dropped once seen expired.
        assert!(m.marks.lock().is_empty());
        assert!(!m.is_marked(&k(2), 1_000));
    }

    #[test]
    fn clear_unmarks() {
        let m = PassMarks::new();
        m.mark(k(1), 0);
        m.clear(&k(1));
        assert!(!m.is_marked(&k(1), 0));
    }

    #[test]
    fn full_table_drops_expired_marks_first_then_all() {
        let m = PassMarks {
            marks: Mutex::new(HashMap::new()),
            max: 3,
        };
        m.mark(k(1), 0);
        m.mark(k(2), 0);
        m.mark(k(3), MARK_MS);
        // Full: the two expired marks go, the live one stays.
        m.mark(k(4), MARK_MS);
        assert_eq!(m.marks.lock().len(), 2);
        assert!(m.is_marked(&k(3), MARK_MS));
        assert!(m.is_marked(&k(4), MARK_MS));
        // Full of live marks: all dropped, the new one kept.
        m.mark(k(5), MARK_MS);
        m.mark(k(6), MARK_MS);
        assert_eq!(m.marks.lock().len(), 1);
        assert!(m.is_marked(&k(6), MARK_MS));
        assert!(!m.is_marked(&k(3), MARK_MS));
    }
}
