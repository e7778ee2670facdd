//! `lookup_or_fetch`: L1 ─► (leader only) L2 ─► (coalesced) fetch ─► store (L1, L2 write-behind).
//! The cache never names the upstream: it is handed the fetch as a closure, so real requests and
//! background work share one path. L2 (`redis`, optional) is asked by the flight's leader only,
//! so a burst of misses costs Redis one GET, like it costs the upstream one request.
//!
//! Coalescing is Augur's own in-flight table rather than quick_cache's placeholder guard: when a
//! guard's holder does not insert (the response was uncacheable, or failed), quick_cache hands
//! the guard to the next waiter, one at a time, and a burst of N requests for an uncacheable
//! URL would take N upstream round trips in series. Here a finished flight tells all its waiters
//! at once what happened: a stored entry (served to all), a failure (shared, so a dead upstream
//! is not hit N times), or "pass" (each waiter fetches for itself, concurrently). A waiter stops
//! waiting after `coalesce_timeout` and fetches on its own, so a stuck leader cannot hang the
//! rest. A leader dropped mid-flight (client gone) wakes its waiters, and one of them leads.
//!
//! Whether a stored entry may answer a request is `policy::usable` (freshness, the request's
//! own directives, `Authorization`); a stale entry that may not be served goes through the same
//! flight, where the fetch revalidates it (a 304 comes back as [`Fetched::Revalidated`]) or
//! lets it stand in for a failed upstream ([`Fetched::Stale`]).

pub mod entry;
pub mod memory;
pub mod policy;
pub mod redis;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use parking_lot::Mutex;
use tokio::sync::watch;

use self::redis::{Invalidation, L2Health, L2};
use crate::body::Body;
use crate::clock::Clock;
use crate::config::RedisConfig;
use crate::error::ProxyError;
use crate::key::CacheKey;
pub use crate::metrics::CacheStatus;
use crate::metrics::Metrics;
use entry::{Entry, Flags};
use memory::Memory;
use policy::Use;

/// What [`Cache::invalidate_all`] did.
#[derive(Debug, Clone, Copy)]
pub struct PurgedAll {
    /// Entries this instance dropped from L1.
    pub l1_entries: usize,
    /// `None` without `[redis]`; `Some(Ok(keys deleted))`, or `Some(Err(()))` when Redis was
    /// not (fully) purged: the reason is logged, not handed out.
    pub l2: Option<Result<u64, ()>>,
}

/// What a fetch produced.
pub enum Fetched {
    /// A storable response, already built into an entry.
    Stored(Arc<Entry>),
    /// A response for this caller only (uncacheable, or too large to store), streamed through.
    /// `remember`: the response said it is uncacheable (not a transient failure), so later
    /// requests for the key skip coalescing for a while.
    Pass {
        response: Response<Body>,
        remember: bool,
    },
    /// The upstream failed.
    Failed(ProxyError),
    /// The stored entry was revalidated (304): freshened, to be stored again.
    Revalidated(Arc<Entry>),
    /// The upstream failed and the stored entry may stand in (`stale-if-error`, grace):
    /// served, not stored again.
    Stale(Arc<Entry>),
}

/// What a lookup produced.
pub enum Outcome {
    /// Fresh in L1.
    Hit(Arc<Entry>),
    /// Fresh in L2 (Redis), promoted into L1 (also for waiters of a leader that found it there).
    HitL2(Arc<Entry>),
    /// Fetched by this caller and stored.
    Miss(Arc<Entry>),
    /// Fetched by a concurrent request this caller waited for; `revalidated`: that fetch was a
    /// revalidation answered 304 (so the response is labelled `REVALIDATED`, not `MISS`).
    Coalesced {
        entry: Arc<Entry>,
        revalidated: bool,
    },
    /// A stale entry, revalidated upstream with a 304 and stored again.
    Revalidated(Arc<Entry>),
    /// Served stale; `refresh`: the caller should start a background refresh
    /// (`stale-while-revalidate`).
    Stale {
        entry: Arc<Entry>,
        refresh: bool,
    },
    /// Fetched by this caller, not stored.
    Pass(Response<Body>),
    Failed(ProxyError),
}

impl Outcome {
    /// The verdict the response is labelled with (`x-cache`, metrics).
    pub fn status(&self) -> CacheStatus {
        match self {
            Outcome::Hit(_) | Outcome::HitL2(_) => CacheStatus::Hit,
            Outcome::Coalesced {
                revalidated: true, ..
            }
            | Outcome::Revalidated(_) => CacheStatus::Revalidated,
            Outcome::Stale { .. } => CacheStatus::Stale,
            Outcome::Miss(_)
            | Outcome::Coalesced { .. }
            | Outcome::Pass(_)
            | Outcome::Failed(_) => CacheStatus::Miss,
        }
    }

    /// How the request was served, for the prefetcher's bookkeeping.
    pub fn served(&self) -> crate::prefetch::Served {
        use crate::prefetch::Served;
        match self {
            Outcome::Hit(_) | Outcome::HitL2(_) | Outcome::Stale { .. } => Served::Hit,
            Outcome::Coalesced { .. } => Served::Coalesced,
            Outcome::Miss(_) | Outcome::Revalidated(_) | Outcome::Pass(_) | Outcome::Failed(_) => {
                Served::Fetched
            }
        }
    }
}

#[derive(Clone)]
enum Flight {
    Pending,
    /// Stored, under this key (a variant key when the response varies); `true` when the
    /// fetch was a revalidation answered 304.
    Stored(Arc<Entry>, CacheKey, bool),
    FromL2(Arc<Entry>),
    Stale(Arc<Entry>),
    Pass,
    Failed(ProxyError),
    Abandoned,
}

/// How long a key whose response was uncacheable skips coalescing ("hit-for-pass").
const PASS_MARK: Duration = Duration::from_secs(5);

/// What one request accepts from the store.
#[derive(Debug, Default, Clone)]
pub struct Want {
    /// The request's cache directives (`policy::request_directives`).
    pub directives: policy::CacheControl,
    /// The request carries `Authorization` (RFC 9111 §3.5).
    pub authorization: bool,
    /// A stale entry may be served (`max-stale`, `stale-while-revalidate`). False for the
    /// background refresh itself and for callers that want a fresh entry.
    pub allow_stale: bool,
}

impl Want {
    /// May a just-fetched entry answer this request? Only `Authorization` can say no: an entry
    /// fetched a moment ago is as fresh as the request can get.
    fn accepts_fetched(&self, entry: &Entry) -> bool {
        !self.authorization || entry.flags.contains(Flags::AUTH_OK)
    }
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
    inflight: Mutex<HashMap<CacheKey, watch::Sender<Flight>>>,
    pass_marks: Mutex<HashMap<CacheKey, u64>>,
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
            // Other instances' purges (and our own, echoed) drop keys from this L1, with
            // every variant this instance stored for them.
            let (l1, variants) = (memory.clone(), variants.clone());
            l2.start(Arc::new(move |what| match what {
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
            }));
            l2
        });
        Cache {
            memory,
            decoded: DecodedBodies::new(decoded_budget),
            l2,
            variants,
            inflight: Mutex::new(HashMap::new()),
            pass_marks: Mutex::new(HashMap::new()),
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
            .lookup_at(primary, headers, want, &fetch, &mut at)
            .await;
        (outcome, at)
    }

    /// [`Cache::lookup_or_fetch_for`], with `key` the key to look under, updated to wherever
    /// the answer ends up stored.
    async fn lookup_at<F, Fut>(
        &self,
        primary: CacheKey,
        headers: &http::HeaderMap,
        want: &Want,
        fetch: &F,
        key: &mut CacheKey,
    ) -> Outcome
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Fetched>,
    {
        // A leader that vanished (cancelled) hands over, and a waiter of another variant
        // re-selects: retry a bounded number of times.
        for _ in 0..3 {
            if let Some(entry) = self.memory.get(key) {
                if let Some(answer) = self.answer_from(entry, want) {
                    return answer;
                }
            }
            if self.pass_marked(key) {
                return self.fetch_alone(primary, headers, fetch, key).await;
            }
            match self.join(*key) {
                Role::Leader(guard) => {
                    // L2 holds entries under primary keys only (see `store`). What it has is
                    // promoted into L1 and judged like an L1 entry: fresh answers at once; a
                    // stale one within its window is served stale (and refreshed) when the
                    // request allows; otherwise it is what the fetch revalidates, or stands
                    // in for a failing upstream.
                    if *key == primary {
                        if let Some(entry) = self.l2_lookup(key).await {
                            match self.answer_from(entry, want) {
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
                    return match fetch().await {
                        Fetched::Stored(entry) => {
                            *key = self.store(primary, headers, entry.clone());
                            guard.finish(Flight::Stored(entry.clone(), *key, false));
                            Outcome::Miss(entry)
                        }
                        Fetched::Revalidated(entry) => {
                            *key = self.store(primary, headers, entry.clone());
                            guard.finish(Flight::Stored(entry.clone(), *key, true));
                            Outcome::Revalidated(entry)
                        }
                        Fetched::Stale(entry) => {
                            guard.finish(Flight::Stale(entry.clone()));
                            Outcome::Stale {
                                entry,
                                refresh: false,
                            }
                        }
                        Fetched::Pass { response, remember } => {
                            if remember {
                                self.mark_pass(*key);
                            }
                            guard.finish(Flight::Pass);
                            Outcome::Pass(response)
                        }
                        Fetched::Failed(e) => {
                            guard.finish(Flight::Failed(e.clone()));
                            Outcome::Failed(e)
                        }
                    };
                }
                Role::Waiter(mut rx) => {
                    let waited = tokio::time::timeout(self.coalesce_timeout, async {
                        // Clone out of the watch guard at once: it must not live across awaits.
                        rx.wait_for(|f| !matches!(f, Flight::Pending))
                            .await
                            .map(|f| f.clone())
                    })
                    .await;
                    let flight = match waited {
                        Ok(Ok(f)) => f,
                        // The sender is gone without a word: treat as abandoned.
                        Ok(Err(_)) => Flight::Abandoned,
                        Err(_) => {
                            tracing::debug!(key = %key, "coalesce wait timed out; fetching alone");
                            return self.fetch_alone(primary, headers, fetch, key).await;
                        }
                    };
                    let mine = self.variant_key(&primary, headers);
                    match flight {
                        Flight::Stored(_, at, _) if at != mine => {
                            // The leader's response selected another variant than ours.
                            *key = mine;
                        }
                        Flight::Stored(entry, _, _) | Flight::Stale(entry)
                            if !want.accepts_fetched(&entry) =>
                        {
                            return self.fetch_alone(primary, headers, fetch, key).await;
                        }
                        Flight::Stored(entry, _, revalidated) => {
                            self.metrics.coalesced.increment(1);
                            return Outcome::Coalesced { entry, revalidated };
                        }
                        Flight::FromL2(entry) => {
                            // Fresh for the leader's request; this one may ask for more
                            // (`max-age=0`, `no-cache`, `Authorization`): it is in L1 now, so
                            // the next round judges it like any L1 entry.
                            let now = self.clock.now_ms();
                            if policy::usable(&entry, &want.directives, want.authorization, now)
                                == Use::Fresh
                            {
                                self.metrics.coalesced.increment(1);
                                return Outcome::HitL2(entry);
                            }
                        }
                        Flight::Stale(entry) => {
                            self.metrics.coalesced.increment(1);
                            return Outcome::Stale {
                                entry,
                                refresh: false,
                            };
                        }
                        Flight::Failed(e) => {
                            self.metrics.coalesced.increment(1);
                            return Outcome::Failed(e);
                        }
                        Flight::Pass => {
                            return self.fetch_alone(primary, headers, fetch, key).await
                        }
                        Flight::Abandoned | Flight::Pending => {
                            if let Some(entry) = self.lookup(key) {
                                if want.accepts_fetched(&entry) {
                                    return Outcome::Hit(entry);
                                }
                            }
                        }
                    }
                }
            }
        }
        self.fetch_alone(primary, headers, fetch, key).await
    }

    /// How a stored `entry` answers a request that wants `want` without going upstream:
    /// fresh ([`Outcome::Hit`]), or stale where the request allows it ([`Outcome::Stale`],
    /// with a background refresh inside `stale-while-revalidate`). `None`: it must not answer
    /// (it is what the fetch revalidates, or stands in for a failing upstream).
    fn answer_from(&self, entry: Arc<Entry>, want: &Want) -> Option<Outcome> {
        let now = self.clock.now_ms();
        match policy::usable(&entry, &want.directives, want.authorization, now) {
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
    async fn fetch_alone<F, Fut>(
        &self,
        primary: CacheKey,
        headers: &http::HeaderMap,
        fetch: &F,
        at: &mut CacheKey,
    ) -> Outcome
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Fetched>,
    {
        match fetch().await {
            Fetched::Stored(entry) => {
                *at = self.store(primary, headers, entry.clone());
                Outcome::Miss(entry)
            }
            Fetched::Revalidated(entry) => {
                *at = self.store(primary, headers, entry.clone());
                Outcome::Revalidated(entry)
            }
            Fetched::Stale(entry) => Outcome::Stale {
                entry,
                refresh: false,
            },
            Fetched::Pass { response, .. } => Outcome::Pass(response),
            Fetched::Failed(e) => Outcome::Failed(e),
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
        {
            let mut marks = self.pass_marks.lock();
            marks.remove(&primary);
            marks.remove(&key);
        }
        self.memory.insert(key, entry);
        self.metrics.cache_stored.increment(1);
        key
    }

    fn pass_marked(&self, key: &CacheKey) -> bool {
        let mut marks = self.pass_marks.lock();
        match marks.get(key) {
            Some(&until) if until > self.clock.now_ms() => true,
            Some(_) => {
                marks.remove(key);
                false
            }
            None => false,
        }
    }

    fn mark_pass(&self, key: CacheKey) {
        let now = self.clock.now_ms();
        let mut marks = self.pass_marks.lock();
        // Bounded: drop expired marks when the table grows.
        if marks.len() >= 65_536 {
            marks.retain(|_, until| *until > now);
            if marks.len() >= 65_536 {
                marks.clear();
            }
        }
        marks.insert(key, now + PASS_MARK.as_millis() as u64);
    }

    fn join(&self, key: CacheKey) -> Role<'_> {
        let mut inflight = self.inflight.lock();
        if let Some(tx) = inflight.get(&key) {
            return Role::Waiter(tx.subscribe());
        }
        let (tx, _rx) = watch::channel(Flight::Pending);
        inflight.insert(key, tx);
        Role::Leader(FlightGuard {
            cache: self,
            key,
            done: false,
        })
    }

    /// Remember the uncompressed body of a compressed `entry` just built from `identity`, so
    /// that serving it does not decompress it again.
    pub fn seed_identity(&self, key: &CacheKey, entry: &Entry, identity: bytes::Bytes) {
        if matches!(entry.body, entry::StoredBody::Zstd { .. }) {
            let tag = identity_tag(entry);
            self.decoded
                .cache
                .insert(*key, (tag, bytes::Bytes::copy_from_slice(&identity)));
        }
    }

    /// The body of `entry` (stored under `key`) as a client without zstd sees it.
    pub fn identity_body(
        &self,
        key: &CacheKey,
        entry: &Entry,
    ) -> Result<bytes::Bytes, entry::CodecError> {
        match &entry.body {
            entry::StoredBody::Raw(b) => Ok(b.clone()),
            entry::StoredBody::Zstd { .. } => {
                // Tag with the entry's identity so a replaced entry never serves an old body.
                let tag = identity_tag(entry);
                if let Some((t, body)) = self.decoded.cache.get(key) {
                    if t == tag {
                        return Ok(body);
                    }
                }
                let body = entry.body.decoded()?;
                self.decoded.cache.insert(*key, (tag, body.clone()));
                Ok(body)
            }
        }
    }

    /// Drop `key` from L1 (this instance only; see [`Cache::invalidate`] for the fleet).
    pub fn remove(&self, key: &CacheKey) -> bool {
        self.decoded.cache.remove(key);
        self.memory.remove(key)
    }

    /// Drop everything from L1 (this instance only; see [`Cache::invalidate_all`]).
    pub fn clear(&self) {
        self.decoded.cache.clear();
        self.variants.clear();
        self.memory.clear();
    }

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
        self.pass_marks.lock().remove(key);
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
            if let Err(e) = l2.invalidate(&key).await {
                tracing::warn!(key = %key, error = %e, "purge did not reach Redis");
            }
        });
    }

    /// Purge everything under the key prefix in L2 and every instance's L1, and say what went.
    pub async fn invalidate_all(&self) -> PurgedAll {
        let l2 = match &self.l2 {
            Some(l2) => Some(l2.invalidate_all().await.map_err(|e| {
                tracing::warn!(error = %e, "purge of everything did not reach Redis");
            })),
            None => None,
        };
        let l1_entries = self.memory.len();
        self.clear();
        PurgedAll { l1_entries, l2 }
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
        self.memory.weight() + self.decoded.cache.weight()
    }
}

/// Which stored entry a decoded body belongs to: a replaced entry never serves an old body.
fn identity_tag(entry: &Entry) -> u64 {
    (std::ptr::from_ref(entry) as usize as u64) ^ entry.response_time
}

#[derive(Clone)]
struct ByLen;

impl quick_cache::Weighter<CacheKey, (u64, bytes::Bytes)> for ByLen {
    fn weight(&self, _key: &CacheKey, val: &(u64, bytes::Bytes)) -> u64 {
        val.1.len() as u64 + 64
    }
}

struct DecodedBodies {
    cache: quick_cache::sync::Cache<CacheKey, (u64, bytes::Bytes), ByLen>,
}

impl DecodedBodies {
    fn new(budget: u64) -> DecodedBodies {
        let items = usize::try_from(budget / 16_384).unwrap_or(1 << 16).max(16);
        DecodedBodies {
            cache: quick_cache::sync::Cache::with_weighter(items, budget.max(1), ByLen),
        }
    }
}

/// The `Vary` index (RFC 9111 §4.1): for each URL (primary key) whose responses vary, the
/// header names they vary on and the keys of the variants stored, least recently stored first,
/// at most `max` of them. Bounded in count, like L1 in bytes; an index evicted before its
/// variants only costs a miss (the next response indexes the URL again).
struct Variants {
    map: quick_cache::sync::Cache<CacheKey, Arc<VaryIndex>>,
    max: usize,
    /// Something was ever indexed; until then `key` costs one atomic load.
    any: std::sync::atomic::AtomicBool,
}

struct VaryIndex {
    names: Vec<http::HeaderName>,
    keys: Mutex<std::collections::VecDeque<CacheKey>>,
}

impl Variants {
    fn new(memory: u64, max: usize) -> Variants {
        let items = usize::try_from(memory / 16_384)
            .unwrap_or(1 << 16)
            .max(1024);
        Variants {
            map: quick_cache::sync::Cache::new(items),
            max: max.max(1),
            any: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn key(&self, primary: &CacheKey, headers: &http::HeaderMap) -> CacheKey {
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
    fn add(&self, primary: CacheKey, names: Vec<http::HeaderName>, key: CacheKey) -> Vec<CacheKey> {
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
                    keys: Mutex::new(std::collections::VecDeque::new()),
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
    fn forget(&self, primary: &CacheKey) -> Vec<CacheKey> {
        if !self.any.load(Ordering::Relaxed) {
            return Vec::new();
        }
        match self.map.remove(primary) {
            Some((_, ix)) => ix.keys.lock().drain(..).collect(),
            None => Vec::new(),
        }
    }

    fn clear(&self) {
        self.map.clear();
    }
}

enum Role<'a> {
    Leader(FlightGuard<'a>),
    Waiter(watch::Receiver<Flight>),
}

/// Held by the leader of a flight; tells the waiters how it ended, also when dropped early.
struct FlightGuard<'a> {
    cache: &'a Cache,
    key: CacheKey,
    done: bool,
}

impl FlightGuard<'_> {
    fn finish(mut self, outcome: Flight) {
        self.publish(outcome);
        self.done = true;
    }

    fn publish(&self, outcome: Flight) {
        if let Some(tx) = self.cache.inflight.lock().remove(&self.key) {
            tx.send_replace(outcome);
        }
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.publish(Flight::Abandoned);
        }
    }
}
