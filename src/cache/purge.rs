//! Purges, off the request path's main line: an admin purge, or RFC 9111 §4.4 (an unsafe
//! request changed the resource). A purge must reach every tier and every instance: L2 first, so
//! nothing promotes the key back; then this L1, with every variant stored for the key; and,
//! through Redis pub/sub, every other instance's L1, whose handler is [`from_elsewhere`].

use std::sync::Arc;

use super::memory::Memory;
use super::redis::Invalidation;
use super::vary::Variants;
use super::Cache;
use crate::key::CacheKey;

/// Other instances' purges (and our own, echoed) drop keys from this L1, with every variant
/// this instance stored for them.
pub(super) fn from_elsewhere(
    l1: Arc<Memory>,
    variants: Arc<Variants>,
) -> Arc<dyn Fn(Invalidation) + Send + Sync> {
    Arc::new(move |what| match what {
        Invalidation::Key(key) => {
            for k in variants.forget(&key) {
                l1.remove(&k);
            }
            l1.remove(&key);
        }
        Invalidation::All => {
            variants.clear();
            l1.clear();
        }
    })
}

impl Cache {
    /// Purge `key` everywhere (an admin purge, or RFC 9111 §4.4: an unsafe request changed the
    /// resource): from L2 first (so nothing promotes it back), then from this L1,
    /// and, through Redis pub/sub, from every instance's L1. `true` when some tier held it.
    /// When Redis is unreachable, only this L1 is purged and the error is logged.
    pub async fn invalidate(&self, key: &CacheKey) -> bool {
        // What this L1 holds is judged before Redis is told: our own pub/sub echo may drop it
        // first, and the purge still removed it.
        let variants = self.variants.forget(key);
        let in_l1 = self.memory.peek(key).is_some()
            || variants.iter().any(|v| self.memory.peek(v).is_some());
        let in_l2 = match &self.l2 {
            Some(l2) => l2.invalidate(key).await.unwrap_or_else(|e| {
                tracing::warn!(key = %key, error = %e, "purge did not reach Redis");
                false
            }),
            None => false,
        };
        self.pass_marks.clear(key);
        self.remove(key);
        for variant in &variants {
            self.remove(variant);
        }
        if in_l1 || in_l2 {
            self.metrics.cache_invalidated.increment(1);
        }
        in_l1 || in_l2
    }

    /// Purge `key` from L2 and, through pub/sub, every instance's L1, in a task of its own
    /// (for the request path, which must not wait for Redis). No-op without `[redis]`.
    pub fn invalidate_behind(&self, key: CacheKey) {
        let (Some(l2), Ok(rt)) = (&self.l2, tokio::runtime::Handle::try_current()) else {
            return;
        };
        let l2 = l2.clone();
        rt.spawn(async move {
            if let Err(e) = l2.invalidate_in_background(&key).await {
                tracing::warn!(key = %key, error = %e, "purge did not reach Redis");
            }
        });
    }

    /// RFC 9111 §4.4 from the request path: drop `key` (and every variant stored for it) from
    /// this L1 now, and from Redis and the fleet's L1s in the background, so that a slow or
    /// hung Redis never holds up the response to the unsafe request (review M4).
    pub fn invalidate_soon(&self, key: &CacheKey) {
        let variants = self.variants.forget(key);
        let mut held = self.remove(key);
        for variant in &variants {
            held |= self.remove(variant);
        }
        self.pass_marks.clear(key);
        if held {
            self.metrics.cache_invalidated.increment(1);
        }
        self.invalidate_behind(*key);
    }

    /// Purge everything under the key prefix in L2 and every instance's L1, and say what went.
    pub async fn invalidate_all(&self) -> PurgedAll {
        let l2 = match &self.l2 {
            Some(l2) => Some(l2.invalidate_all().await.map_err(|e| {
                tracing::warn!(error = %e, "purge of everything did not reach Redis");
            })),
            None => None,
        };
        let l1_entries = self.entries();
        self.clear();
        PurgedAll { l1_entries, l2 }
    }
}

/// What [`Cache::invalidate_all`] did.
#[derive(Debug, Clone, Copy)]
pub struct PurgedAll {
    /// Entries this instance dropped from L1.
    pub l1_entries: usize,
    /// `None` without `[redis]`; `Some(Ok(keys deleted))`, or `Some(Err(()))` when Redis was
    /// not (fully) purged: the reason is logged, not handed out.
    pub l2: Option<Result<u64, ()>>,
}
