//! `lookup_or_fetch`: L1 ─► (coalesced) fetch ─► store. The cache never names the upstream: it
//! is handed the fetch as a closure, so real requests and background work share one path.
//!
//! Coalescing is Augur's own in-flight table rather than quick_cache's placeholder guard: when a
//! guard's holder does not insert (the response was uncacheable, or failed), quick_cache hands
//! the guard to the next waiter, one at a time, and a burst of N requests for an uncacheable
//! URL would take N upstream round trips in series. Here a finished flight tells all its waiters
//! at once what happened: a stored entry (served to all), a failure (shared, so a dead upstream
//! is not hit N times), or "pass" (each waiter fetches for itself, concurrently). A waiter stops
//! waiting after `coalesce_timeout` and fetches on its own, so a stuck leader cannot hang the
//! rest. A leader dropped mid-flight (client gone) wakes its waiters, and one of them leads.

pub mod entry;
pub mod memory;
pub mod policy;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Response;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::body::Body;
use crate::error::ProxyError;
use crate::key::CacheKey;
pub use crate::metrics::CacheStatus;
use crate::metrics::Metrics;
use entry::Entry;
use memory::Memory;

/// Wall-clock time in unix milliseconds. Tests drive a manual clock so that expiry is
/// checked without sleeping.
#[derive(Clone, Debug)]
pub enum Clock {
    System,
    Manual(Arc<AtomicU64>),
}

impl Clock {
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Clock::Manual(t) => t.load(Ordering::Relaxed),
        }
    }

    /// A clock that moves only when told, starting at the current time.
    pub fn manual() -> Clock {
        Clock::Manual(Arc::new(AtomicU64::new(Clock::System.now_ms())))
    }

    /// Move a manual clock forward (no effect on the system clock).
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(t) = self {
            t.fetch_add(
                u64::try_from(by.as_millis()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
    }
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
}

/// What a lookup produced.
pub enum Outcome {
    /// Fresh in L1.
    Hit(Arc<Entry>),
    /// Fetched by this caller and stored.
    Miss(Arc<Entry>),
    /// Fetched by a concurrent request this caller waited for.
    Coalesced(Arc<Entry>),
    /// Fetched by this caller, not stored.
    Pass(Response<Body>),
    Failed(ProxyError),
}

#[derive(Clone)]
enum Flight {
    Pending,
    Stored(Arc<Entry>),
    Pass,
    Failed(ProxyError),
    Abandoned,
}

/// How long a key whose response was uncacheable skips coalescing ("hit-for-pass").
const PASS_MARK: Duration = Duration::from_secs(5);

/// Settings for [`Cache`].
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub memory: u64,
    pub max_entry_size: u64,
    pub coalesce_timeout: Duration,
}

/// The cache: L1 plus the in-flight table.
pub struct Cache {
    memory: Memory,
    inflight: Mutex<HashMap<CacheKey, watch::Sender<Flight>>>,
    pass_marks: Mutex<HashMap<CacheKey, u64>>,
    coalesce_timeout: Duration,
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl Cache {
    pub fn new(settings: &CacheSettings, clock: Clock, metrics: Arc<Metrics>) -> Cache {
        metrics.cache_capacity.set(settings.memory as f64);
        Cache {
            memory: Memory::new(
                settings.memory,
                settings.max_entry_size,
                metrics.cache_evictions.clone(),
            ),
            inflight: Mutex::new(HashMap::new()),
            pass_marks: Mutex::new(HashMap::new()),
            coalesce_timeout: settings.coalesce_timeout,
            clock,
            metrics,
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A fresh entry, if L1 has one.
    pub fn lookup(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let entry = self.memory.get(key)?;
        entry.is_fresh(self.clock.now_ms()).then_some(entry)
    }

    /// Is a fresh entry stored for `key`? A peek: it does not count as a use of the entry
    /// (the prefetcher asks this, and must not make unused entries look popular).
    pub fn contains_fresh(&self, key: &CacheKey) -> bool {
        self.memory
            .peek(key)
            .is_some_and(|e| e.is_fresh(self.clock.now_ms()))
    }

    /// Serve `key` from L1, or run `fetch` once for all concurrent callers and store what it
    /// allows. `fetch` may run again for a caller whose leader passed or timed out.
    pub async fn lookup_or_fetch<F, Fut>(&self, key: CacheKey, fetch: F) -> Outcome
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Fetched>,
    {
        if let Some(entry) = self.lookup(&key) {
            return Outcome::Hit(entry);
        }
        if self.pass_marked(&key) {
            return self.fetch_alone(key, &fetch).await;
        }
        // A leader that vanished (cancelled) hands over: retry a bounded number of times.
        for _ in 0..3 {
            match self.join(key) {
                Role::Leader(guard) => {
                    return match fetch().await {
                        Fetched::Stored(entry) => {
                            self.store(key, entry.clone());
                            guard.finish(Flight::Stored(entry.clone()));
                            Outcome::Miss(entry)
                        }
                        Fetched::Pass { response, remember } => {
                            if remember {
                                self.mark_pass(key);
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
                            return self.fetch_alone(key, &fetch).await;
                        }
                    };
                    match flight {
                        Flight::Stored(entry) => {
                            self.metrics.coalesced.increment(1);
                            return Outcome::Coalesced(entry);
                        }
                        Flight::Failed(e) => {
                            self.metrics.coalesced.increment(1);
                            return Outcome::Failed(e);
                        }
                        Flight::Pass => return self.fetch_alone(key, &fetch).await,
                        Flight::Abandoned | Flight::Pending => {
                            if let Some(entry) = self.lookup(&key) {
                                return Outcome::Hit(entry);
                            }
                        }
                    }
                }
            }
        }
        self.fetch_alone(key, &fetch).await
    }

    /// Fetch without joining a flight (after a pass, a timeout, or for a pass-marked key).
    async fn fetch_alone<F, Fut>(&self, key: CacheKey, fetch: &F) -> Outcome
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Fetched>,
    {
        match fetch().await {
            Fetched::Stored(entry) => {
                self.store(key, entry.clone());
                Outcome::Miss(entry)
            }
            Fetched::Pass { response, .. } => Outcome::Pass(response),
            Fetched::Failed(e) => Outcome::Failed(e),
        }
    }

    fn store(&self, key: CacheKey, entry: Arc<Entry>) {
        self.pass_marks.lock().remove(&key);
        self.memory.insert(key, entry);
        self.metrics.cache_stored.increment(1);
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

    /// Drop `key` from L1.
    pub fn remove(&self, key: &CacheKey) -> bool {
        self.memory.remove(key)
    }

    /// Drop everything from L1.
    pub fn clear(&self) {
        self.memory.clear();
    }

    /// Refresh the L1 gauges (called at scrape time).
    pub fn update_gauges(&self) {
        self.metrics.cache_entries.set(self.memory.len() as f64);
        self.metrics.cache_bytes.set(self.memory.weight() as f64);
    }

    pub fn entries(&self) -> usize {
        self.memory.len()
    }

    pub fn bytes(&self) -> u64 {
        self.memory.weight()
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
