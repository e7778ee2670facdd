//! Decompressed copies of hot zstd entries, beside L1, on the response path: a client that
//! does not accept zstd is served the identity body, and a hot compressed entry is decompressed
//! once rather than on every such hit. Keyed like L1 and tied to the exact frame each body was
//! decoded from, so a replaced entry never serves an old body. Byte-bounded; `Cache` takes its
//! share out of the memory budget.

use bytes::Bytes;

use super::entry::{CodecError, Entry, StoredBody};
use crate::key::CacheKey;

/// A decoded body and the frame it was decoded from. Holding the frame (a reference count, no
/// copy) keeps its bytes allocated, so no other frame can live at that address while this copy
/// exists: "same address and length as the held frame" then means "this very frame", with no
/// tag that a reused address or an equal timestamp could fake (security review L4).
#[derive(Clone)]
struct Decoded {
    frame: Bytes,
    body: Bytes,
}

impl Decoded {
    /// Whether `frame` is the frame this body was decoded from: two word comparisons, no
    /// allocation on the hit path.
    fn is_of(&self, frame: &Bytes) -> bool {
        self.frame.as_ptr() == frame.as_ptr() && self.frame.len() == frame.len()
    }
}

#[derive(Clone)]
struct ByLen;

impl quick_cache::Weighter<CacheKey, Decoded> for ByLen {
    /// The frame counts too: held here, it outlives an entry evicted from L1.
    fn weight(&self, _key: &CacheKey, val: &Decoded) -> u64 {
        (val.body.len() + val.frame.len()) as u64 + 64
    }
}

pub(super) struct DecodedBodies {
    cache: quick_cache::sync::Cache<CacheKey, Decoded, ByLen>,
}

impl DecodedBodies {
    pub(super) fn new(budget: u64) -> DecodedBodies {
        let items = usize::try_from(budget / 16_384).unwrap_or(1 << 16).max(16);
        DecodedBodies {
            cache: quick_cache::sync::Cache::with_weighter(items, budget.max(1), ByLen),
        }
    }

    /// Remember the uncompressed body of a compressed `entry` just built from `identity`, so
    /// that serving it does not decompress it again.
    pub(super) fn seed(&self, key: &CacheKey, entry: &Entry, identity: Bytes) {
        if let StoredBody::Zstd { frame, .. } = &entry.body {
            let decoded = Decoded {
                frame: frame.clone(),
                body: Bytes::copy_from_slice(&identity),
            };
            self.cache.insert(*key, decoded);
        }
    }

    /// The body of `entry` (stored under `key`) as a client without zstd sees it.
    pub(super) fn identity_body(&self, key: &CacheKey, entry: &Entry) -> Result<Bytes, CodecError> {
        match &entry.body {
            StoredBody::Raw(b) => Ok(b.clone()),
            StoredBody::Zstd { frame, .. } => {
                if let Some(d) = self.cache.get(key) {
                    if d.is_of(frame) {
                        return Ok(d.body);
                    }
                }
                let body = entry.body.decoded()?;
                let decoded = Decoded {
                    frame: frame.clone(),
                    body: body.clone(),
                };
                self.cache.insert(*key, decoded);
                Ok(body)
            }
        }
    }

    pub(super) fn remove(&self, key: &CacheKey) {
        self.cache.remove(key);
    }

    pub(super) fn clear(&self) {
        self.cache.clear();
    }

    /// Bytes held, as weighed against the budget.
    pub(super) fn weight(&self) -> u64 {
        self.cache.weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::{Compression, Flags};
    use http::{HeaderMap, StatusCode};

    fn zstd_entry(body: &[u8]) -> Entry {
        let c = Compression {
            level: 3,
            threshold: 0,
        };
        Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: StoredBody::encode(Bytes::copy_from_slice(body), c).0,
            request_time: 10,
            response_time: 20,
            initial_age: 0,
            lifetime: 60_000,
            flags: Flags::default(),
            stale_while_revalidate: 0,
            stale_if_error: 0,
        }
    }

    #[test]
    fn seeded_body_is_served_only_for_its_own_entry() {
        let d = DecodedBodies::new(1 << 20);
        let key = CacheKey([1; 16]);
        let body = [b'a'; 4096];
        let old = zstd_entry(&body);
        assert!(matches!(old.body, StoredBody::Zstd { .. }));
        // Seeded with a marker the frame does not hold, to see where the answer came from.
        d.seed(&key, &old, Bytes::from_static(b"seeded"));
        assert_eq!(d.identity_body(&key, &old).unwrap(), &b"seeded"[..]);
        // Another entry under the same key (a replacement) is decoded, never the old body.
        let new = zstd_entry(&body);
        assert_eq!(d.identity_body(&key, &new).unwrap(), &body[..]);
        d.remove(&key);
        assert_eq!(d.weight(), 0);
        assert_eq!(d.identity_body(&key, &old).unwrap(), &body[..]);
        d.clear();
        assert_eq!(d.weight(), 0);
    }

    /// L4: a replacement built at the very address of the entry it replaces, with the same
    /// response time (same millisecond), is still decoded afresh, never served the old body.
    #[test]
    fn a_replacement_at_the_same_address_in_the_same_millisecond_is_not_served_the_old_body() {
        let d = DecodedBodies::new(1 << 20);
        let key = CacheKey([2; 16]);
        let (old_body, new_body) = ([b'o'; 4096], [b'n'; 4096]);
        let mut slot = zstd_entry(&old_body);
        d.seed(&key, &slot, Bytes::copy_from_slice(&old_body));
        let before = std::ptr::from_ref(&slot);
        // Assigned in place: same address, same `response_time`, another body.
        slot = zstd_entry(&new_body);
        assert_eq!(std::ptr::from_ref(&slot), before);
        let served = d.identity_body(&key, &slot).unwrap();
        assert!(served == new_body[..], "served the replaced entry's body");
    }
}
