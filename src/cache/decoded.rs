//! Decompressed copies of hot zstd entries, beside L1, on the response path: a client that
//! does not accept zstd is served the identity body, and a hot compressed entry is decompressed
//! once rather than on every such hit. Keyed like L1 and tagged with the entry each body came
//! from, so a replaced entry never serves an old body. Byte-bounded; `Cache` takes its share
//! out of the memory budget.

use bytes::Bytes;

use super::entry::{CodecError, Entry, StoredBody};
use crate::key::CacheKey;

/// Which stored entry a decoded body belongs to: a replaced entry never serves an old body.
fn identity_tag(entry: &Entry) -> u64 {
    (std::ptr::from_ref(entry) as usize as u64) ^ entry.response_time
}

#[derive(Clone)]
struct ByLen;

impl quick_cache::Weighter<CacheKey, (u64, Bytes)> for ByLen {
    fn weight(&self, _key: &CacheKey, val: &(u64, Bytes)) -> u64 {
        val.1.len() as u64 + 64
    }
}

pub(super) struct DecodedBodies {
    cache: quick_cache::sync::Cache<CacheKey, (u64, Bytes), ByLen>,
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
        if matches!(entry.body, StoredBody::Zstd { .. }) {
            let tag = identity_tag(entry);
            self.cache
                .insert(*key, (tag, Bytes::copy_from_slice(&identity)));
        }
    }

    /// The body of `entry` (stored under `key`) as a client without zstd sees it.
    pub(super) fn identity_body(&self, key: &CacheKey, entry: &Entry) -> Result<Bytes, CodecError> {
        match &entry.body {
            StoredBody::Raw(b) => Ok(b.clone()),
            StoredBody::Zstd { .. } => {
                // Tag with the entry's identity so a replaced entry never serves an old body.
                let tag = identity_tag(entry);
                if let Some((t, body)) = self.cache.get(key) {
                    if t == tag {
                        return Ok(body);
                    }
                }
                let body = entry.body.decoded()?;
                self.cache.insert(*key, (tag, body.clone()));
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
}
