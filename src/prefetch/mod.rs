//! Prefetch: when a client GET arrives, before the cache is asked, `Proxy::through_cache` hands
//! an [`Observation`] to [`Prefetcher::observe`]; once the cache has answered it reports how
//! ([`Prefetcher::served`]). Both only `try_send` on one bounded channel (full ─► dropped and
//! counted): nothing here is awaited on the request path. A background worker (`worker.rs`;
//! this file keeps the request-path handle and the state both share) learns from the
//! arrival ([`markov`]), predicts the next requests, and fetches those that are not fresh in
//! cache through [`Cache::lookup_or_fetch`] with the proxy's own fetch ([`Source`]), so a client
//! that asks while a prefetch is in flight waits for it instead of fetching twice.
//!
//! Why at arrival and not after the response: the next request of a client often follows the
//! response within a few milliseconds (a page and then its images). Predicted at arrival, the
//! prefetch of the successor runs alongside the current request's own miss (or starts at once on
//! a hit) instead of starting when the client is already asking for it.
//!
//! How the upstream is protected:
//! * only GET, only routes with `prefetch = true` (observed and prefetched), and a synthetic
//!   header set: a prefetch carries no client header except the route's
//!   `prefetch_forward_headers` (never credentials unless the route says `unsafe_…`); the
//!   stored entry goes through the same `policy` as any miss;
//! * token buckets: at most `budget` prefetches per observed request overall, and at most
//!   `client_budget` per request of the same client (each plus a small burst), so one client
//!   cannot spend what the others' requests earned;
//! * a semaphore: at most `max_concurrency` prefetches in flight (none queue behind it);
//! * per-transition precision: every prefetch is pending until a real request uses it (HIT,
//!   or waited for it while in flight) or it is wasted (unused within `use_window`, expired,
//!   evicted, or never stored because its answer was uncacheable or failed); the outcome is
//!   credited to the transition that predicted it, and transitions below `precision_floor`
//!   stop being predicted (see [`markov`]);
//! * a key the cache marked hit-for-pass (its last answer was uncacheable) is not prefetched.
//!
//! How the prefetcher's own memory is bounded: URLs longer than `max_url_bytes` are not
//! observed, the queue is bounded in observations (`queue`) and in bytes (`queue_bytes`), and
//! the model in bytes (`max_model_bytes`, see [`markov`]).
//!
//! Eviction: prefetched entries are inserted like any miss and never read by the prefetcher
//! (it checks with `Cache::contains_fresh`, a peek that does not count as an access), so in
//! quick_cache's CLOCK-Pro they sit in the probationary (cold) queue with no reference bit and
//! are the first candidates for eviction until a real request touches them.

pub mod markov;
mod metrics;
mod state_file;
mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderMap, HeaderName, HeaderValue};
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify, Semaphore};

use self::metrics::PrefetchMetrics;
use self::worker::Worker;
use crate::cache::Served;
use crate::cache::{Cache, Fetched};
use crate::config::Config;
use crate::key::CacheKey;
use crate::metrics::Metrics;
use crate::route::Routes;
use markov::{Markov, ModelSettings};

/// What the proxy offers the prefetcher: the cache, the routes, and the miss fetch without a
/// client request.
pub trait Source: Send + Sync + 'static {
    fn cache(&self) -> &Cache;
    fn routes(&self) -> &Routes;
    /// GET `pq` on route `route` with exactly `headers` (already filtered), as a miss would.
    /// `key`: what the route derived for it (`Route::key`), which the prefetcher already holds.
    fn prefetch_fetch(
        &self,
        route: usize,
        host: &str,
        pq: &str,
        headers: &HeaderMap,
        key: CacheKey,
    ) -> impl Future<Output = Fetched> + Send;
}

/// One arriving client GET.
#[derive(Debug)]
pub struct Observation {
    client: u64,
    host: String,
    pq: String,
    /// Only the headers some route allows a prefetch to forward.
    headers: HeaderMap,
    /// What it holds, counted against `queue_bytes` while queued.
    bytes: usize,
}

/// What the request path tells the worker, in order.
#[derive(Debug)]
enum Event {
    /// A client GET arrived: learn the transition, predict, prefetch.
    Arrived(Observation),
    /// The cache answered it: a prefetch it used (or fetched again) is credited.
    Served(CacheKey, Served),
}

impl Event {
    /// Bytes counted against `queue_bytes` while queued.
    fn bytes(&self) -> usize {
        std::mem::size_of::<Event>()
            + match self {
                Event::Arrived(obs) => obs.bytes,
                Event::Served(..) => 0,
            }
    }
}

struct Pending {
    /// The transitions that predicted it.
    credits: Vec<(String, String)>,
    /// Stored by the prefetch (false while in flight).
    stored: bool,
    /// Counts as wasted if unused by then.
    deadline_ms: u64,
}

struct Shared {
    model: Mutex<Markov>,
    pending: Mutex<HashMap<CacheKey, Pending>>,
    metrics: PrefetchMetrics,
    used: AtomicU64,
    wasted: AtomicU64,
    /// Recent precision (moving average over prefetch outcomes), starting optimistic.
    recent: Mutex<f32>,
    floor: f32,
    /// Bytes of the events in the queue.
    queued: AtomicUsize,
}

impl Shared {
    fn resolve(&self, p: &Pending, used: bool, now_ms: u64) {
        let mut model = self.model.lock();
        for (from, to) in &p.credits {
            model.record_outcome(from, to, used, now_ms);
        }
        drop(model);
        let (u, w) = if used {
            self.metrics.used.increment(1);
            (
                self.used.fetch_add(1, Ordering::Relaxed) + 1,
                self.wasted.load(Ordering::Relaxed),
            )
        } else {
            self.metrics.wasted.increment(1);
            (
                self.used.load(Ordering::Relaxed),
                self.wasted.fetch_add(1, Ordering::Relaxed) + 1,
            )
        };
        self.metrics.precision.set(u as f64 / (u + w).max(1) as f64);
        self.note(used);
    }

    /// Budget control beyond single transitions: while the recent precision of all prefetches
    /// is under the floor, the budget shrinks in proportion (down to a tenth), so a workload
    /// the model cannot predict (many one-off transitions, each wasted once) costs the upstream
    /// little; it recovers as soon as prefetches are used again.
    fn budget_scale(&self) -> f32 {
        if self.floor <= 0.0 {
            return 1.0;
        }
        (*self.recent.lock() / self.floor).clamp(0.1, 1.0)
    }

    fn note(&self, used: bool) {
        const ALPHA: f32 = 0.05;
        {
            let mut recent = self.recent.lock();
            *recent += ALPHA * (f32::from(u8::from(used)) - *recent);
        }
        self.metrics
            .budget_scale
            .set(f64::from(self.budget_scale()));
    }

    /// The model as the state file's JSON.
    fn json(&self) -> std::io::Result<String> {
        self.model.lock().to_json().map_err(std::io::Error::other)
    }

    /// A prefetch that stored nothing (its answer was uncacheable, or it failed): wasted, and
    /// debited to the transitions that predicted it, so one that keeps predicting an
    /// uncacheable or failing URL is switched off after `min_samples`.
    fn not_stored(&self, key: &CacheKey, now_ms: u64) {
        self.metrics.failed.increment(1);
        // Resolved under the pending lock: the worker, which checks `pending` after predicting,
        // cannot issue the same prefetch again before the transition is debited.
        let mut pending = self.pending.lock();
        if let Some(p) = pending.remove(key) {
            self.resolve(&p, false, now_ms);
        }
    }
}

/// The prefetcher: the request-path handle and the worker's state.
pub struct Prefetcher {
    tx: mpsc::Sender<Event>,
    rx: Mutex<Option<mpsc::Receiver<Event>>>,
    shared: Arc<Shared>,
    client_header: Option<HeaderName>,
    client_cookie: Option<String>,
    /// Union of every route's `prefetch_forward_headers`.
    forwardable: Vec<HeaderName>,
    /// Some route has `prefetch = true`.
    enabled: bool,
    top_k: usize,
    threshold: f32,
    budget: f32,
    client_budget: f32,
    max_concurrency: usize,
    semaphore: Arc<Semaphore>,
    stop: Arc<Notify>,
    use_window_ms: u64,
    state_file: Option<std::path::PathBuf>,
    save_interval: Duration,
    max_url_bytes: usize,
    queue_bytes: usize,
}

impl Prefetcher {
    /// Built from the config; loads the saved model when `state_file` exists.
    pub fn new(config: &Config, metrics: &Metrics) -> Prefetcher {
        let p = &config.prefetch;
        let mut model = Markov::new(ModelSettings {
            max_states: p.max_states,
            top_successors: p.top_successors,
            max_clients: p.max_states,
            idle_gap_ms: ms(p.idle_gap),
            half_life_ms: ms(p.half_life),
            precision_floor: p.precision_floor,
            min_samples: p.min_samples as f32,
            max_bytes: usize::try_from(p.max_model_bytes).unwrap_or(usize::MAX),
        });
        if let Some(path) = &p.state_file {
            state_file::load(path, &mut model);
        }
        let (tx, rx) = mpsc::channel(p.queue);
        let mut forwardable: Vec<HeaderName> = Vec::new();
        for r in &config.routes {
            for h in &r.prefetch_forward_headers {
                if !forwardable.contains(h) {
                    forwardable.push(h.clone());
                }
            }
        }
        Prefetcher {
            tx,
            rx: Mutex::new(Some(rx)),
            shared: Arc::new(Shared {
                model: Mutex::new(model),
                pending: Mutex::new(HashMap::new()),
                metrics: PrefetchMetrics::new(metrics),
                used: AtomicU64::new(0),
                wasted: AtomicU64::new(0),
                recent: Mutex::new(1.0),
                floor: p.precision_floor,
                queued: AtomicUsize::new(0),
            }),
            client_header: p.client_header.clone(),
            client_cookie: p.client_cookie.clone(),
            forwardable,
            enabled: config.routes.iter().any(|r| r.prefetch),
            top_k: p.top_k,
            threshold: p.threshold,
            budget: p.budget,
            client_budget: p.client_budget,
            max_concurrency: p.max_concurrency,
            semaphore: Arc::new(Semaphore::new(p.max_concurrency)),
            stop: Arc::new(Notify::new()),
            use_window_ms: ms(p.use_window),
            state_file: p.state_file.clone(),
            save_interval: p.save_interval,
            max_url_bytes: usize::try_from(p.max_url_bytes).unwrap_or(usize::MAX),
            queue_bytes: usize::try_from(p.queue_bytes).unwrap_or(usize::MAX),
        }
    }

    /// Whether any route opted in (otherwise nothing is observed).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Request path, as a GET on a `prefetch = true` route arrives (before the cache is
    /// asked): queue it for the worker, which learns from it and prefetches its likely
    /// successors. Never waits. A URL longer than `max_url_bytes` is not observed: its keys
    /// would cost the model memory in proportion, and such URLs are rarely worth predicting.
    pub fn observe(&self, headers: &HeaderMap, peer: SocketAddr, host: &str, pq: &str) {
        if !self.enabled {
            return;
        }
        if host.len() + pq.len() > self.max_url_bytes {
            self.shared.metrics.skipped_long_url.increment(1);
            return;
        }
        let mut forward = HeaderMap::new();
        // Per header: its name and value, and about a map slot.
        let mut bytes = host.len() + pq.len();
        for name in &self.forwardable {
            for v in headers.get_all(name) {
                bytes += name.as_str().len() + v.len() + 64;
                forward.append(name.clone(), v.clone());
            }
        }
        let obs = Observation {
            client: self.client_id(headers, peer),
            host: host.to_owned(),
            pq: pq.to_owned(),
            headers: forward,
            bytes,
        };
        self.send(Event::Arrived(obs));
    }

    /// Request path, once the cache has answered an observed GET: how it was served, so a
    /// prefetch it used is credited. Never waits.
    pub fn served(&self, key: CacheKey, served: Served) {
        if self.enabled {
            self.send(Event::Served(key, served));
        }
    }

    /// Queue `event` unless the queue is full in count or in bytes.
    fn send(&self, event: Event) {
        let bytes = event.bytes();
        let queued = &self.shared.queued;
        if queued.fetch_add(bytes, Ordering::Relaxed) + bytes > self.queue_bytes
            || self.tx.try_send(event).is_err()
        {
            queued.fetch_sub(bytes, Ordering::Relaxed);
            self.shared.metrics.dropped_queue.increment(1);
        }
    }

    /// The configured header, else the configured cookie (unless empty), else a hash of
    /// `Authorization`, else the peer IP.
    fn client_id(&self, headers: &HeaderMap, peer: SocketAddr) -> u64 {
        let from = |tag: u8, v: &[u8]| {
            let mut h = blake3::Hasher::new();
            h.update(&[tag]);
            h.update(v);
            let b = h.finalize();
            let mut out = [0u8; 8];
            out.copy_from_slice(&b.as_bytes()[..8]);
            u64::from_le_bytes(out)
        };
        if let Some(v) = self.client_header.as_ref().and_then(|n| headers.get(n)) {
            return from(0, v.as_bytes());
        }
        if let Some(v) = self
            .client_cookie
            .as_deref()
            .and_then(|n| cookie(headers, n))
            .filter(|v| !v.is_empty())
        {
            return from(3, v);
        }
        if let Some(v) = headers.get(header::AUTHORIZATION) {
            return from(1, v.as_bytes());
        }
        match peer.ip() {
            std::net::IpAddr::V4(ip) => from(2, &ip.octets()),
            std::net::IpAddr::V6(ip) => from(2, &ip.octets()),
        }
    }

    /// Start the background worker (once; later calls do nothing).
    pub fn spawn_worker<S: Source>(&self, source: Arc<S>) -> Option<tokio::task::JoinHandle<()>> {
        if !self.enabled {
            return None;
        }
        let rx = self.rx.lock().take()?;
        let worker = Worker::new(source, self);
        let save = self
            .state_file
            .clone()
            .filter(|_| !self.save_interval.is_zero())
            .map(|path| (path, self.save_interval));
        Some(tokio::spawn(worker.run(rx, self.stop.clone(), save)))
    }

    /// Ask the worker to stop: it learns from what is still queued (prefetching nothing) and
    /// ends, so that [`Prefetcher::save`] afterwards sees every observed request.
    pub fn stop(&self) {
        self.stop.notify_one();
    }

    /// Save the model to `state_file` (privately and atomically, see [`state_file`]).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let json = self.shared.json()?;
        state_file::write(path, json.as_bytes())
    }

    /// JSON for `GET /prefetch/transitions?limit=N`.
    pub fn transitions_json(&self, limit: usize) -> String {
        let model = self.shared.model.lock();
        let stats = model.stats();
        serde_json::json!({
            "states": stats.states,
            "transitions": stats.transitions,
            "clients": stats.clients,
            "approx_bytes": stats.approx_bytes,
            "dropped_states": stats.dropped_states,
            "strongest": model.strongest(limit),
        })
        .to_string()
    }

    /// Refresh the model-size gauges (called at scrape time).
    pub fn update_gauges(&self) {
        let s = self.shared.model.lock().stats();
        let mm = &self.shared.metrics;
        mm.states.set(s.states as f64);
        let free = self.semaphore.available_permits();
        mm.in_flight
            .set(self.max_concurrency.saturating_sub(free) as f64);
        mm.transitions.set(s.transitions as f64);
        mm.model_bytes.set(s.approx_bytes as f64);
        mm.dropped_states.set(s.dropped_states as f64);
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The value of cookie `name` in the request's `Cookie` header lines (RFC 6265 §4.2: pairs
/// separated by `;`), the first one if it is sent twice.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

/// Headers a prefetch sends besides the forwarded ones: marks it as a prefetch for the upstream.
pub fn mark_prefetch(headers: &mut HeaderMap) {
    headers.insert(
        HeaderName::from_static("x-augur-prefetch"),
        HeaderValue::from_static("1"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(header::COOKIE, HeaderValue::from_str(l).unwrap());
        }
        h
    }

    #[test]
    fn cookie_finds_the_named_pair_only() {
        let h = headers(&["xsession=1; session = s1 ;theme=dark", "session=s2"]);
        assert_eq!(cookie(&h, "session"), Some(&b"s1"[..]));
        assert_eq!(cookie(&h, "theme"), Some(&b"dark"[..]));
        assert_eq!(cookie(&h, "xsession"), Some(&b"1"[..]));
        assert_eq!(cookie(&h, "sess"), None);
        assert_eq!(cookie(&headers(&["flag; other=1"]), "flag"), None);
        assert_eq!(cookie(&headers(&["a=1", "b="]), "b"), Some(&b""[..]));
        assert_eq!(cookie(&HeaderMap::new(), "session"), None);
    }

    #[test]
    fn the_queue_is_bounded_in_bytes() {
        let text = "[prefetch]\nqueue = 100000\nqueue_bytes = \"64KiB\"\n\n[[route]]\n\
                    name = \"api\"\nupstream = \"http://127.0.0.1:9\"\nprefetch = true\n";
        let config = Config::from_str(text, "test.toml").unwrap();
        let p = Prefetcher::new(&config, &Metrics::new(&["api"]));
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        // No worker: everything sent stays queued. 2000-byte URLs, under max_url_bytes.
        let pad = "z".repeat(2000);
        for i in 0..1000 {
            p.observe(&HeaderMap::new(), peer, "h", &format!("/{i}/{pad}"));
        }
        let queued = p.shared.queued.load(Ordering::Relaxed);
        assert!(queued <= 64 << 10, "{queued} bytes queued");
        assert!(
            p.tx.capacity() > 100_000 - 40,
            "at most ~32 observations queued"
        );
    }

    #[test]
    fn client_id_uses_the_named_cookie_unless_it_is_empty() {
        let text = "[prefetch]\nclient_cookie = \"session\"\n\n[[route]]\nname = \"api\"\n\
                    upstream = \"http://127.0.0.1:9\"\nprefetch = true\n";
        let config = Config::from_str(text, "test.toml").unwrap();
        let p = Prefetcher::new(&config, &Metrics::new(&["api"]));
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let other_peer: SocketAddr = "127.0.0.2:5000".parse().unwrap();
        let id = |lines: &[&str], peer| p.client_id(&headers(lines), peer);
        assert_eq!(
            id(&["theme=1; session=s1"], peer),
            id(&["session=s1;theme=2"], other_peer)
        );
        assert_ne!(id(&["session=s1"], peer), id(&["session=s2"], peer));
        assert_eq!(id(&["session="], peer), id(&[], peer));
        assert_ne!(id(&["session="], peer), id(&["session="], other_peer));
    }
}
