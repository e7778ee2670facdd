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
//! Each mechanism the loop uses has its own file: `vary` (which key), `pass_marks` (skip
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
use flight::{Flight, FlightGuard, Flights, Role, Wait};
use memory::Memory;
pub use outcome::{CacheStatus, Fetched, Outcome, Served};
use pass_marks::PassMarks;
use policy::Use;
pub use purge::PurgedAll;
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

/// What a waiter makes of its flight's end.
enum Followed {
    /// The answer.
    Done(Outcome),
    /// Fetch alone (the leader passed or timed out, or its entry may not answer this request).
    Alone,
    /// Look again under this key (another variant, or the leader left no answer for us).
    Retry(CacheKey),
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

    /// The leader's part: L2 (for a primary key), else the fetch; either way the waiters hear
    /// how it ended, through `guard`.
    async fn lead<F, Fut>(
        &self,
        guard: FlightGuard,
        ask: Ask<'_>,
        fetch: &F,
        key: &mut CacheKey,
    ) -> Outcome
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Fetched>,
    {
        // L2 holds entries under primary keys only (see `store`). What it has is promoted into
        // L1 and judged like an L1 entry: fresh answers at once; a stale one within its window
        // is served stale (and refreshed) when the request allows; otherwise it is what the
        // fetch revalidates, or stands in for a failing upstream.
        if *key == ask.primary {
            if let Some(entry) = self.l2_lookup(key).await {
                match self.answer_from(entry, ask.want) {
                    Some(Outcome::Hit(entry)) => {
                        guard.finish(Flight::FromL2(entry.clone()));
                        return Outcome::HitL2(entry);
                    }
                    Some(Outcome::Stale { entry, refresh }) => {
                        guard.finish(Flight::Stale(entry.clone()));
                        return Outcome::Stale { entry, refresh };
                    }
                    _ => {}
                }
            }
        }
        let fetched = fetch().await;
        let remember = matches!(fetched, Fetched::Pass { remember: true, .. });
        let (outcome, flight) = self.settle(fetched, ask, key);
        // Marked before the flight ends, so a request arriving after it fetches alone rather
        // than leading a new flight.
        if remember {
            self.pass_marks.mark(*key, self.clock.now_ms());
        }
        guard.finish(flight);
        outcome
    }

    /// A waiter's part: wait for the leader (at most `coalesce_timeout`) and make of its word
    /// an answer for this request, or a reason to fetch alone or to look again.
    async fn follow(
        &self,
        wait: Wait,
        Ask {
            primary,
            headers,
            want,
        }: Ask<'_>,
        key: &CacheKey,
    ) -> Followed {
        let Some(flight) = wait.until(self.coalesce_timeout).await else {
            tracing::debug!(key = %key, "coalesce wait timed out; fetching alone");
            return Followed::Alone;
        };
        let mine = self.variant_key(&primary, headers);
        match flight {
            // The leader's response selected another variant than ours.
            Flight::Stored(_, at, _) if at != mine => Followed::Retry(mine),
            Flight::Stored(entry, _, _) | Flight::Stale(entry) if !want.accepts_fetched(&entry) => {
                Followed::Alone
            }
            Flight::Stored(entry, _, revalidated) => {
                self.metrics.coalesced.increment(1);
                Followed::Done(Outcome::Coalesced { entry, revalidated })
            }
            Flight::FromL2(entry) => {
                // Fresh for the leader's request; this one may ask for more (`max-age=0`,
                // `no-cache`, credentials): it is in L1 now, so the next round judges it
                // like any L1 entry.
                let now = self.clock.now_ms();
                if policy::usable(&entry, &want.directives, want.credentials, now) == Use::Fresh {
                    self.metrics.coalesced.increment(1);
                    return Followed::Done(Outcome::HitL2(entry));
                }
                Followed::Retry(*key)
            }
            Flight::Stale(entry) => {
                self.metrics.coalesced.increment(1);
                Followed::Done(Outcome::Stale {
                    entry,
                    refresh: false,
                })
            }
            Flight::Failed(e) => {
                self.metrics.coalesced.increment(1);
                Followed::Done(Outcome::Failed(e))
            }
            Flight::Pass => Followed::Alone,
            Flight::Abandoned | Flight::Pending => match self.lookup(key) {
                Some(entry) if want.accepts_fetched(&entry) => Followed::Done(Outcome::Hit(entry)),
                _ => Followed::Retry(*key),
            },
        }
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

    /// Fetch without joining a flight (after a pass, a timeout, or for a pass-marked key).
    /// `at`: updated to the key a stored answer went under.
    async fn fetch_alone<F, Fut>(&self, ask: Ask<'_>, fetch: &F, at: &mut CacheKey) -> Outcome
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Fetched>,
    {
        self.settle(fetch().await, ask, at).0
    }

    /// Store what a fetch allows and say what it means, for this caller ([`Outcome`]) and for
    /// the waiters of a flight it led ([`Flight`]). `at`: updated to the key a stored answer
    /// went under.
    fn settle(
        &self,
        fetched: Fetched,
        Ask {
            primary, headers, ..
        }: Ask<'_>,
        at: &mut CacheKey,
    ) -> (Outcome, Flight) {
        match fetched {
            Fetched::Stored(entry) => {
                *at = self.store(primary, headers, entry.clone());
                (
                    Outcome::Miss(entry.clone()),
                    Flight::Stored(entry, *at, false),
                )
            }
            Fetched::Revalidated(entry) => {
                *at = self.store(primary, headers, entry.clone());
                (
                    Outcome::Revalidated(entry.clone()),
                    Flight::Stored(entry, *at, true),
                )
            }
            Fetched::Stale(entry) => (
                Outcome::Stale {
                    entry: entry.clone(),
                    refresh: false,
                },
                Flight::Stale(entry),
            ),
            Fetched::Pass { response, .. } => (Outcome::Pass(response), Flight::Pass),
            Fetched::Failed(e) => (Outcome::Failed(e.clone()), Flight::Failed(e)),
        }
    }

    /// The leader's L2 step: a verified entry from Redis, fresh or within its stale window,
    /// promoted into L1 as it is (its response time, initial age and lifetime travel with it,
    /// so the age carries over and it expires here when it would have expired where it was
    /// fetched).
    async fn l2_lookup(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let l2 = self.l2.as_ref()?;
        let entry = Arc::new(l2.get(key, || self.clock.now_ms()).await?);
        self.memory.insert(*key, entry.clone());
        Some(entry)
    }

    /// How long Redis keeps an entry: its remaining freshness plus its stale window
    /// (`stale-while-revalidate`, `stale-if-error`, route grace), so that another instance can
    /// still serve it stale, revalidate it, or stand it in for a failing upstream.
    fn l2_ttl_ms(&self, entry: &Entry) -> u64 {
        entry.keep_ms(self.clock.now_ms())
    }

    /// Store a fetched `entry` for a request with `headers`, and say under which key: `primary`
    /// when the response does not vary, else the variant its `Vary` and the request's headers
    /// select. Variants live in L1 only: L2 is purged by primary key, and another instance
    /// could not name a variant it never saw.
    fn store(&self, primary: CacheKey, headers: &http::HeaderMap, entry: Arc<Entry>) -> CacheKey {
        // `policy::decide` refuses `Vary: *`, so an entry always has a name list.
        let names = policy::vary_names(&entry.headers).unwrap_or_default();
        let key = if names.is_empty() {
            for old in self.variants.forget(&primary) {
                self.memory.remove(&old);
            }
            if let Some(l2) = &self.l2 {
                l2.put(primary, entry.clone(), self.l2_ttl_ms(&entry));
            }
            primary
        } else {
            let key = primary.variant(&names, headers);
            for old in self.variants.add(primary, names, key) {
                self.memory.remove(&old);
            }
            key
        };
        self.pass_marks.clear(&primary);
        self.pass_marks.clear(&key);
        self.memory.insert(key, entry);
        self.metrics.cache_stored.increment(1);
        key
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
