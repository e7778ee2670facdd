//! Everything the cache may not answer (unsafe methods, requests with a body, multi-range
//! requests) is forwarded as is, body streamed both ways; and RFC 9111 §4.4: a non-error
//! response to an unsafe method invalidates what the cache holds for the target URI and for
//! `Location` / `Content-Location` on the same host.

use std::time::Instant;

use bytes::Bytes;
use http::header;
use http::{Method, Response, Uri};
use http_body_util::Limited;

use super::exchange::{has_body, Exchange};
use super::fetch::streamed;
use super::Proxy;
use crate::body::Body;
use crate::error::ProxyError;
use crate::key::CacheKey;
use crate::upstream;

impl Proxy {
    /// Forward the request upstream as it is; stream the answer back.
    pub(super) async fn pass<B>(&self, ex: &Exchange<'_>, body: B) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<crate::body::BoxError>,
    {
        let headers = upstream::forward_headers(ex.headers().clone(), ex.peer, ex.host, ex.trusted);
        let body = if has_body(&headers) {
            Body::stream(Limited::new(body, self.max_request_body as usize))
        } else {
            Body::empty()
        };
        let up = self.upstream(ex.route);
        let started = Instant::now();
        match up.send(ex.method().clone(), ex.pq, headers, body).await {
            Ok(resp) => {
                if let Some(m) = self.metrics.route(ex.route.idx) {
                    m.upstream_duration.record(started.elapsed().as_secs_f64());
                }
                let (mut rparts, body) = resp.into_parts();
                upstream::strip_hop_by_hop(&mut rparts.headers);
                streamed(rparts, body)
            }
            Err(ProxyError::BodyTooLarge { .. }) => self.too_large(),
            Err(e) => {
                self.upstream_failed(ex.route, &e);
                e.to_response()
            }
        }
    }

    /// The keys an unsafe request's response invalidates (§4.4): the target URI, and
    /// `Location` / `Content-Location` when they name the same host; each keyed by the route
    /// that would serve a GET for it.
    pub(super) fn invalidated_by(&self, ex: &Exchange<'_>, resp: &Response<Body>) -> Vec<CacheKey> {
        let status = resp.status();
        if !(status.is_success() || status.is_redirection()) {
            return Vec::new();
        }
        let mut targets: Vec<String> = Vec::with_capacity(3);
        targets.push(ex.pq.to_owned());
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(value) = resp.headers().get(&name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            if let Some(pq) = same_host_target(value.trim(), ex.host) {
                targets.push(pq);
            }
        }
        targets
            .iter()
            .filter_map(|pq| {
                let path = pq.split('?').next().unwrap_or("/");
                let route = self.routes.find(ex.host, path, &Method::GET)?;
                Some(route.key(&Method::GET, ex.host, pq, ex.headers()))
            })
            .collect()
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
