//! The miss path's far end: a pooled HTTP/1.1 client per route, hop-by-hop handling,
//! forwarding headers, timeouts and a cap on concurrent upstream connections.
//!
//! `proxy` hands a prepared request here and gets a response head whose body still streams
//! from the upstream; the connection permit travels with that body and is released when it
//! ends, so the cap counts connections really in use, including long downloads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::{Body, Holding};
use crate::config::RouteConfig;
use crate::error::ProxyError;

/// A streaming upstream body that holds its connection permit.
pub type UpstreamBody = Holding<Incoming, OwnedSemaphorePermit>;

/// One route's upstream.
pub struct Upstream {
    client: Client<HttpConnector, Body>,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    host: HeaderValue,
    timeout: Duration,
    permits: Arc<Semaphore>,
}

impl Upstream {
    pub fn new(route: &RouteConfig, idle_timeout: Duration) -> Result<Upstream, String> {
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
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle_timeout)
            .pool_max_idle_per_host(route.max_connections)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Upstream {
            client,
            scheme: uri.scheme().cloned().unwrap_or(Scheme::HTTP),
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            host,
            timeout: route.timeout,
            permits: Arc::new(Semaphore::new(route.max_connections.max(1))),
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Send a request whose headers are already prepared ([`forward_headers`]); waits at most
    /// the route's timeout for a connection slot, the connection and the response head.
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
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;

        let attempt = async {
            let permit = self
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ProxyError::UpstreamConnect("shutting down".into()))?;
            let resp = self.client.request(req).await.map_err(classify)?;
            Ok::<_, ProxyError>(resp.map(|b| Holding::new(b, permit)))
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::UpstreamTimeout(self.timeout)),
        }
    }
}

fn classify(e: hyper_util::client::legacy::Error) -> ProxyError {
    use std::error::Error as _;
    if e.is_connect() {
        let cause = e
            .source()
            .map_or_else(|| e.to_string(), ToString::to_string);
        return ProxyError::UpstreamConnect(cause);
    }
    // A request body over the configured limit surfaces here as the body's error.
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return ProxyError::BodyTooLarge { limit: 0 };
        }
        source = s.source();
    }
    ProxyError::UpstreamProtocol(e.to_string())
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
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
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
    /// Larger than `max`: what was read so far and the rest, to be streamed.
    TooLarge(Vec<Bytes>, UpstreamBody),
}

/// Read a body into memory up to `max` bytes, waiting at most `idle` for each chunk.
pub async fn buffer_body(
    mut body: UpstreamBody,
    max: u64,
    idle: Duration,
) -> Result<Buffered, ProxyError> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0u64;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ProxyError::UpstreamTimeout(idle)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ProxyError::UpstreamProtocol(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            total += data.len() as u64;
            chunks.push(data);
            if total > max {
                return Ok(Buffered::TooLarge(chunks, body));
            }
        }
    }
    Ok(Buffered::Complete(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut all = Vec::with_capacity(total as usize);
            for c in &chunks {
                all.extend_from_slice(c);
            }
            Bytes::from(all)
        }
    }))
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
