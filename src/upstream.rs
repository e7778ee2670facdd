//! The miss path's far end: a pooled HTTP/1.1 client per route, hop-by-hop handling,
//! forwarding headers, timeouts and a cap on concurrent upstream connections.
//!
//! `proxy` hands a prepared request here and gets a response head whose body still streams
//! from the upstream; the connection permit travels with that body and is released when it
//! ends, so the cap counts connections really in use, including long downloads.
//!
//! Every body is under two deadlines ([`Deadline`]): no progress for the route's `timeout`
//! (an upstream that stalls or trickles, or a client that stops reading), and
//! `upstream.body_timeout` for the whole body. Bodies buffered for the store draw on one
//! byte budget shared by all routes (`upstream.max_inflight_bytes`, [`Inflight`]); a miss
//! that finds it spent streams through unstored instead of adding to the peak.
//!
//! A GET or HEAD without a body that fails before any response byte (a pooled keep-alive the
//! upstream closed as it was reused, e.g. after an upstream restart) is sent once more on a
//! fresh connection: safe for these methods (RFC 9110 §9.2.2), and it spares the client a 502.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::{Body, BoxError, Cut, Deadline, Holding};
use crate::config::{Config, RouteConfig};
use crate::error::{cause, ProxyError};
use crate::metrics::Metrics;

/// A streaming upstream body: it holds its connection permit, runs under the idle and total
/// deadlines, and knows the byte budget to draw on if it is buffered for the store.
pub struct UpstreamBody {
    body: Deadline<Holding<Incoming, OwnedSemaphorePermit>>,
    inflight: Arc<Inflight>,
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The byte budget for bodies being buffered for the store, shared by every route.
pub struct Inflight {
    bytes: Arc<Semaphore>,
    max: u64,
    gauge: metrics::Gauge,
    skipped: metrics::Counter,
}

impl Inflight {
    fn new(max: u64, metrics: &Metrics) -> Inflight {
        let m = metrics.upstream_limits();
        Inflight {
            // tokio caps a semaphore's permits; a budget above that is as good as unlimited.
            bytes: Arc::new(Semaphore::new(
                usize::try_from(max)
                    .map_or(Semaphore::MAX_PERMITS, |n| n.min(Semaphore::MAX_PERMITS)),
            )),
            max,
            gauge: m.inflight_bytes,
            skipped: m.store_skipped,
        }
    }

    /// `n` more bytes, or `None` when the budget is spent.
    fn take(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(n).ok()?;
        let permit = self.bytes.clone().try_acquire_many_owned(n).ok();
        self.update();
        permit
    }

    fn update(&self) {
        let free = self.bytes.available_permits() as u64;
        self.gauge.set(self.max.saturating_sub(free) as f64);
    }
}

/// A buffered body and the budget it holds: [`Bytes::from_owner`] keeps the permit exactly as
/// long as any `Bytes` of this buffer lives (the store copies what it keeps, so that is until
/// the entry is built and the response to the miss is sent).
struct Buffer {
    bytes: Vec<u8>,
    permit: Option<OwnedSemaphorePermit>,
    inflight: Arc<Inflight>,
}

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.inflight.update();
    }
}

/// One route's upstream.
pub struct Upstream {
    client: Client<HttpConnector, Body>,
    /// The same client without a pool: every request on it opens a new connection. Used only
    /// for the one retry after a pooled connection failed.
    fresh: Client<HttpConnector, Body>,
    retries: metrics::Counter,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    host: HeaderValue,
    timeout: Duration,
    body_timeout: Duration,
    permits: Arc<Semaphore>,
    inflight: Arc<Inflight>,
}

impl Upstream {
    /// One upstream per route, in route order, sharing one [`Inflight`] byte budget.
    pub fn all(config: &Config, metrics: &Metrics) -> Result<Vec<Upstream>, String> {
        let inflight = Arc::new(Inflight::new(config.upstream.max_inflight_bytes, metrics));
        let retries = metrics.upstream_limits().retries;
        config
            .routes
            .iter()
            .map(|r| Upstream::new(r, config, inflight.clone(), retries.clone()))
            .collect()
    }

    fn new(
        route: &RouteConfig,
        config: &Config,
        inflight: Arc<Inflight>,
        retries: metrics::Counter,
    ) -> Result<Upstream, String> {
        let idle_timeout = config.upstream.idle_timeout;
        let uri = &route.upstream;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("route {}: upstream {uri} has no host", route.name))?;
        let host_text = route
            .upstream_host
            .clone()
            .unwrap_or_else(|| authority.as_str().to_owned());
        let host = HeaderValue::from_str(&host_text)
            .map_err(|_| format!("route {}: invalid upstream_host {host_text:?}", route.name))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(route.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = |max_idle: usize| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(idle_timeout)
                .pool_max_idle_per_host(max_idle)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .build(connector.clone())
        };
        Ok(Upstream {
            client: client(route.max_connections),
            fresh: client(0),
            retries,
            scheme: uri.scheme().cloned().unwrap_or(Scheme::HTTP),
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            host,
            timeout: route.timeout,
            body_timeout: config.upstream.body_timeout,
            permits: Arc::new(Semaphore::new(route.max_connections.max(1))),
            inflight,
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Send a request whose headers are already prepared ([`forward_headers`]); waits at most
    /// the route's timeout for a connection slot, the connection and the response head. The
    /// body then runs under its own deadlines (see the module docs).
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        mut headers: HeaderMap,
        body: Body,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let pq = if self.base_path.is_empty() {
            PathAndQuery::try_from(path_and_query)
        } else {
            PathAndQuery::try_from(format!("{}{}", self.base_path, path_and_query))
        }
        .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
        headers.insert(header::HOST, self.host.clone());
        // Kept for the retry: only a request without a body can be sent twice as it was.
        let again = ((method == Method::GET || method == Method::HEAD) && body.is_end_stream())
            .then(|| (method.clone(), uri.clone(), headers.clone()));
        let req = request(method, uri, headers, body);

        let attempt = async {
            let permit = self
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ProxyError::UpstreamConnect(cause("shutting down")))?;
            let resp = match (self.client.request(req).await, again) {
                (Ok(resp), _) => resp,
                // Not a connect error: a connection was there and failed before any response
                // byte. A connect error is not retried: a new connection would fail the same.
                (Err(e), Some((method, uri, headers))) if !e.is_connect() => {
                    tracing::debug!(error = %e, "upstream connection failed before a response; retrying once on a fresh connection");
                    self.retries.increment(1);
                    let retry = request(method, uri, headers, Body::empty());
                    self.fresh.request(retry).await.map_err(classify)?
                }
                (Err(e), _) => return Err(classify(e)),
            };
            Ok::<_, ProxyError>(resp.map(|b| UpstreamBody {
                body: Deadline::new(Holding::new(b, permit), self.timeout, self.body_timeout),
                inflight: self.inflight.clone(),
            }))
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::UpstreamTimeout(self.timeout)),
        }
    }
}

fn request(method: Method, uri: Uri, headers: HeaderMap, body: Body) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    req
}

fn classify(e: hyper_util::client::legacy::Error) -> ProxyError {
    use std::error::Error as _;
    if e.is_connect() {
        return ProxyError::UpstreamConnect(Arc::new(e));
    }
    // A request body over the configured limit surfaces here as the body's error.
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return ProxyError::BodyTooLarge { limit: 0 };
        }
        source = s.source();
    }
    ProxyError::UpstreamProtocol(Arc::new(e))
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) never cross the proxy, in either direction.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Remove hop-by-hop fields, including every field the `Connection` header names, and
/// `Upgrade` (Augur does not tunnel protocol upgrades).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in crate::normalise::connection_named(headers) {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

static VIA: HeaderValue = HeaderValue::from_static("1.1 augur");

/// The client's headers made ready to go upstream: hop-by-hop removed, `X-Forwarded-For`
/// extended with the peer, `Via` added, `X-Forwarded-Proto`/`-Host` set: to `http` and the
/// request's host (normalised as the key sees it), or, from a `trusted` peer (a front proxy
/// in `[server] trusted_proxies`), kept as that peer sent them. `Host` is set by
/// [`Upstream::send`] to what the upstream expects.
pub fn forward_headers(
    mut headers: HeaderMap,
    peer: SocketAddr,
    host: &str,
    trusted: bool,
) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    let ip = peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    let proto_kept = trusted
        && headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v == "https" || v == "http");
    if !proto_kept {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    if !(trusted && headers.contains_key("x-forwarded-host")) {
        if let Ok(v) = HeaderValue::from_str(&canonical_host(host)) {
            headers.insert("x-forwarded-host", v);
        }
    }
    headers.append(header::VIA, VIA.clone());
    headers
}

/// The host as the cache key sees it: lower-case, without a trailing dot or `:80`, so that
/// requests that share a key send the upstream the same `X-Forwarded-Host`.
fn canonical_host(host: &str) -> String {
    let host = host.strip_suffix(":80").unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    host.to_ascii_lowercase()
}

/// The result of trying to buffer a response body for the store.
pub enum Buffered {
    /// The whole body, at most `max` bytes.
    Complete(Bytes),
    /// Larger than `max`, or the in-flight byte budget is spent: what was read so far and
    /// the rest, to be streamed through unstored.
    TooLarge(Vec<Bytes>, UpstreamBody),
}

/// Read a body into memory up to `max` bytes, waiting at most `idle` for each chunk, within
/// the body's total deadline and the shared in-flight byte budget.
///
/// One buffer, grown by doubling and sized from `Content-Length` when known, so the body is
/// never held twice (chunks plus a joined copy). Each growth draws its bytes from the budget
/// first; when the budget cannot cover it, the response streams through unstored instead.
pub async fn buffer_body(
    mut body: UpstreamBody,
    max: u64,
    idle: Duration,
) -> Result<Buffered, ProxyError> {
    let inflight = body.inflight.clone();
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let hint = body
        .size_hint()
        .exact()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n <= max)
        .unwrap_or(0);
    let mut buf = Buffer {
        bytes: Vec::new(),
        permit: None,
        inflight: inflight.clone(),
    };
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ProxyError::UpstreamTimeout(idle)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(body_error(e.as_ref())),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let len = buf.bytes.len() + data.len();
        if len > max {
            return Ok(Buffered::TooLarge(prefix(buf, data), body));
        }
        if len > buf.bytes.capacity() {
            let cap = buf.bytes.capacity();
            let want = len.max(hint).max(cap.saturating_mul(2).min(max));
            let Some(more) = inflight.take(want - cap) else {
                inflight.skipped.increment(1);
                tracing::debug!(
                    budget = inflight.max,
                    "in-flight byte budget spent; streaming unstored"
                );
                return Ok(Buffered::TooLarge(prefix(buf, data), body));
            };
            match &mut buf.permit {
                Some(p) => p.merge(more),
                None => buf.permit = Some(more),
            }
            buf.bytes.reserve_exact(want - buf.bytes.len());
        }
        buf.bytes.extend_from_slice(&data);
    }
    if buf.bytes.is_empty() {
        return Ok(Buffered::Complete(Bytes::new()));
    }
    Ok(Buffered::Complete(Bytes::from_owner(buf)))
}

/// What was buffered so far, then the chunk that did not fit, for streaming.
fn prefix(buf: Buffer, data: Bytes) -> Vec<Bytes> {
    if buf.bytes.is_empty() {
        vec![data]
    } else {
        vec![Bytes::from_owner(buf), data]
    }
}

/// A body that broke off: a deadline is a timeout (504), anything else a protocol error.
fn body_error(e: &(dyn std::error::Error + 'static)) -> ProxyError {
    match e.downcast_ref::<Cut>() {
        Some(Cut::Idle(d) | Cut::Total(d)) => ProxyError::UpstreamTimeout(*d),
        None => ProxyError::UpstreamProtocol(cause(&e.to_string())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_fields() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn forwards_client_address() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let peer: SocketAddr = "127.0.0.9:5000".parse().unwrap();
        let out = forward_headers(h, peer, "api.example.com", false);
        assert_eq!(out["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(out["x-forwarded-host"], "api.example.com");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out[header::VIA], "1.1 augur");
    }

    #[test]
    fn forwarded_proto_and_host_are_kept_only_from_trusted_peers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-host", HeaderValue::from_static("shop.example"));
        let peer: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let untrusted = forward_headers(h.clone(), peer, "Shop.Example.", false);
        assert_eq!(untrusted["x-forwarded-proto"], "http");
        assert_eq!(untrusted["x-forwarded-host"], "shop.example");
        let trusted = forward_headers(h, peer, "internal:8080", true);
        assert_eq!(trusted["x-forwarded-proto"], "https");
        assert_eq!(trusted["x-forwarded-host"], "shop.example");
    }
}
