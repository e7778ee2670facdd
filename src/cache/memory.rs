//! L1: the in-process store on quick_cache, weighted by the bytes each entry occupies.
//!
//! quick_cache's CLOCK-Pro style admission keeps one-hit wonders from flushing the hot set; the
//! weight of an entry is its compressed body plus headers plus a fixed overhead
//! ([`Entry::weight`]), so the configured budget bounds real memory, not an item count.

use std::sync::Arc;

use metrics::Counter;
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};

use super::entry::Entry;
use crate::key::CacheKey;

#[derive(Clone)]
struct ByBytes;

impl Weighter<CacheKey, Arc<Entry>> for ByBytes {
    fn weight(&self, _key: &CacheKey, val: &Arc<Entry>) -> u64 {
        val.weight()
    }
}

/// Counts evictions for `augur_cache_evictions_total`.
#[derive(Clone)]
struct CountEvictions(Counter);

impl Lifecycle<CacheKey, Arc<Entry>> for CountEvictions {
    type RequestState = ();

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, _state: &mut (), _key: CacheKey, _val: Arc<Entry>) {
        self.0.increment(1);
    }
}

/// The L1 store.
pub struct Memory {
    cache: Cache<CacheKey, Arc<Entry>, ByBytes, DefaultHashBuilder, CountEvictions>,
    budget: u64,
}

impl Memory {
    /// A store bounded by `budget` bytes that can hold entries up to `max_entry` bytes.
    pub fn new(budget: u64, max_entry: u64, evictions: Counter) -> Memory {
        // quick_cache splits the budget across shards and refuses an item heavier than one
        // shard; pick a shard count that keeps the largest storable entry admissible.
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        let wanted = (cores * 4).next_power_of_two();
        let fit = (budget / max_entry.max(1)).max(1);
        let mut shards = 1usize;
        while shards * 2 <= wanted && (shards as u64 * 2) <= fit {
            shards *= 2;
        }
        let options = OptionsBuilder::new()
            .estimated_items_capacity(usize::try_from(budget / 4096).unwrap_or(1 << 20).max(16))
            .weight_capacity(budget)
            .shards(shards)
            .build();
        let cache = match options {
            Ok(o) => Cache::with_options(
                o,
                ByBytes,
                DefaultHashBuilder::default(),
                CountEvictions(evictions),
            ),
            // Only an invalid option combination fails; fall back to quick_cache's defaults.
            Err(_) => Cache::with(
                usize::try_from(budget / 4096).unwrap_or(1 << 20).max(16),
                budget,
                ByBytes,
                DefaultHashBuilder::default(),
                CountEvictions(evictions),
            ),
        };
        Memory { cache, budget }
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.cache.get(key)
    }

    /// Like `get`, but not an access: eviction order is unchanged.
    pub fn peek(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.cache.peek(key)
    }

    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        self.cache.insert(key, entry);
    }

    pub fn remove(&self, key: &CacheKey) -> bool {
        self.cache.remove(key).is_some()
    }

    pub fn clear(&self) {
        self.cache.clear();
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Bytes held, by the entries' weights.
    pub fn weight(&self) -> u64 {
        self.cache.weight()
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }
}
