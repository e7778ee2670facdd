//! `lookup_or_fetch`: L1 ─► (leader only) L2 ─► (coalesced) fetch ─► store (L1, L2 write-behind).
//! The cache never names the upstream: it is handed the fetch as a closure, so real requests and
//! background work share one path. L2 (`redis`, optional) is asked by the flight's leader only,
//! so a burst of misses costs Redis one GET, like it costs the upstream one request.
//!
//! A finished flight tells all its waiters at once what happened: a stored entry (served to
//! all), a failure (shared, so a dead upstream is not hit N times), or "pass" (each waiter
//! fetches for itself, concurrently). A waiter stops waiting after `coalesce_timeout` and
//! fetches on its own, so a stuck leader cannot hang the rest.
//!
//! The loop is `lookup_at` below; its steps (lead, follow, settle, store) are in `steps`. Each
//! mechanism the steps use has its own file: `vary` (which key), `pass_marks` (skip
//! coalescing for uncacheable keys), `flight` (coalescing: why it is not quick_cache's guard, and
//! how waiters hear the leader), `decoded` (identity bodies of zstd entries), `purge` (removal
//! across tiers and instances), `outcome` (the verdicts and their labels).
//!
//! Whether a stored entry may answer a request is `policy::usable` (freshness, the request's
//! own directives, credentials); a stale entry that may not be served goes through the same
//! flight, where the fetch revalidates it (a 304 comes back as [`Fetched::Revalidated`]) or
//! lets it stand in for a failed upstream ([`Fetched::Stale`]).

pub mod entry;
pub mod memory;
pub mod policy;
pub mod redis;
mod decoded;
mod flight;
mod outcome;
mod pass_marks;
mod purge;
mod steps;
mod vary;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use self::redis::{L2Health, L2};
use crate::clock::Clock;
use crate::config::RedisConfig;
use crate::key::CacheKey;
use crate::metrics::Metrics;
use decoded::DecodedBodies;
use entry::{Entry, Flags};
use flight::{Flights, Role};
use memory::Memory;
pub use outcome::{CacheStatus, Fetched, Outcome, Served};
use pass_marks::PassMarks;
use policy::Use;
pub use purge::PurgedAll;
use steps::Followed;
use vary::Variants;

/// What one request accepts from the store.
#[derive(Debug, Default, Clone)]
pub struct Want {
    /// The request's cache directives (`policy::request_directives`).
    pub directives: policy::CacheControl,
    /// The request carries credentials outside its key: `Authorization` (RFC 9111 §3.5) or a
    /// configured credential header. Only entries the origin marked shareable
    /// (`Flags::AUTH_OK`) may answer it.
    pub credentials: bool,
    /// A stale entry may be served (`max-stale`, `stale-while-revalidate`). False for the
    /// background refresh itself and for callers that want a fresh entry.
    pub allow_stale: bool,
}

impl Want {
    /// May a just-fetched entry answer this request? Only credentials can say no: an entry
    /// fetched a moment ago is as fresh as the request can get, but one fetched for another
    /// client (or for nobody, a prefetch) answers a credentialed request only when the origin
    /// said it may be shared. A coalescing waiter that may not take it fetches alone.
    fn accepts_fetched(&self, entry: &Entry) -> bool {
        !self.credentials || entry.flags.contains(Flags::AUTH_OK)
    }
}

/// One lookup's request facts, handed down the loop's steps together: the URL's key, the
/// headers that select a variant (and go upstream), and what the request accepts.
#[derive(Clone, Copy)]
struct Ask<'a> {
    primary: CacheKey,
    headers: &'a http::HeaderMap,
    want: &'a Want,
}

/// Settings for [`Cache`].
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub memory: u64,
    pub max_entry_size: u64,
    pub coalesce_timeout: Duration,
    /// Variants kept per URL for responses that `Vary`.
    pub max_variants: usize,
    /// `None` = no second tier.
    pub redis: Option<RedisConfig>,
}

/// The share of the memory budget kept for decompressed copies of hot compressed bodies.
const DECODED_SHARE: u64 = 8;

/// The cache: L1, the optional shared L2, and the in-flight table.
pub struct Cache {
    memory: Arc<Memory>,
    /// Decompressed bodies of recently served zstd entries, keyed like L1 and tagged with the
    /// entry they came from: a hot compressed entry is decompressed once, not on every hit by a
    /// client that does not accept zstd. Byte-bounded; its share is taken out of the budget.
    decoded: DecodedBodies,
    l2: Option<Arc<L2>>,
    /// Which URLs vary, on what, and which of their variants are stored.
    variants: Arc<Variants>,
    flights: Flights,
    pass_marks: PassMarks,
    coalesce_timeout: Duration,
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl Cache {
    pub fn new(settings: &CacheSettings, clock: Clock, metrics: Arc<Metrics>) -> Cache {
        metrics.cache_capacity.set(settings.memory as f64);
        let decoded_budget = settings.memory / DECODED_SHARE;
        let memory = Arc::new(Memory::new(
            settings.memory - decoded_budget,
            settings.max_entry_size,
            metrics.cache_evictions.clone(),
        ));
        let variants = Arc::new(Variants::new(settings.memory, settings.max_variants));
        let l2 = settings.redis.as_ref().map(|cfg| {
            let l2 = Arc::new(L2::new(cfg, metrics.l2()));
            l2.start(purge::from_elsewhere(memory.clone(), variants.clone()));
            l2
        });
        Cache {
            memory,
            decoded: DecodedBodies::new(decoded_budget),
            l2,
            variants,
            flights: Flights::default(),
            pass_marks: PassMarks::new(),
            coalesce_timeout: settings.coalesce_timeout,
            clock,
            metrics,
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The key a request's representation is stored under: `primary` itself, or, when the
    /// responses for `primary` vary (RFC 9111 §4.1), the variant selected by the request's
    /// values of the header fields their `Vary` names. One atomic load when nothing varies.
    pub fn variant_key(&self, primary: &CacheKey, headers: &http::HeaderMap) -> CacheKey {
        self.variants.key(primary, headers)
    }

    /// A fresh entry, if L1 has one.
    pub fn lookup(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let entry = self.memory.get(key)?;
        entry.is_fresh(self.clock.now_ms()).then_some(entry)
    }

    /// Whatever L1 holds for `key`, fresh or not (for revalidation and `only-if-cached`).
    pub fn peek(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.memory.get(key)
    }

    /// Is a fresh entry stored for `key` (for a request without headers, when it varies)? A
    /// peek: it does not count as a use of the entry (the prefetcher asks this, and must not
    /// make unused entries look popular).
    pub fn contains_fresh(&self, key: &CacheKey) -> bool {
        let key = self.variant_key(key, &http::HeaderMap::new());
        self.memory
            .peek(&key)
            .is_some_and(|e| e.is_fresh(self.clock.now_ms()))
    }

    /// Is `key` marked hit-for-pass (its last answer was uncacheable)? Read-only: the
    /// prefetcher asks, so as not to prefetch what will not be stored.
    pub fn is_pass_marked(&self, key: &CacheKey) -> bool {
        self.pass_marks.is_marked(key, self.clock.now_ms())
    }

    /// Serve a fresh `key` from L1, or run `fetch` once for all concurrent callers and store
    /// what it allows (see [`Cache::lookup_or_fetch_for`]). `headers`: the request headers the
    /// fetch sends, which select the variant when responses vary.
    pub async fn lookup_or_fetch<F, Fut>(
        &self,
        key: CacheKey,
        headers: &http::HeaderMap,
        fetch: F,
    ) -> Outcome
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Fetched>,
    {
        self.lookup_or_fetch_for(key, headers, &Want::default(), fetch)
            .await
            .0
    }

    /// Serve the request's variant of `primary` from L1 when the entry may answer a request
    /// that wants `want`, or run `fetch` once for all concurrent callers of that variant and
    /// store what it allows. `fetch` may run again for a caller whose leader passed or timed
    /// out.
    ///
    /// Variants: a flight runs under the key the request selects by what is known when it
    /// starts. When the leader's response turns out to vary on headers the waiters do not
    /// share (the first response for a URL, or an origin that changed its `Vary`), each
    /// waiter re-selects its own variant and joins (or leads) that variant's flight, so a
    /// burst of requests in three languages makes three upstream requests, not one or many.
    ///
    /// Also returns the key the answering entry is stored under (the variant, when responses
    /// vary), for the response path's per-entry state.
    pub async fn lookup_or_fetch_for<F, Fut>(
        &self,
        primary: CacheKey,
        headers: &http::HeaderMap,
        want: &Want,
        fetch: F,
    ) -> (Outcome, CacheKey)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Fetched>,
    {
        let mut at = self.variant_key(&primary, headers);
        let outcome = self
            .lookup_at(
                Ask {
                    primary,
                    headers,
                    want,
                },
                &fetch,
                &mut at,
            )
            .await;
        (outcome, at)
    }

    /// [`Cache::lookup_or_fetch_for`], with `key` the key to look under, updated to wherever
    /// the answer ends up stored.
    async fn lookup_at<F, Fut>(&self, ask: Ask<'_>, fetch: &F, key: &mut CacheKey) -> Outcome
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Fetched>,
    {
        // A leader that vanished (cancelled) hands over, and a waiter of another variant
        // re-selects: retry a bounded number of times.
        for _ in 0..3 {
            if let Some(answer) = self.answer_from_l1(key, ask.want) {
                return answer;
            }
            if self.pass_marks.is_marked(key, self.clock.now_ms()) {
                return self.fetch_alone(ask, fetch, key).await;
            }
            match self.flights.join(*key) {
                Role::Leader(guard) => return self.lead(guard, ask, fetch, key).await,
                Role::Waiter(wait) => match self.follow(wait, ask, key).await {
                    Followed::Done(outcome) => return outcome,
                    Followed::Alone => return self.fetch_alone(ask, fetch, key).await,
                    Followed::Retry(next) => *key = next,
                },
            }
        }
        self.fetch_alone(ask, fetch, key).await
    }

    /// L1's answer for `key`, when what it holds may answer without going upstream.
    fn answer_from_l1(&self, key: &CacheKey, want: &Want) -> Option<Outcome> {
        self.answer_from(self.memory.get(key)?, want)
    }

    /// How a stored `entry` answers a request that wants `want` without going upstream:
    /// fresh ([`Outcome::Hit`]), or stale where the request allows it ([`Outcome::Stale`],
    /// with a background refresh inside `stale-while-revalidate`). `None`: it must not answer
    /// (it is what the fetch revalidates, or stands in for a failing upstream).
    fn answer_from(&self, entry: Arc<Entry>, want: &Want) -> Option<Outcome> {
        let now = self.clock.now_ms();
        match policy::usable(&entry, &want.directives, want.credentials, now) {
            Use::Fresh => Some(Outcome::Hit(entry)),
            Use::Stale if want.allow_stale => Some(Outcome::Stale {
                entry,
                refresh: false,
            }),
            Use::StaleWhileRevalidate if want.allow_stale => Some(Outcome::Stale {
                entry,
                refresh: true,
            }),
            _ => None,
        }
    }

    /// Remember the uncompressed body of a compressed `entry` just built from `identity`, so
    /// that serving it does not decompress it again.
    pub fn seed_identity(&self, key: &CacheKey, entry: &Entry, identity: bytes::Bytes) {
        self.decoded.seed(key, entry, identity);
    }

    /// The body of `entry` (stored under `key`) as a client without zstd sees it.
    pub fn identity_body(
        &self,
        key: &CacheKey,
        entry: &Entry,
    ) -> Result<bytes::Bytes, entry::CodecError> {
        self.decoded.identity_body(key, entry)
    }

    /// Drop `key` from L1 (this instance only; see [`Cache::invalidate`] for the fleet).
    pub fn remove(&self, key: &CacheKey) -> bool {
        self.decoded.remove(key);
        self.memory.remove(key)
    }

    /// Drop everything from L1 (this instance only; see [`Cache::invalidate_all`]).
    pub fn clear(&self) {
        self.decoded.clear();
        self.variants.clear();
        self.memory.clear();
    }

    /// L2's state for `/readyz`; `None` without `[redis]`.
    pub fn l2_health(&self) -> Option<L2Health> {
        self.l2.as_ref().map(|l2| l2.health())
    }

    /// Refresh the L1 gauges (called at scrape time).
    pub fn update_gauges(&self) {
        self.metrics.cache_entries.set(self.memory.len() as f64);
        self.metrics.cache_bytes.set(self.bytes() as f64);
    }

    pub fn entries(&self) -> usize {
        self.memory.len()
    }

    /// Bytes held: stored entries plus decompressed copies of hot compressed bodies.
    pub fn bytes(&self) -> u64 {
        self.memory.weight() + self.decoded.weight()
    }
}
