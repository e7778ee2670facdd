//! The request path, top to bottom: [`Proxy::handle`] builds one [`Exchange`] (route, host,
//! key), then either asks the cache (`GET`/`HEAD`) or passes the request through, and
//! [`Proxy::finish`] labels and counts the answer. Everything that can fail becomes a
//! response through `error`, never a panic.
//!
//! One file per phase, each over the same `Exchange`:
//!
//! | file | phase |
//! |---|---|
//! | `exchange.rs` | the request as every phase sees it, built once |
//! | `credentials.rs` | does the request carry credentials (`Authorization`, `Cookie`, API keys)? |
//! | `mod.rs` | `handle`: route ─► cache or pass ─► finish; the cache verdict to a response |
//! | `fetch.rs` | the miss: ask the upstream, let `policy` decide, store or stream through |
//! | `revalidate.rs` | conditional requests for a stale entry; a 304 freshens it (§4.3) |
//! | `respond.rs` | a stored entry to a response: `Age`, 304, 206, zstd or identity |
//! | `pass.rs` | everything the cache may not answer, and what unsafe methods invalidate (§4.4) |
//! | `refresh.rs` | the `stale-while-revalidate` queue: one background refresh per stale key |

mod credentials;
mod exchange;
mod fetch;
mod pass;
mod refresh;
mod respond;
mod revalidate;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::body::Body;
use crate::cache::entry::Compression;
use crate::cache::policy::{self, Use};
use crate::cache::{Cache, CacheSettings, CacheStatus, Fetched, Outcome, Want};
use crate::clock::Clock;
use crate::config::Config;
use crate::config::PathRules;
use crate::error::ProxyError;
use crate::key::CacheKey;
use crate::metrics::Metrics;
use crate::prefetch::{self, Prefetcher};
use crate::route::{Route, Routes};
use crate::upstream::Upstream;
pub use fetch::entry as stored_entry;
use ipnet::IpNet;
pub use respond::accepts_zstd;

use credentials::Credentials;
use exchange::{Exchange, Reading, Refused};
use fetch::{Sender, Target};
use refresh::Refresh;

static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// `L2` on a hit served from Redis (`x-cache` stays `HIT`).
static X_CACHE_TIER: HeaderName = HeaderName::from_static("x-cache-tier");

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
    paths: PathRules,
    trusted_proxies: Vec<IpNet>,
    invalidate_unknown_methods: bool,
    /// Which request fields are credentials (`cache.credential_headers`, and `Authorization`).
    credentials: Credentials,
}

impl Proxy {
    pub fn new(config: &Config, clock: Clock, metrics: Arc<Metrics>) -> Result<Proxy, String> {
        let routes = Routes::new(&config.routes).map_err(|e| e.to_string())?;
        let upstreams = Upstream::all(config, &metrics)?;
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
            .chain(
                // RFC 9213 targets every CDN-like cache, but an origin may mean it for its outer
                // CDN alone (security review L14): `[cache] honour_cdn_cache_control` decides.
                Some(policy::CDN_CACHE_CONTROL.clone())
                    .filter(|_| config.cache.honour_cdn_cache_control),
            )
            .collect();
        for r in config.routes.iter().filter(|r| r.forwards_unkeyed_query()) {
            tracing::warn!(route = %r.name, "forward_unkeyed_query = true: query parameters outside the cache key reach the upstream");
        }
        let (refresh_tx, refresh_rx) = mpsc::channel(refresh::QUEUE);
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
            paths: config.server.paths,
            trusted_proxies: config.server.trusted_proxies.clone(),
            invalidate_unknown_methods: config.cache.invalidate_unknown_methods,
            credentials: Credentials::new(&config.cache.credential_headers),
        })
    }

    /// What reading a request needs from the config.
    fn reading(&self) -> Reading<'_> {
        Reading {
            routes: &self.routes,
            paths: &self.paths,
            trusted_proxies: &self.trusted_proxies,
            credentials: &self.credentials,
        }
    }

    /// Does a 2xx/3xx answer to `method` invalidate (RFC 9111 §4.4)? The unsafe methods
    /// HTTP defines do; an unknown method only when configured, so that no client can purge
    /// a URL fleet-wide with `FOO /x` against an origin that answers anything with 200.
    fn invalidates(&self, method: &Method) -> bool {
        matches!(
            *method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        ) || (self.invalidate_unknown_methods && !method.is_safe())
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

    /// The route's upstream (one per route, built in `new` in route order).
    fn upstream(&self, route: &Route) -> &Upstream {
        &self.upstreams[route.idx]
    }

    /// Answer one client request. Generic over the request body so that benches and tests can
    /// drive the request path in-process; the server passes hyper's `Incoming`.
    pub async fn handle<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<crate::body::BoxError>,
    {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let ex = match Exchange::new(&mut parts, &self.reading(), peer, started) {
            Ok(ex) => ex,
            Err(Refused::NoHost) => {
                return ProxyError::BadRequest("missing or invalid Host header").to_response()
            }
            Err(Refused::BadPath(e)) => return ProxyError::BadRequest(e.as_str()).to_response(),
            Err(Refused::NoRoute(what)) => {
                self.metrics.no_route.increment(1);
                return ProxyError::NoRoute(what).to_response();
            }
        };
        if ex.body_over(self.max_request_body) {
            return self.finish(&ex, CacheStatus::Bypass, self.too_large());
        }
        if ex.is_cacheable() {
            let (verdict, resp) = self.through_cache(&ex).await;
            return self.finish(&ex, verdict, resp);
        }
        let resp = self.pass(&ex, body).await;
        if self.invalidates(ex.method()) {
            for key in self.invalidated_by(&ex, &resp) {
                self.cache.invalidate_soon(&key);
            }
        }
        self.finish(&ex, CacheStatus::Bypass, resp)
    }

    /// Label the response with the verdict (`x-cache`), count it, log it.
    fn finish(
        &self,
        ex: &Exchange<'_>,
        verdict: CacheStatus,
        mut resp: Response<Body>,
    ) -> Response<Body> {
        resp.headers_mut()
            .insert(X_CACHE.clone(), HeaderValue::from_static(verdict.as_str()));
        let elapsed = ex.started.elapsed();
        if let Some(m) = self.metrics.route(ex.route.idx) {
            m.record(verdict, resp.status().as_u16(), elapsed);
        }
        tracing::debug!(
            method = %ex.method(),
            uri = %ex.parts.uri,
            route = %ex.route.cfg.name,
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
    async fn through_cache(&self, ex: &Exchange<'_>) -> (CacheStatus, Response<Body>) {
        let mut directives = policy::request_directives(ex.headers());
        if ex.route.cfg.ignore_client_no_cache {
            // A reload (`no-cache`, `max-age=0`) is answered from a fresh stored response,
            // as nginx and Varnish do by default: no client can make each request go upstream.
            directives.no_cache = false;
            directives.max_age = directives.max_age.filter(|&a| a > 0);
        }
        if ex.credentials {
            self.metrics.credentialed.increment(1);
        }
        let want = Want {
            directives,
            credentials: ex.credentials,
            allow_stale: true,
        };
        if want.directives.only_if_cached {
            return self.only_if_cached(ex, &want);
        }
        // Only GETs on routes that opted in teach the model (and only those can use a prefetch).
        let observed = ex.method() == Method::GET && ex.route.cfg.prefetch;
        if observed {
            self.prefetcher
                .observe(ex.headers(), ex.peer, ex.host, ex.pq);
        }
        let leader_only = fetch::LeaderOnly::default();
        let fetch = || self.fetch_for_store(ex.target(), Some(&leader_only));
        // `at`: where the answering entry is stored (the variant, when responses vary).
        let (outcome, at) = self
            .cache
            .lookup_or_fetch_for(ex.key, ex.headers(), &want, fetch)
            .await;
        let (verdict, served) = (outcome.status(), outcome.served());
        let resp = match outcome {
            Outcome::Hit(e) | Outcome::Coalesced { entry: e, .. } | Outcome::Revalidated(e) => {
                self.respond(&e, ex.parts, at)
            }
            Outcome::HitL2(e) => {
                let mut resp = self.respond(&e, ex.parts, at);
                resp.headers_mut()
                    .insert(X_CACHE_TIER.clone(), HeaderValue::from_static("L2"));
                resp
            }
            Outcome::Miss(e) => {
                let mut resp = self.respond(&e, ex.parts, at);
                leader_only.add_to(resp.headers_mut());
                resp
            }
            Outcome::Stale { entry, refresh } => {
                if refresh {
                    self.queue_refresh(ex, at);
                }
                self.respond(&entry, ex.parts, at)
            }
            Outcome::Pass(resp) => resp,
            Outcome::Failed(e) => e.to_response(),
        };
        if observed {
            self.prefetcher.served(ex.key, served);
        }
        (verdict, resp)
    }

    /// `only-if-cached` (RFC 9111 §5.2.1.7): a stored response that satisfies the request, or
    /// 504; never the upstream.
    fn only_if_cached(&self, ex: &Exchange<'_>, want: &Want) -> (CacheStatus, Response<Body>) {
        let key = self.cache.variant_key(&ex.key, ex.headers());
        let now = self.cache.now_ms();
        match self.cache.peek(&key) {
            Some(e) => match policy::usable(&e, &want.directives, want.credentials, now) {
                Use::Fresh => (CacheStatus::Hit, self.respond(&e, ex.parts, key)),
                Use::Stale => (CacheStatus::Stale, self.respond(&e, ex.parts, key)),
                _ => (CacheStatus::Miss, ProxyError::NotCached.to_response()),
            },
            None => (CacheStatus::Miss, ProxyError::NotCached.to_response()),
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
        headers: &HeaderMap,
        key: CacheKey,
    ) -> Fetched {
        let Some(route) = self.routes.iter().nth(route) else {
            return Fetched::Failed(ProxyError::Internal("prefetch names no route"));
        };
        if pq.parse::<Uri>().is_err() {
            return Fetched::Failed(ProxyError::BadRequest("invalid prefetch target"));
        }
        let target = Target {
            route,
            host,
            pq,
            headers,
            key,
            sender: Sender::Prefetch,
            // Only when the route lets a prefetch forward one of them.
            credentials: self.credentials.carried(headers, &route.cfg.key_headers),
        };
        self.fetch_for_store(target, None).await
    }
}
