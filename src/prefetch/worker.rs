//! The prefetch worker: the background half of [`super::Prefetcher`]. It takes the request
//! path's events off the queue in order, learns each arrival in the model, predicts its likely
//! successors, and issues those worth fetching (not fresh in cache, not hit-for-pass, not
//! already pending) within the budgets and the concurrency limit. Each prefetch runs as its own
//! task through [`Cache::lookup_or_fetch`] and is then pending until a real request uses it or
//! the periodic sweep finds it wasted.
//!
//! Kept apart from the handle in `mod.rs` because nothing here runs on the request path: the
//! handle only queues, this side may take locks, spawn and fetch.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

use super::markov::Prediction;
use super::{state_file, Event, Observation, Pending, Prefetcher, Shared, Source};
use crate::cache::{Cache, Outcome, Served};
use crate::key::CacheKey;

/// Pending prefetches kept at most (beyond, new prefetches are not issued).
const MAX_PENDING: usize = 65_536;

/// Per-client token buckets kept at most: beyond, full buckets (the same as none) are
/// forgotten, then all of them.
const MAX_CLIENT_BUCKETS: usize = 65_536;

pub(super) struct Worker<S> {
    source: Arc<S>,
    shared: Arc<Shared>,
    semaphore: Arc<Semaphore>,
    top_k: usize,
    threshold: f32,
    budget: f32,
    burst: f32,
    tokens: f32,
    client_budget: f32,
    client_burst: f32,
    /// Each client's tokens (its bucket, beside the global one).
    clients: HashMap<u64, f32>,
    use_window_ms: u64,
    next_sweep_ms: u64,
}

impl<S: Source> Worker<S> {
    /// The worker for `prefetcher`'s settings, both buckets full.
    pub(super) fn new(source: Arc<S>, prefetcher: &Prefetcher) -> Worker<S> {
        let p = prefetcher;
        Worker {
            source,
            shared: p.shared.clone(),
            semaphore: p.semaphore.clone(),
            top_k: p.top_k,
            threshold: p.threshold,
            budget: p.budget,
            burst: (p.budget * 20.0).max(1.0),
            tokens: (p.budget * 20.0).max(1.0),
            client_budget: p.client_budget,
            client_burst: (p.client_budget * 4.0).max(1.0),
            clients: HashMap::new(),
            use_window_ms: p.use_window_ms,
            next_sweep_ms: 0,
        }
    }

    /// Handle events until stopped; with `save`, write the state file every interval (in the
    /// background: a large model must not hold up the queue).
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Event>,
        stop: Arc<Notify>,
        save: Option<(std::path::PathBuf, Duration)>,
    ) {
        let period = save.as_ref().map_or(Duration::from_secs(3600), |s| s.1);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut saving: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            tokio::select! {
                event = rx.recv() => match event {
                    Some(event) => {
                        self.shared.queued.fetch_sub(event.bytes(), Ordering::Relaxed);
                        match event {
                            Event::Arrived(obs) => self.arrived(obs),
                            Event::Served(key, served) => self.served(key, served),
                        }
                    }
                    None => break,
                },
                _ = tick.tick(), if save.is_some() => {
                    if saving.as_ref().is_none_or(|h| h.is_finished()) {
                        saving = save.as_ref().map(|(path, _)| self.save_in_background(path));
                    }
                }
                () = stop.notified() => break,
            }
        }
        // The final save (after this returns) must not be overtaken by an older one.
        if let Some(h) = saving {
            let _ = h.await;
        }
        let now = self.source.cache().now_ms();
        let mut model = self.shared.model.lock();
        while let Ok(event) = rx.try_recv() {
            self.shared
                .queued
                .fetch_sub(event.bytes(), Ordering::Relaxed);
            if let Event::Arrived(obs) = event {
                model.observe(obs.client, &obs.host, &obs.pq, now);
            }
        }
    }

    fn save_in_background(&self, path: &std::path::Path) -> tokio::task::JoinHandle<()> {
        let (shared, path) = (self.shared.clone(), path.to_owned());
        tokio::task::spawn_blocking(move || {
            let saved = shared
                .json()
                .and_then(|json| state_file::write(&path, json.as_bytes()));
            if let Err(e) = saved {
                shared.metrics.save_errors.increment(1);
                tracing::warn!(path = %path.display(), error = %e, "prefetch model not saved");
            }
        })
    }

    /// Did this request use a prefetch?
    fn served(&mut self, key: CacheKey, served: Served) {
        let now = self.source.cache().now_ms();
        let pending = self.shared.pending.lock().remove(&key);
        if let Some(p) = pending {
            match served {
                Served::Hit | Served::Coalesced => {
                    if served == Served::Hit {
                        self.shared.metrics.hits.increment(1);
                    }
                    self.shared.resolve(&p, true, now);
                }
                // Fetched again: the prefetched entry was evicted or expired first. (Still in
                // flight means the client raced it to the flight: no verdict.)
                Served::Fetched if p.stored => self.waste(&p, now),
                Served::Fetched => {}
            }
        }
    }

    fn arrived(&mut self, obs: Observation) {
        let now = self.source.cache().now_ms();
        self.tokens = (self.tokens + self.budget * self.shared.budget_scale()).min(self.burst);
        self.refill_client(obs.client);
        if now >= self.next_sweep_ms {
            self.sweep(now);
            self.next_sweep_ms = now + 1000;
        }

        let predictions = {
            let mut model = self.shared.model.lock();
            model.observe_predict(
                obs.client,
                &obs.host,
                &obs.pq,
                now,
                self.top_k,
                self.threshold,
            )
        };
        for pred in predictions {
            self.consider(&obs, pred, now);
        }
    }

    /// One prediction: prefetched if its route allows it, it is worth fetching and the budgets
    /// and the concurrency limit allow it (checked in that order: only the last steps count as
    /// drops in the metrics).
    fn consider(&mut self, obs: &Observation, pred: Prediction, now: u64) {
        let Some((route, headers, key)) = self.target(obs, &pred.pq) else {
            return;
        };
        if !self.worth_fetching(&key, &headers) {
            return;
        }
        let Some(permit) = self.take_budget(obs.client) else {
            return;
        };
        // The transitions' keys as strings only now that the prefetch is issued.
        let credits = self.shared.model.lock().credit_keys(&pred);
        self.shared.pending.lock().insert(
            key,
            Pending {
                credits,
                stored: false,
                deadline_ms: now + self.use_window_ms,
            },
        );
        let job = Job {
            route,
            host: obs.host.clone(),
            pq: pred.pq,
            headers,
            key,
        };
        let (source, shared) = (self.source.clone(), self.shared.clone());
        let window = self.use_window_ms;
        tokio::spawn(async move {
            let _permit = permit;
            prefetch(source, shared, job, window).await;
        });
    }

    /// The route (when it has `prefetch = true`), the headers a prefetch of `pq` sends (the
    /// route's `prefetch_forward_headers` of the observed request) and its cache key.
    fn target(&self, obs: &Observation, pq: &str) -> Option<(usize, HeaderMap, CacheKey)> {
        let path = pq.split('?').next().unwrap_or("/");
        let route = self.source.routes().find(&obs.host, path, &Method::GET)?;
        if !route.cfg.prefetch {
            return None;
        }
        let mut headers = HeaderMap::new();
        for name in &route.cfg.prefetch_forward_headers {
            for v in obs.headers.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        let key = route.key(&Method::GET, &obs.host, pq, &headers);
        Some((route.idx, headers, key))
    }

    /// Not fresh in cache, not hit-for-pass, and not already pending (with room to pend).
    fn worth_fetching(&self, key: &CacheKey, headers: &HeaderMap) -> bool {
        let cache = self.source.cache();
        if cache.contains_fresh(key) {
            return false;
        }
        // Its last answer was uncacheable: a prefetch would store nothing.
        if cache.is_pass_marked(&cache.variant_key(key, headers)) {
            self.shared.metrics.skipped_pass.increment(1);
            return false;
        }
        let pending = self.shared.pending.lock();
        !(pending.contains_key(key) || pending.len() >= MAX_PENDING)
    }

    /// A token from `client`'s bucket and from the global one, and a concurrency permit; none
    /// is taken unless all three are available.
    fn take_budget(&mut self, client: u64) -> Option<OwnedSemaphorePermit> {
        let client_tokens = self.clients.get(&client).copied().unwrap_or(0.0);
        if client_tokens < 1.0 {
            self.shared.metrics.dropped_client_budget.increment(1);
            return None;
        }
        if self.tokens < 1.0 {
            self.shared.metrics.dropped_budget.increment(1);
            return None;
        }
        let Ok(permit) = self.semaphore.clone().try_acquire_owned() else {
            self.shared.metrics.dropped_concurrency.increment(1);
            return None;
        };
        self.tokens -= 1.0;
        if let Some(t) = self.clients.get_mut(&client) {
            *t -= 1.0;
        }
        Some(permit)
    }

    /// A request of `client` earns it `client_budget` tokens (a new client starts with a full
    /// bucket, so its first request can be prefetched for).
    fn refill_client(&mut self, client: u64) {
        let burst = self.client_burst;
        if self.clients.len() >= MAX_CLIENT_BUCKETS && !self.clients.contains_key(&client) {
            self.clients.retain(|_, t| *t < burst);
            if self.clients.len() >= MAX_CLIENT_BUCKETS {
                self.clients.clear();
            }
        }
        let t = self.clients.entry(client).or_insert(burst);
        *t = (*t + self.client_budget).min(burst);
    }

    /// Resolve stored prefetches that are past their window, or gone from the cache.
    fn sweep(&mut self, now: u64) {
        let cache = self.source.cache();
        let mut wasted = Vec::new();
        self.shared.pending.lock().retain(|key, p| {
            if !p.stored {
                // In flight far too long (a stuck upstream): forget it.
                return now < p.deadline_ms.saturating_add(60_000);
            }
            let gone = p.deadline_ms <= now || !cache.contains_fresh(key);
            if gone {
                wasted.push(Pending {
                    credits: std::mem::take(&mut p.credits),
                    ..*p
                });
            }
            !gone
        });
        for p in &wasted {
            self.waste(p, now);
        }
    }

    /// A stored prefetch nobody used. Before its deadline (which is never past the entry's
    /// freshness) it cannot have expired: it was evicted or purged.
    fn waste(&mut self, p: &Pending, now: u64) {
        if now < p.deadline_ms {
            self.shared.metrics.wasted_evicted.increment(1);
        }
        self.shared.resolve(p, false, now);
    }
}

/// One prefetch the worker issued: GET `pq` on route `route` with exactly `headers`.
struct Job {
    route: usize,
    host: String,
    pq: String,
    headers: HeaderMap,
    key: CacheKey,
}

/// Run `job` through the cache as a miss would, then settle its pending entry: stored ─► the
/// use window starts (never past the entry's freshness); not stored ─► wasted; someone else's
/// fetch ─► not ours to credit.
async fn prefetch<S: Source>(source: Arc<S>, shared: Arc<Shared>, job: Job, window: u64) {
    let Job {
        route,
        host,
        pq,
        headers,
        key,
    } = job;
    let fetch = || source.prefetch_fetch(route, &host, &pq, &headers, key);
    let outcome = source.cache().lookup_or_fetch(key, &headers, fetch).await;
    settle(&shared, source.cache(), &key, outcome, window);
}

fn settle(shared: &Shared, cache: &Cache, key: &CacheKey, outcome: Outcome, window: u64) {
    if matches!(outcome, Outcome::Pass(_) | Outcome::Failed(_)) {
        shared.not_stored(key, cache.now_ms());
        return;
    }
    let mut pending = shared.pending.lock();
    match outcome {
        // Fetched by this prefetch (a 304 that freshened a stale entry counts too).
        Outcome::Miss(entry) | Outcome::Revalidated(entry) => {
            shared.metrics.issued.increment(1);
            if let Some(p) = pending.get_mut(key) {
                let expires =
                    (entry.response_time + entry.lifetime).saturating_sub(entry.initial_age);
                p.stored = true;
                p.deadline_ms = (cache.now_ms() + window).min(expires);
            }
        }
        // Someone else's fetch: not ours to credit.
        Outcome::Hit(_) | Outcome::HitL2(_) | Outcome::Stale { .. } | Outcome::Coalesced { .. } => {
            pending.remove(key);
        }
        // Handled above.
        Outcome::Pass(_) | Outcome::Failed(_) => {}
    }
}
