//! The `Vary` index (RFC 9111 §4.1), consulted before L1 on every lookup: which URLs vary, on
//! what, and which of their variants are stored. A request's key is the primary key until
//! a response for that URL said `Vary`; from then on it is the variant the request's headers
//! select. Kept apart from `Cache` because it is its own bounded table with its own eviction
//! rule (least recently stored variant first), and the cache only asks it three things: which
//! key, which keys to drop after a store, which keys to drop after a purge.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::key::CacheKey;

/// The `Vary` index (RFC 9111 §4.1): for each URL (primary key) whose responses vary, the
/// header names they vary on and the keys of the variants stored, least recently stored first,
/// at most `max` of them. Bounded in count, like L1 in bytes; an index evicted before its
/// variants only costs a miss (the next response indexes the URL again).
pub(super) struct Variants {
    map: quick_cache::sync::Cache<CacheKey, Arc<VaryIndex>>,
    max: usize,
    /// Something was ever indexed; until then `key` costs one atomic load.
    any: AtomicBool,
}

struct VaryIndex {
    names: Vec<http::HeaderName>,
    keys: Mutex<VecDeque<CacheKey>>,
}

impl Variants {
    pub(super) fn new(memory: u64, max: usize) -> Variants {
        let items = usize::try_from(memory / 16_384)
            .unwrap_or(1 << 16)
            .max(1024);
        Variants {
            map: quick_cache::sync::Cache::new(items),
            max: max.max(1),
            any: AtomicBool::new(false),
        }
    }

    pub(super) fn key(&self, primary: &CacheKey, headers: &http::HeaderMap) -> CacheKey {
        if !self.any.load(Ordering::Relaxed) {
            return *primary;
        }
        match self.map.get(primary) {
            Some(ix) => primary.variant(&ix.names, headers),
            None => *primary,
        }
    }

    /// Record `key` as the newest variant of `primary` varying on `names`; returns the keys
    /// that are no longer variants (over `max`, or indexed under other names, or the
    /// unvarying entry the URL had before), for L1 to drop.
    pub(super) fn add(
        &self,
        primary: CacheKey,
        names: Vec<http::HeaderName>,
        key: CacheKey,
    ) -> Vec<CacheKey> {
        let mut dropped = Vec::new();
        let ix = match self.map.get(&primary) {
            Some(ix) if ix.names == names => ix,
            old => {
                match old {
                    Some(old) => dropped.extend(old.keys.lock().drain(..)),
                    None => dropped.push(primary),
                }
                let ix = Arc::new(VaryIndex {
                    names,
                    keys: Mutex::new(VecDeque::new()),
                });
                self.map.insert(primary, ix.clone());
                self.any.store(true, Ordering::Relaxed);
                ix
            }
        };
        let mut keys = ix.keys.lock();
        keys.retain(|k| *k != key);
        keys.push_back(key);
        while keys.len() > self.max {
            dropped.extend(keys.pop_front());
        }
        dropped.retain(|k| *k != key);
        dropped
    }

    /// `primary` no longer varies, or is purged: its variant keys, for L1 to drop.
    pub(super) fn forget(&self, primary: &CacheKey) -> Vec<CacheKey> {
        if !self.any.load(Ordering::Relaxed) {
            return Vec::new();
        }
        match self.map.remove(primary) {
            Some((_, ix)) => ix.keys.lock().drain(..).collect(),
            None => Vec::new(),
        }
    }

    pub(super) fn clear(&self) {
        self.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderName, HeaderValue};

    fn k(n: u8) -> CacheKey {
        CacheKey([n; 16])
    }

    fn accept_language() -> Vec<HeaderName> {
        vec![HeaderName::from_static("accept-language")]
    }

    fn lang(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("accept-language", HeaderValue::from_static(v));
        h
    }

    /// URL 1's variant for a request in language `l`.
    fn variant(l: &'static str) -> CacheKey {
        k(1).variant(&accept_language(), &lang(l))
    }

    /// URL 1 does not vary: its key is the primary key, and it has no variants to forget.
    fn assert_unvaried(v: &Variants) {
        assert_eq!(v.key(&k(1), &lang("fr")), k(1));
        assert!(v.forget(&k(1)).is_empty());
    }

    #[test]
    fn nothing_indexed_is_the_primary_key() {
        let v = Variants::new(1 << 20, 4);
        assert_unvaried(&v);
    }

    #[test]
    fn add_selects_by_header_and_drops_the_unvarying_entry() {
        let v = Variants::new(1 << 20, 4);
        let fr = variant("fr");
        // The first variant replaces whatever was stored under the primary key itself.
        assert_eq!(v.add(k(1), accept_language(), fr), vec![k(1)]);
        assert_eq!(v.key(&k(1), &lang("fr")), fr);
        assert_ne!(v.key(&k(1), &lang("de")), fr);
        // Other URLs are untouched.
        assert_eq!(v.key(&k(2), &lang("fr")), k(2));
    }

    #[test]
    fn at_most_max_variants_oldest_dropped_first() {
        let v = Variants::new(1 << 20, 2);
        v.add(k(1), accept_language(), variant("fr"));
        assert!(v.add(k(1), accept_language(), variant("de")).is_empty());
        // Storing "fr" again makes it the newest: "de" is now the oldest.
        assert!(v.add(k(1), accept_language(), variant("fr")).is_empty());
        assert_eq!(
            v.add(k(1), accept_language(), variant("en")),
            vec![variant("de")]
        );
        let mut left = v.forget(&k(1));
        left.sort();
        let mut want = vec![variant("fr"), variant("en")];
        want.sort();
        assert_eq!(left, want);
        // Forgotten: the URL no longer varies.
        assert_unvaried(&v);
    }

    #[test]
    fn new_names_drop_the_old_variants() {
        let v = Variants::new(1 << 20, 4);
        let fr = variant("fr");
        v.add(k(1), accept_language(), fr);
        let enc = vec![HeaderName::from_static("accept-encoding")];
        let gz = k(1).variant(&enc, &HeaderMap::new());
        assert_eq!(v.add(k(1), enc, gz), vec![fr]);
    }
}
