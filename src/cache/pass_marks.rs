//! Hit-for-pass marks, asked before a lookup joins a flight: a key whose response said it is
//! uncacheable skips coalescing for `PASS_MARK`, so a burst of requests for it fetches
//! concurrently instead of queueing behind one leader that will not store anything. A mark is
//! only a hint (losing one costs one coalesced round), so the table is bounded by dropping
//! marks, never by refusing one. pingora-cache calls the same idea its predictor.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;

use crate::key::CacheKey;

/// How long a key whose response was uncacheable skips coalescing ("hit-for-pass").
pub(super) const PASS_MARK: Duration = Duration::from_secs(5);

/// Marks kept at most; past this, the oldest mark makes room (expired ones first, since every
/// mark lasts `PASS_MARK`).
const MAX_MARKS: usize = 65_536;

pub(super) struct PassMarks {
    marks: Mutex<Table>,
    max: usize,
}

/// Every mark lasts the same `PASS_MARK`, so the order marks were made in is the order they
/// expire in: a queue of `(key, until)` finds the oldest in O(1). A queue item whose `until`
/// is no longer the key's (re-marked, cleared, or dropped expired) is stale and skipped.
#[derive(Default)]
struct Table {
    /// Key ─► until when (unix ms) it is marked.
    until: HashMap<CacheKey, u64>,
    /// Marks in the order they were made, stale items included (at most twice `max`).
    order: VecDeque<(CacheKey, u64)>,
}

impl Table {
    /// Drop the oldest live mark, or nothing when there is none.
    fn evict_oldest(&mut self) {
        while let Some((key, until)) = self.order.pop_front() {
            if self.until.get(&key) == Some(&until) {
                self.until.remove(&key);
                return;
            }
        }
    }

    /// Drop the stale items at the front, and every expired mark there (the front is oldest).
    fn drop_expired(&mut self, now: u64) {
        while let Some(&(key, until)) = self.order.front() {
            let live = self.until.get(&key) == Some(&until);
            if live && until > now {
                return;
            }
            if live {
                self.until.remove(&key);
            }
            self.order.pop_front();
        }
    }
}

impl PassMarks {
    pub(super) fn new() -> PassMarks {
        PassMarks {
            marks: Mutex::new(Table::default()),
            max: MAX_MARKS,
        }
    }

    /// Is `key` marked at `now` (unix ms)? An expired mark is dropped on the way.
    pub(super) fn is_marked(&self, key: &CacheKey, now: u64) -> bool {
        let mut marks = self.marks.lock();
        match marks.until.get(key) {
            Some(&until) if until > now => true,
            Some(_) => {
                marks.until.remove(key);
                false
            }
            None => false,
        }
    }

    /// Mark `key` for `PASS_MARK` from `now` (unix ms).
    ///
    /// Bounded without a flush (security review L11): a full table drops its expired marks,
    /// then its oldest live one, so a flood of new uncacheable URLs costs each legitimate mark
    /// at most its remaining seconds, never all marks at once.
    pub(super) fn mark(&self, key: CacheKey, now: u64) {
        let mut marks = self.marks.lock();
        let until = now + PASS_MARK.as_millis() as u64;
        if marks.until.insert(key, until).is_none() && marks.until.len() > self.max {
            marks.drop_expired(now);
            if marks.until.len() > self.max {
                marks.evict_oldest();
            }
        }
        marks.order.push_back((key, until));
        // Re-marks and clears leave stale items behind; compact before they outnumber marks.
        if marks.order.len() > 2 * self.max.max(1) {
            let Table { until, order } = &mut *marks;
            order.retain(|(k, u)| until.get(k) == Some(u));
        }
    }

    /// `key` was stored or purged: it is no longer known to be uncacheable.
    pub(super) fn clear(&self, key: &CacheKey) {
        self.marks.lock().until.remove(key);
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
        assert!(m.marks.lock().until.is_empty());
        assert!(!m.is_marked(&k(2), 1_000));
    }

    #[test]
    fn clear_unmarks() {
        let m = PassMarks::new();
        m.mark(k(1), 0);
        m.clear(&k(1));
        assert!(!m.is_marked(&k(1), 0));
    }

    fn small(max: usize) -> PassMarks {
        let m = PassMarks::new();
        PassMarks { max, ..m }
    }

    #[test]
    fn full_table_drops_expired_marks_first() {
        let m = small(3);
        m.mark(k(1), 0);
        m.mark(k(2), 0);
        m.mark(k(3), MARK_MS);
        // Full: the two expired marks go, the live one stays.
        m.mark(k(4), MARK_MS);
        assert!(!m.is_marked(&k(1), MARK_MS) && !m.is_marked(&k(2), MARK_MS));
        assert!(m.is_marked(&k(3), MARK_MS));
        assert!(m.is_marked(&k(4), MARK_MS));
    }

    /// L11: a flood of new marks evicts the oldest marks one by one; it never flushes the
    /// table, so a legitimate mark newer than the oldest survives one more mark.
    #[test]
    fn full_table_of_live_marks_evicts_the_oldest_only() {
        let m = small(3);
        m.mark(k(1), 0);
        m.mark(k(2), 1);
        m.mark(k(3), 2);
        m.mark(k(4), 3);
        assert!(!m.is_marked(&k(1), 3), "the oldest mark made room");
        for n in 2..=4 {
            assert!(m.is_marked(&k(n), 3), "mark {n} kept");
        }
        // Re-marking moves a key to the back: k(2) now outlives k(3).
        m.mark(k(2), 4);
        m.mark(k(5), 5);
        assert!(!m.is_marked(&k(3), 5));
        assert!(m.is_marked(&k(2), 5) && m.is_marked(&k(4), 5) && m.is_marked(&k(5), 5));
    }

    /// However many times keys are re-marked or cleared, the bookkeeping stays bounded.
    #[test]
    fn churn_keeps_the_table_bounded() {
        let m = small(4);
        for i in 0..10_000u32 {
            let key = k((i % 7) as u8);
            m.mark(key, u64::from(i));
            if i % 3 == 0 {
                m.clear(&key);
            }
            let t = m.marks.lock();
            assert!(t.until.len() <= 4 && t.order.len() <= 8);
        }
    }
}
