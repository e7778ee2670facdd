//! The request path, top to bottom: route ─► key ─► cache (L1 ─► coalesced upstream fetch ─►
//! policy ─► store) ─► respond. One readable function per step; everything that can fail
//! becomes a response through `error`, never a panic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response};
use http_body_util::Limited;

use crate::body::{Body, Prefixed};
use crate::cache::entry::{Compression, Entry, StoredBody};
use crate::cache::policy::{self, Decision};
use crate::cache::{Cache, CacheSettings, CacheStatus, Clock, Fetched, Outcome};
use crate::config::Config;
use crate::error::ProxyError;
use crate::key::CacheKey;
use crate::metrics::Metrics;
use crate::prefetch::{self, Prefetcher, Served};
use crate::route::{Route, Routes};
use crate::upstream::{self, buffer_body, Buffered, Upstream, UpstreamBody};

/// Bodies at least this large are compressed off the async workers.
const BLOCKING_COMPRESS: usize = 256 * 1024;

static X_CACHE: http::HeaderName = http::HeaderName::from_static("x-cache");

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
        };
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
        })
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
            let resp = self.pass(route, parts, body, peer, &host).await;
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
        let fetch = || {
            let forwarded = upstream::forward_headers(parts.headers.clone(), peer, host);
            self.fetch_for_store(route, pq, &parts.headers, forwarded)
        };
        let zstd = accepts_zstd(&parts.headers);
        let (served, out) = match self.cache.lookup_or_fetch(key, fetch).await {
            Outcome::Hit(e) => (Served::Hit, (CacheStatus::Hit, self.respond(&e, zstd, key))),
            Outcome::Miss(e) => (
                Served::Fetched,
                (CacheStatus::Miss, self.respond(&e, zstd, key)),
            ),
            Outcome::Coalesced(e) => (
                Served::Coalesced,
                (CacheStatus::Miss, self.respond(&e, zstd, key)),
            ),
            Outcome::Pass(resp) => (Served::Fetched, (CacheStatus::Miss, resp)),
            Outcome::Failed(e) => (Served::Fetched, (CacheStatus::Miss, e.to_response())),
        };
        if parts.method == Method::GET {
            self.prefetcher
                .observe(&parts.headers, peer, host, pq, key, served);
        }
        out
    }

    /// The miss: fetch the identity representation, decide with `policy`, and either build an
    /// entry or hand the response back to stream through. `req_headers` are the request's
    /// headers as policy sees them; `headers` what goes upstream (the client's, forwarded, or a
    /// prefetch's synthetic set).
    async fn fetch_for_store(
        &self,
        route: &Route,
        pq: &str,
        req_headers: &HeaderMap,
        mut headers: HeaderMap,
    ) -> Fetched {
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
        let up = &self.upstreams[route.idx];
        let request_time = self.cache.now_ms();
        let started = Instant::now();
        let resp = match up.send(Method::GET, pq, headers, Body::empty()).await {
            Ok(r) => r,
            Err(e) => {
                self.upstream_failed(route, &e);
                return Fetched::Failed(e);
            }
        };
        if let Some(m) = self.metrics.route(route.idx) {
            m.upstream_duration.record(started.elapsed().as_secs_f64());
        }
        let response_time = self.cache.now_ms();
        let (mut rparts, body) = resp.into_parts();
        upstream::strip_hop_by_hop(&mut rparts.headers);

        let ttl_ms = route
            .cfg
            .ttl
            .map_or(self.default_ttl_ms, |t| t.as_millis() as u64);
        let decision = policy::decide(&policy::Input {
            req_headers,
            status: rparts.status,
            resp_headers: &rparts.headers,
            route_ttl_ms: ttl_ms,
            key_headers: &route.cfg.key_headers,
            request_time,
            response_time,
        });
        let (lifetime, initial_age) = match decision {
            Decision::DontStore(reason) => {
                tracing::debug!(pq, reason, "not storable");
                let remember = reason != "status";
                return Fetched::Pass {
                    response: streamed(rparts, body),
                    remember,
                };
            }
            Decision::Store {
                lifetime_ms,
                initial_age_ms,
            } => (lifetime_ms, initial_age_ms),
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
                self.upstream_failed(route, &e);
                return Fetched::Failed(e);
            }
        };
        rparts.headers.remove(header::CONTENT_LENGTH);
        rparts.headers.remove(header::AGE);
        let body = self.compress(bytes).await;
        Fetched::Stored(Arc::new(Entry {
            status: rparts.status,
            headers: rparts.headers,
            body,
            request_time,
            response_time,
            initial_age,
            lifetime,
        }))
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

    /// Build a response from a stored entry: the stored frame as is for a client that accepts
    /// zstd, the decompressed body for any other; `Age` always.
    fn respond(&self, entry: &Entry, zstd: bool, key: CacheKey) -> Response<Body> {
        let mut headers = entry.headers.clone();
        let body = match &entry.body {
            StoredBody::Zstd { frame, .. } if zstd => {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
                frame.clone()
            }
            stored => match stored.decoded() {
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
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        headers.insert(
            header::AGE,
            HeaderValue::from(entry.age_ms(self.cache.now_ms()) / 1000),
        );
        let mut resp = Response::new(Body::full(body));
        *resp.status_mut() = entry.status;
        *resp.headers_mut() = headers;
        resp
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
        let mut forwarded = headers.clone();
        upstream::strip_hop_by_hop(&mut forwarded);
        if let Ok(v) = HeaderValue::from_str(host) {
            forwarded.insert("x-forwarded-host", v);
        }
        prefetch::mark_prefetch(&mut forwarded);
        self.fetch_for_store(route, pq, &headers, forwarded).await
    }
}

fn streamed(parts: http::response::Parts, body: UpstreamBody) -> Response<Body> {
    Response::from_parts(parts, Body::stream(body))
}

/// Only GET and HEAD without a body or a Range are answered by the cache.
fn is_cacheable_request(parts: &Parts) -> bool {
    (parts.method == Method::GET || parts.method == Method::HEAD)
        && !parts.headers.contains_key(header::RANGE)
        && !has_body(&parts.headers)
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
