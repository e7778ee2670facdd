//! The request path, top to bottom: route ─► key ─► cache (L1 ─► coalesced upstream fetch ─►
//! policy ─► store) ─► respond. One readable function per step; everything that can fail
//! becomes a response through `error`, never a panic.
//!
//! The miss side (`fetch_for_store`) also revalidates: when L1 holds a stale entry with
//! validators it asks conditionally, and turns a 304 into a freshened entry, or an upstream
//! failure into the stale entry when `stale-if-error` / grace allow. A `stale-while-revalidate`
//! hit is answered at once and queued for one background refresh through the same coalesced
//! path (`refresh`). Unsafe methods invalidate what they changed (`invalidated_by`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::Limited;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::body::{Body, Prefixed};
use crate::cache::entry::{owned_headers, Compression, Entry, StoredBody};
use crate::cache::policy::{self, Decision, Stored, Use};
use crate::cache::{Cache, CacheSettings, CacheStatus, Fetched, Outcome, Want};
use crate::clock::Clock;
use crate::config::Config;
use crate::error::ProxyError;
use crate::key::CacheKey;
use crate::metrics::Metrics;
use crate::prefetch::{self, Prefetcher, Served};
use crate::range::{self, ByteRange};
use crate::route::{Route, Routes};
use crate::upstream::{self, buffer_body, Buffered, Upstream, UpstreamBody};

/// Bodies at least this large are compressed off the async workers.
const BLOCKING_COMPRESS: usize = 256 * 1024;

/// Background refreshes waiting to start; more are dropped (the next stale hit asks again).
const REFRESH_QUEUE: usize = 1024;

/// Headers a fetch removed from the stored copy (`private="…"`, `Set-Cookie`) that still belong
/// in the response to the request that made the fetch.
type LeaderOnly = Mutex<Option<HeaderMap>>;

/// A `stale-while-revalidate` refresh to run in the background (owned: it outlives the request).
struct Refresh {
    key: CacheKey,
    /// The variant being refreshed (`key` itself unless responses vary).
    at: CacheKey,
    route: usize,
    uri: Uri,
    headers: HeaderMap,
    peer: SocketAddr,
    host: String,
}

static X_CACHE: http::HeaderName = http::HeaderName::from_static("x-cache");
/// `L2` on a hit served from Redis (`x-cache` stays `HIT`).
static X_CACHE_TIER: http::HeaderName = http::HeaderName::from_static("x-cache-tier");

/// Everything the request path needs, built once from the config.
pub struct Proxy {
    routes: Routes,
    upstreams: Vec<Upstream>,
    cache: Cache,
    metrics: Arc<Metrics>,
    prefetcher: Prefetcher,
    compression: Compression,
    max_entry_size: u64,
    max_request_body: u64,
    default_ttl_ms: u64,
    heuristic_max_ms: u64,
    /// Augur's own targeted field (when configured), then `CDN-Cache-Control`.
    targeted: Vec<HeaderName>,
    refresh_tx: mpsc::Sender<Refresh>,
    refresh_rx: Mutex<Option<mpsc::Receiver<Refresh>>>,
    /// Keys with a refresh queued or running, so a burst of stale hits refreshes once.
    refreshing: Mutex<HashSet<CacheKey>>,
}

impl Proxy {
    pub fn new(config: &Config, clock: Clock, metrics: Arc<Metrics>) -> Result<Proxy, String> {
        let routes = Routes::new(&config.routes).map_err(|e| e.to_string())?;
        let upstreams = config
            .routes
            .iter()
            .map(|r| Upstream::new(r, config.upstream.idle_timeout))
            .collect::<Result<Vec<_>, _>>()?;
        let settings = CacheSettings {
            memory: config.cache.memory,
            max_entry_size: config.cache.max_entry_size,
            coalesce_timeout: config.cache.coalesce_timeout,
            max_variants: config.cache.max_variants,
            redis: config.redis.clone(),
        };
        let targeted = config
            .cache
            .targeted_field
            .iter()
            .cloned()
            .chain([policy::CDN_CACHE_CONTROL.clone()])
            .collect();
        let (refresh_tx, refresh_rx) = mpsc::channel(REFRESH_QUEUE);
        Ok(Proxy {
            routes,
            upstreams,
            cache: Cache::new(&settings, clock, metrics.clone()),
            prefetcher: Prefetcher::new(config, &metrics),
            metrics,
            compression: Compression {
                level: config.cache.compression_level,
                threshold: config.cache.compression_threshold,
            },
            max_entry_size: config.cache.max_entry_size,
            max_request_body: config.server.max_request_body,
            default_ttl_ms: config.cache.default_ttl.as_millis() as u64,
            heuristic_max_ms: config.cache.max_heuristic_ttl.as_millis() as u64,
            targeted,
            refresh_tx,
            refresh_rx: Mutex::new(Some(refresh_rx)),
            refreshing: Mutex::new(HashSet::new()),
        })
    }

    /// Start the background refresher (`stale-while-revalidate`); the server calls this once.
    /// Without it (benches driving `handle` directly) stale entries are still served within
    /// their window, and refreshed by the first request after it.
    pub fn spawn_refresher(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let mut rx = self.refresh_rx.lock().take()?;
        let proxy = self.clone();
        Some(tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let proxy = proxy.clone();
                tokio::spawn(async move { proxy.refresh(job).await });
            }
        }))
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    pub fn prefetcher(&self) -> &Prefetcher {
        &self.prefetcher
    }

    /// Answer one client request. Generic over the request body so that benches and tests can
    /// drive the request path in-process; the server passes hyper's `Incoming`.
    pub async fn handle<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<crate::body::BoxError>,
    {
        let start = Instant::now();
        let (parts, body) = req.into_parts();
        let Some(host) = request_host(&parts) else {
            return ProxyError::BadRequest("missing or invalid Host header").to_response();
        };
        let Some(route) = self.routes.find(host, parts.uri.path(), &parts.method) else {
            self.metrics.no_route.increment(1);
            let what = format!("{} {}{}", parts.method, host, parts.uri.path());
            return ProxyError::NoRoute(what).to_response();
        };
        if content_length(&parts.headers).is_some_and(|n| n > self.max_request_body) {
            let resp = self.too_large();
            return self.finish(
                route,
                &parts.method,
                &parts.uri,
                start,
                CacheStatus::Bypass,
                resp,
            );
        }

        if is_cacheable_request(&parts) {
            let (verdict, resp) = self.through_cache(route, &parts, peer, host).await;
            self.finish(route, &parts.method, &parts.uri, start, verdict, resp)
        } else {
            let (method, uri) = (parts.method.clone(), parts.uri.clone());
            let host = host.to_owned();
            let unsafe_headers = (!method.is_safe()).then(|| parts.headers.clone());
            let resp = self.pass(route, parts, body, peer, &host).await;
            if let Some(headers) = unsafe_headers {
                for key in self.invalidated_by(&uri, &headers, &host, &resp) {
                    self.cache.invalidate(&key).await;
                }
            }
            self.finish(route, &method, &uri, start, CacheStatus::Bypass, resp)
        }
    }

    fn finish(
        &self,
        route: &Route,
        method: &Method,
        uri: &http::Uri,
        start: Instant,
        verdict: CacheStatus,
        mut resp: Response<Body>,
    ) -> Response<Body> {
        resp.headers_mut()
            .insert(X_CACHE.clone(), HeaderValue::from_static(verdict.as_str()));
        let elapsed = start.elapsed();
        if let Some(m) = self.metrics.route(route.idx) {
            m.record(verdict, resp.status().as_u16(), elapsed);
        }
        tracing::debug!(
            method = %method,
            uri = %uri,
            route = %route.cfg.name,
            status = resp.status().as_u16(),
            cache = verdict.as_str(),
            micros = elapsed.as_micros() as u64,
            "request"
        );
        resp
    }

    fn too_large(&self) -> Response<Body> {
        ProxyError::BodyTooLarge {
            limit: self.max_request_body,
        }
        .to_response()
    }

    /// GET/HEAD: L1, or one coalesced fetch that stores what policy allows.
    async fn through_cache(
        &self,
        route: &Route,
        parts: &Parts,
        peer: SocketAddr,
        host: &str,
    ) -> (CacheStatus, Response<Body>) {
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let cfg = &route.cfg;
        let key = CacheKey::derive(
            &parts.method,
            host,
            pq,
            &cfg.query,
            &cfg.key_headers,
            &parts.headers,
        );
        let want = Want {
            directives: policy::request_directives(&parts.headers),
            authorization: parts.headers.contains_key(header::AUTHORIZATION),
            allow_stale: true,
        };
        if want.directives.only_if_cached {
            return self.only_if_cached(self.cache.variant_key(&key, &parts.headers), &want, parts);
        }
        if parts.method == Method::GET {
            self.prefetcher.observe(&parts.headers, peer, host, pq);
        }
        let leader_only = LeaderOnly::default();
        let fetch = || {
            let target = Target {
                uri: &parts.uri,
                headers: &parts.headers,
                peer,
                host,
                prefetch: false,
            };
            self.fetch_for_store(route, target, key, Some(&leader_only))
        };
        // `at`: where the answering entry is stored (the variant, when responses vary).
        let (outcome, at) = self
            .cache
            .lookup_or_fetch_for(key, &parts.headers, &want, fetch)
            .await;
        let (served, out) = match outcome {
            Outcome::Hit(e) => (Served::Hit, (CacheStatus::Hit, self.respond(&e, parts, at))),
            Outcome::HitL2(e) => {
                let mut resp = self.respond(&e, parts, at);
                resp.headers_mut()
                    .insert(X_CACHE_TIER.clone(), HeaderValue::from_static("L2"));
                (Served::Hit, (CacheStatus::Hit, resp))
            }
            Outcome::Miss(e) => {
                let mut resp = self.respond(&e, parts, at);
                if let Some(extra) = leader_only.lock().take() {
                    for (name, value) in &extra {
                        resp.headers_mut().append(name.clone(), value.clone());
                    }
                }
                (Served::Fetched, (CacheStatus::Miss, resp))
            }
            Outcome::Coalesced { entry, revalidated } => {
                let status = if revalidated {
                    CacheStatus::Revalidated
                } else {
                    CacheStatus::Miss
                };
                (Served::Coalesced, (status, self.respond(&entry, parts, at)))
            }
            Outcome::Revalidated(e) => (
                Served::Fetched,
                (CacheStatus::Revalidated, self.respond(&e, parts, at)),
            ),
            Outcome::Stale { entry, refresh } => {
                if refresh {
                    self.queue_refresh(route, parts, peer, host, key, at);
                }
                (
                    Served::Hit,
                    (CacheStatus::Stale, self.respond(&entry, parts, at)),
                )
            }
            Outcome::Pass(resp) => (Served::Fetched, (CacheStatus::Miss, resp)),
            Outcome::Failed(e) => (Served::Fetched, (CacheStatus::Miss, e.to_response())),
        };
        if parts.method == Method::GET {
            self.prefetcher.served(key, served);
        }
        out
    }

    /// `only-if-cached` (RFC 9111 §5.2.1.7): a stored response that satisfies the request, or
    /// 504; never the upstream.
    fn only_if_cached(
        &self,
        key: CacheKey,
        want: &Want,
        parts: &Parts,
    ) -> (CacheStatus, Response<Body>) {
        let now = self.cache.now_ms();
        match self.cache.peek(&key) {
            Some(e) => match policy::usable(&e, &want.directives, want.authorization, now) {
                Use::Fresh => (CacheStatus::Hit, self.respond(&e, parts, key)),
                Use::Stale => (CacheStatus::Stale, self.respond(&e, parts, key)),
                _ => (CacheStatus::Miss, ProxyError::NotCached.to_response()),
            },
            None => (CacheStatus::Miss, ProxyError::NotCached.to_response()),
        }
    }

    /// Queue one background refresh of `key` unless one is already queued or running.
    fn queue_refresh(
        &self,
        route: &Route,
        parts: &Parts,
        peer: SocketAddr,
        host: &str,
        key: CacheKey,
        at: CacheKey,
    ) {
        if !self.refreshing.lock().insert(at) {
            return;
        }
        let job = Refresh {
            key,
            at,
            route: route.idx,
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            peer,
            host: host.to_owned(),
        };
        if self.refresh_tx.try_send(job).is_err() {
            self.refreshing.lock().remove(&at);
        }
    }

    /// The background half of `stale-while-revalidate`: the same coalesced fetch a miss makes,
    /// which revalidates the stale entry (or replaces it).
    async fn refresh(&self, job: Refresh) {
        if let Some(route) = self.routes.iter().find(|r| r.idx == job.route) {
            let want = Want {
                authorization: job.headers.contains_key(header::AUTHORIZATION),
                ..Want::default()
            };
            let fetch = || {
                let target = Target {
                    uri: &job.uri,
                    headers: &job.headers,
                    peer: job.peer,
                    host: &job.host,
                    prefetch: false,
                };
                self.fetch_for_store(route, target, job.key, None)
            };
            let _ = self
                .cache
                .lookup_or_fetch_for(job.key, &job.headers, &want, fetch)
                .await;
        }
        self.refreshing.lock().remove(&job.at);
    }

    /// The miss: fetch the identity representation with the client's headers (conditionally
    /// when a stale stored entry has validators), decide with `policy`, and either build an
    /// entry or hand the response back to stream through.
    async fn fetch_for_store(
        &self,
        route: &Route,
        target: Target<'_>,
        key: CacheKey,
        leader_only: Option<&LeaderOnly>,
    ) -> Fetched {
        let mut headers = if target.prefetch {
            // A prefetch sends exactly the headers the route lets it copy: nothing of the
            // client's identity, marked as a prefetch for the upstream's logs.
            let mut h = target.headers.clone();
            upstream::strip_hop_by_hop(&mut h);
            if let Ok(v) = HeaderValue::from_str(target.host) {
                h.insert("x-forwarded-host", v);
            }
            prefetch::mark_prefetch(&mut h);
            h
        } else {
            upstream::forward_headers(target.headers.clone(), target.peer, target.host)
        };
        // The store holds one identity representation and compresses it itself; a client's
        // validators and ranges concern the client's copy, not the one being stored.
        for name in [
            header::ACCEPT_ENCODING,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_MATCH,
            header::IF_UNMODIFIED_SINCE,
            header::IF_RANGE,
            header::RANGE,
        ] {
            headers.remove(name);
        }
        // What L1 holds for this key may be revalidated, or stand in if the upstream fails;
        // never across the `Authorization` rule.
        let authorization = target.headers.contains_key(header::AUTHORIZATION);
        // The variant this request selects (the key itself unless responses vary).
        let key = self.cache.variant_key(&key, target.headers);
        let previous = self
            .cache
            .peek(&key)
            .filter(|e| !authorization || e.flags.contains(crate::cache::entry::Flags::AUTH_OK));
        let mut conditional = false;
        if let Some(prev) = &previous {
            if let Some(etag) = prev.headers.get(header::ETAG) {
                headers.insert(header::IF_NONE_MATCH, etag.clone());
                conditional = true;
            }
            if let Some(lm) = prev.headers.get(header::LAST_MODIFIED) {
                headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
                conditional = true;
            }
        }
        let stand_in = |now: u64| {
            previous
                .clone()
                .filter(|p| policy::stale_if_error_ok(p, now))
        };
        let pq = target.uri.path_and_query().map_or("/", |p| p.as_str());
        let up = &self.upstreams[route.idx];
        let request_time = self.cache.now_ms();
        let started = Instant::now();
        let resp = match up.send(Method::GET, pq, headers, Body::empty()).await {
            Ok(r) => r,
            Err(e) => {
                self.upstream_failed(route, &e);
                if let Some(stale) = stand_in(self.cache.now_ms()) {
                    return Fetched::Stale(stale);
                }
                return Fetched::Failed(e);
            }
        };
        if let Some(m) = self.metrics.route(route.idx) {
            m.upstream_duration.record(started.elapsed().as_secs_f64());
        }
        let response_time = self.cache.now_ms();
        let (mut rparts, body) = resp.into_parts();
        upstream::strip_hop_by_hop(&mut rparts.headers);

        if let (StatusCode::NOT_MODIFIED, true, Some(prev)) =
            (rparts.status, conditional, &previous)
        {
            return self.freshen(
                route,
                &target,
                key,
                prev,
                &rparts.headers,
                request_time,
                response_time,
            );
        }
        if policy::is_error_status(rparts.status) {
            if let Some(stale) = stand_in(response_time) {
                tracing::debug!(uri = %target.uri, status = rparts.status.as_u16(), "upstream error; serving stale");
                return Fetched::Stale(stale);
            }
        }
        let decision = policy::decide(&self.policy_input(
            route,
            &target,
            rparts.status,
            &rparts.headers,
            request_time,
            response_time,
        ));
        let stored = match decision {
            Decision::DontStore(reason) => {
                tracing::debug!(uri = %target.uri, reason, "not storable");
                // Remember only what the response itself said: a transient status or this
                // client's own directives say nothing about the next request.
                let remember = !matches!(reason, "status" | "request no-store" | "authorization");
                return Fetched::Pass {
                    response: streamed(rparts, body),
                    remember,
                };
            }
            Decision::Store(s) => s,
        };
        if content_length(&rparts.headers).is_some_and(|n| n > self.max_entry_size) {
            return Fetched::Pass {
                response: streamed(rparts, body),
                remember: false,
            };
        }
        let bytes = match buffer_body(body, self.max_entry_size, up.timeout()).await {
            Ok(Buffered::Complete(b)) => b,
            Ok(Buffered::TooLarge(prefix, rest)) => {
                let body = Body::stream(Prefixed::new(prefix, rest));
                return Fetched::Pass {
                    response: Response::from_parts(rparts, body),
                    remember: false,
                };
            }
            Err(e) => {
                // The body failed mid-way (timeout, reset): as much an upstream error as no head.
                self.upstream_failed(route, &e);
                if let Some(stale) = stand_in(self.cache.now_ms()) {
                    return Fetched::Stale(stale);
                }
                return Fetched::Failed(e);
            }
        };
        if let Some(cell) = leader_only {
            let mut extra = HeaderMap::new();
            for name in &stored.strip {
                for v in rparts.headers.get_all(name) {
                    extra.append(name.clone(), v.clone());
                }
            }
            if !extra.is_empty() {
                *cell.lock() = Some(extra);
            }
        }
        let identity = bytes.clone();
        let body = self.compress(bytes).await;
        let e = Arc::new(entry(
            rparts.status,
            rparts.headers,
            body,
            stored,
            request_time,
            response_time,
        ));
        // The body is at hand uncompressed: answering this miss (and the next hits from
        // clients without zstd) must not decompress what was just compressed.
        self.cache.seed_identity(&key, &e, identity);
        Fetched::Stored(e)
    }

    /// Everything `policy::decide` needs for this route.
    fn policy_input<'a>(
        &'a self,
        route: &'a Route,
        target: &Target<'a>,
        status: StatusCode,
        resp_headers: &'a HeaderMap,
        request_time: u64,
        response_time: u64,
    ) -> policy::Input<'a> {
        let cfg = &route.cfg;
        policy::Input {
            req_headers: target.headers,
            status,
            resp_headers,
            route_ttl_ms: cfg
                .ttl
                .map_or(self.default_ttl_ms, |t| t.as_millis() as u64),
            mode: cfg.cache_mode,
            heuristic_max_ms: self.heuristic_max_ms,
            grace_ms: cfg.grace.as_millis() as u64,
            cache_set_cookie: cfg.cache_set_cookie,
            targeted: &self.targeted,
            request_time,
            response_time,
        }
    }

    /// A 304 to a revalidation (RFC 9111 §4.3.4): the stored body with the stored headers
    /// updated from the 304, judged afresh by `policy` (the 304 may shorten, lengthen or forbid
    /// storing).
    #[allow(clippy::too_many_arguments)]
    fn freshen(
        &self,
        route: &Route,
        target: &Target<'_>,
        key: CacheKey,
        prev: &Entry,
        not_modified: &HeaderMap,
        request_time: u64,
        response_time: u64,
    ) -> Fetched {
        let merged = policy::freshen(&prev.headers, not_modified);
        let decision = policy::decide(&self.policy_input(
            route,
            target,
            prev.status,
            &merged,
            request_time,
            response_time,
        ));
        match decision {
            Decision::Store(s) => Fetched::Revalidated(Arc::new(entry(
                prev.status,
                merged,
                prev.body.clone(),
                s,
                request_time,
                response_time,
            ))),
            Decision::DontStore(reason) => {
                // Still a valid answer for this request, but no longer storable.
                tracing::debug!(uri = %target.uri, reason, "revalidated response no longer storable");
                // Dropped here, and from Redis (which may keep it for its stale window) and the
                // fleet's L1s, in the background.
                self.cache.remove(&key);
                self.cache.invalidate_behind(key);
                let once = Entry {
                    status: prev.status,
                    headers: merged,
                    body: prev.body.clone(),
                    request_time,
                    response_time,
                    initial_age: 0,
                    lifetime: 0,
                    flags: prev.flags,
                    stale_while_revalidate: 0,
                    stale_if_error: 0,
                };
                Fetched::Pass {
                    response: self.respond_identity(&once, key),
                    remember: false,
                }
            }
        }
    }

    fn upstream_failed(&self, route: &Route, e: &ProxyError) {
        if let Some(m) = self.metrics.route(route.idx) {
            m.upstream_errors.increment(1);
        }
        tracing::warn!(route = %route.cfg.name, error = %e, "upstream request failed");
    }

    async fn compress(&self, bytes: Bytes) -> StoredBody {
        let c = self.compression;
        let (body, saved) = if bytes.len() >= BLOCKING_COMPRESS {
            let raw = bytes.clone();
            match tokio::task::spawn_blocking(move || StoredBody::encode(raw, c)).await {
                Ok(r) => r,
                Err(_) => (StoredBody::Raw(bytes), 0),
            }
        } else {
            StoredBody::encode(bytes, c)
        };
        self.metrics.compression_saved.increment(saved);
        body
    }

    /// Build a response from a stored entry for this request: 304 when the client's own
    /// validators match (RFC 9110 §13.1.1, §13.1.3), else the stored frame as is for a client
    /// that accepts zstd, the decompressed body for any other; `Age` always.
    fn respond(&self, entry: &Entry, req: &Parts, key: CacheKey) -> Response<Body> {
        if entry.status.is_success() && client_copy_is_current(entry, &req.headers) {
            return self.not_modified(entry);
        }
        if req.method == Method::GET && entry.status == StatusCode::OK {
            if let Some(r) = req.headers.get(header::RANGE).and_then(range::parse) {
                if range::if_range_holds(&entry.headers, &req.headers) {
                    return self.ranged(entry, r, key);
                }
            }
        }
        self.build(entry, accepts_zstd(&req.headers), key)
    }

    /// One byte range of the stored body: 206 with `Content-Range`, or 416 when it lies
    /// outside the body (RFC 9110 §14.4, §15.5.17). Always the identity coding.
    fn ranged(&self, entry: &Entry, r: ByteRange, key: CacheKey) -> Response<Body> {
        let Ok(full) = self.cache.identity_body(&key, entry) else {
            return self.build(entry, false, key);
        };
        let len = full.len() as u64;
        let mut headers = entry.headers.clone();
        headers.insert(
            header::AGE,
            age_value(entry.age_ms(self.cache.now_ms()) / 1000),
        );
        let (status, body, content_range) = match range::resolve(r, len) {
            Some((first, last)) => (
                StatusCode::PARTIAL_CONTENT,
                full.slice(first as usize..=last as usize),
                format!("bytes {first}-{last}/{len}"),
            ),
            None => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                Bytes::new(),
                format!("bytes */{len}"),
            ),
        };
        if let Ok(v) = HeaderValue::from_str(&content_range) {
            headers.insert(header::CONTENT_RANGE, v);
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let mut resp = Response::new(Body::full(body));
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }

    fn respond_identity(&self, entry: &Entry, key: CacheKey) -> Response<Body> {
        self.build(entry, false, key)
    }

    fn build(&self, entry: &Entry, zstd: bool, key: CacheKey) -> Response<Body> {
        // Sized once for the stored headers plus the few added here and in `finish`, so building
        // the response never grows (re-allocates and re-hashes) the map on the hit path.
        let mut headers = HeaderMap::with_capacity(entry.headers.len() + 5);
        for (name, value) in &entry.headers {
            headers.append(name.clone(), value.clone());
        }
        let body = match &entry.body {
            StoredBody::Zstd { frame, .. } if zstd => {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
                frame.clone()
            }
            _ => match self.cache.identity_body(&key, entry) {
                Ok(b) => b,
                Err(e) => {
                    // Cannot happen for an entry this process encoded; never serve it.
                    tracing::error!(key = %key, error = %e, "stored body failed to decode; dropped");
                    self.cache.remove(&key);
                    return ProxyError::UpstreamProtocol("stored entry unreadable".into())
                        .to_response();
                }
            },
        };
        if matches!(entry.body, StoredBody::Zstd { .. }) {
            add_vary_accept_encoding(&mut headers);
        }
        // Content-Length is left to hyper, which writes it from the body's exact size (also
        // for HEAD) without allocating a header value.
        headers.insert(
            header::AGE,
            age_value(entry.age_ms(self.cache.now_ms()) / 1000),
        );
        let mut resp = Response::new(Body::full(body));
        *resp.status_mut() = entry.status;
        *resp.headers_mut() = headers;
        resp
    }

    /// 304 for a client whose copy is current: the stored headers (they include `ETag`,
    /// `Cache-Control`, `Date`, `Expires`, `Vary` as RFC 9110 §15.4.5 asks) without a body.
    fn not_modified(&self, entry: &Entry) -> Response<Body> {
        let mut headers = entry.headers.clone();
        headers.remove(header::CONTENT_LENGTH);
        if matches!(entry.body, StoredBody::Zstd { .. }) {
            add_vary_accept_encoding(&mut headers);
        }
        headers.insert(
            header::AGE,
            age_value(entry.age_ms(self.cache.now_ms()) / 1000),
        );
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        *resp.headers_mut() = headers;
        resp
    }

    /// RFC 9111 §4.4: a non-error response to an unsafe method invalidates the stored
    /// responses for the target URI and for `Location` / `Content-Location` on the same host.
    fn invalidated_by(
        &self,
        uri: &Uri,
        req_headers: &HeaderMap,
        host: &str,
        resp: &Response<Body>,
    ) -> Vec<CacheKey> {
        let status = resp.status();
        if !(status.is_success() || status.is_redirection()) {
            return Vec::new();
        }
        let mut targets: Vec<String> = Vec::with_capacity(3);
        targets.push(uri.path_and_query().map_or("/", |p| p.as_str()).to_owned());
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(value) = resp.headers().get(&name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            if let Some(pq) = same_host_target(value.trim(), host) {
                targets.push(pq);
            }
        }
        let mut keys = Vec::with_capacity(targets.len());
        for pq in targets {
            let path = pq.split('?').next().unwrap_or("/");
            let Some(route) = self.routes.find(host, path, &Method::GET) else {
                continue;
            };
            let cfg = &route.cfg;
            let key = CacheKey::derive(
                &Method::GET,
                host,
                &pq,
                &cfg.query,
                &cfg.key_headers,
                req_headers,
            );
            keys.push(key);
        }
        keys
    }

    /// Everything the cache may not answer: forwarded as is, body streamed both ways.
    async fn pass<B>(
        &self,
        route: &Route,
        parts: Parts,
        body: B,
        peer: SocketAddr,
        host: &str,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<crate::body::BoxError>,
    {
        let pq = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let headers = upstream::forward_headers(parts.headers, peer, host);
        let body = if has_body(&headers) {
            Body::stream(Limited::new(body, self.max_request_body as usize))
        } else {
            Body::empty()
        };
        let up = &self.upstreams[route.idx];
        let started = Instant::now();
        match up.send(parts.method, &pq, headers, body).await {
            Ok(resp) => {
                if let Some(m) = self.metrics.route(route.idx) {
                    m.upstream_duration.record(started.elapsed().as_secs_f64());
                }
                let (mut rparts, body) = resp.into_parts();
                upstream::strip_hop_by_hop(&mut rparts.headers);
                streamed(rparts, body)
            }
            Err(ProxyError::BodyTooLarge { .. }) => self.too_large(),
            Err(e) => {
                self.upstream_failed(route, &e);
                e.to_response()
            }
        }
    }
}

impl prefetch::Source for Proxy {
    fn cache(&self) -> &Cache {
        &self.cache
    }

    fn routes(&self) -> &Routes {
        &self.routes
    }

    /// A miss without a client: GET `pq` with only the headers the route lets a prefetch
    /// forward, marked `x-augur-prefetch: 1`.
    async fn prefetch_fetch(
        &self,
        route: usize,
        host: &str,
        pq: &str,
        headers: HeaderMap,
    ) -> Fetched {
        let Some(route) = self.routes.iter().nth(route) else {
            return Fetched::Failed(ProxyError::UpstreamProtocol("no such route".into()));
        };
        let Ok(uri) = pq.parse::<Uri>() else {
            return Fetched::Failed(ProxyError::BadRequest("invalid prefetch target"));
        };
        let cfg = &route.cfg;
        let key = CacheKey::derive(
            &Method::GET,
            host,
            pq,
            &cfg.query,
            &cfg.key_headers,
            &headers,
        );
        let target = Target {
            uri: &uri,
            headers: &headers,
            peer: SocketAddr::from(([127, 0, 0, 1], 0)),
            host,
            prefetch: true,
        };
        self.fetch_for_store(route, target, key, None).await
    }
}

fn streamed(parts: http::response::Parts, body: UpstreamBody) -> Response<Body> {
    Response::from_parts(parts, Body::stream(body))
}

/// The request a fetch is made for (borrowed from the client's request or a queued refresh).
struct Target<'a> {
    uri: &'a Uri,
    headers: &'a HeaderMap,
    peer: SocketAddr,
    host: &'a str,
    /// A background prefetch: `headers` are already the filtered set to send as they are.
    prefetch: bool,
}

/// A stored entry from a response and the policy's decision: fields the policy strips
/// removed, framing and `Age` dropped (recomputed when served).
fn entry(
    status: StatusCode,
    mut headers: HeaderMap,
    body: StoredBody,
    s: Stored,
    request_time: u64,
    response_time: u64,
) -> Entry {
    for name in &s.strip {
        headers.remove(name);
    }
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::AGE);
    Entry {
        status,
        headers: owned_headers(&headers),
        body,
        request_time,
        response_time,
        initial_age: s.initial_age_ms,
        lifetime: s.lifetime_ms,
        flags: s.flags,
        stale_while_revalidate: s.stale_while_revalidate_ms,
        stale_if_error: s.stale_if_error_ms,
    }
}

/// Does the client's conditional request match the stored entry? `If-None-Match` wins over
/// `If-Modified-Since` (RFC 9110 §13.2.2). Two map lookups when the request has neither.
fn client_copy_is_current(entry: &Entry, req: &HeaderMap) -> bool {
    let mut inm = req.get_all(header::IF_NONE_MATCH).iter().peekable();
    if inm.peek().is_some() {
        let etag = entry.headers.get(header::ETAG);
        return inm.any(|v| policy::if_none_match(etag, v));
    }
    match req.get(header::IF_MODIFIED_SINCE) {
        Some(since) => policy::not_modified_since(entry.headers.get(header::LAST_MODIFIED), since),
        None => false,
    }
}

/// `Location` / `Content-Location` as an origin-form target when it names `host` (or is a path).
fn same_host_target(value: &str, host: &str) -> Option<String> {
    if value.starts_with('/') && !value.starts_with("//") {
        return Some(value.to_owned());
    }
    let uri: Uri = value.parse().ok()?;
    let authority = uri.authority()?;
    let trim = |h: &str| h.trim_end_matches('.').to_ascii_lowercase();
    let same = trim(authority.as_str()) == trim(host)
        || (authority.port().is_none() && trim(authority.host()) == trim(host));
    same.then(|| uri.path_and_query().map_or("/", |p| p.as_str()).to_owned())
}

/// Only GET and HEAD without a body are answered by the cache; a `Range` only when it is one
/// byte range on a GET (sliced from the stored full response), others pass through.
fn is_cacheable_request(parts: &Parts) -> bool {
    (parts.method == Method::GET || parts.method == Method::HEAD)
        && !has_body(&parts.headers)
        && parts
            .headers
            .get(header::RANGE)
            .is_none_or(|r| parts.method == Method::GET && range::parse(r).is_some())
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || content_length(headers).is_some_and(|n| n > 0)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The request's host: the `Host` header, or the authority of an absolute-form / HTTP/2 URI.
fn request_host(parts: &Parts) -> Option<&str> {
    match parts.headers.get(header::HOST) {
        Some(h) => h.to_str().ok().filter(|h| !h.is_empty()),
        None => parts.uri.authority().map(|a| a.as_str()),
    }
}

/// Does the client accept `zstd` (with a non-zero q-value)?
pub fn accepts_zstd(headers: &HeaderMap) -> bool {
    if !headers.contains_key(header::ACCEPT_ENCODING) {
        return false;
    }
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            if !coding.eq_ignore_ascii_case("zstd") {
                return false;
            }
            parts.all(|p| {
                let p = p.trim();
                match p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
                    Some(q) => q.trim().parse::<f32>().is_ok_and(|q| q > 0.0),
                    None => true,
                }
            })
        })
}

/// `Age` header values, shared: most hits are younger than an hour, and a clone of a shared
/// value costs a reference count instead of an allocation.
fn age_value(secs: u64) -> HeaderValue {
    static AGES: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    let table = AGES.get_or_init(|| (0..=3600u64).map(HeaderValue::from).collect());
    usize::try_from(secs)
        .ok()
        .and_then(|i| table.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(secs))
}

/// The stored body can be sent in two codings, so say so to caches downstream.
fn add_vary_accept_encoding(headers: &mut HeaderMap) {
    let already = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|n| n.trim().eq_ignore_ascii_case("accept-encoding") || n.trim() == "*");
    if !already {
        headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_acceptance() {
        let h = |v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(v));
            m
        };
        assert!(accepts_zstd(&h("gzip, zstd")));
        assert!(accepts_zstd(&h("ZSTD;q=0.5")));
        assert!(!accepts_zstd(&h("zstd;q=0")));
        assert!(!accepts_zstd(&h("gzip, br")));
        assert!(!accepts_zstd(&HeaderMap::new()));
    }
}
