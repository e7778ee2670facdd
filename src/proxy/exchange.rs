//! One client request as every phase of the request path sees it: built once in
//! `Proxy::handle`, before anything is derived from the request, and passed by reference to
//! each phase (as pingora-proxy's per-request `CTX`), so no phase re-derives the route, the
//! host or the key, and no phase takes six loose arguments.
//!
//! This is the one seam where the request is read: whatever normalisation the request needs
//! before routing and keying (hop-by-hop fields, the path) belongs in [`Exchange::new`], so
//! that routing, the key and the upstream all see the same request.

use std::net::SocketAddr;
use std::time::Instant;

use http::header::{self, HeaderMap};
use http::request::Parts;
use http::Method;

use crate::key::CacheKey;
use crate::range;
use crate::route::{Route, Routes};

/// The facts about one client request that the phases share.
pub(crate) struct Exchange<'a> {
    /// The request head.
    pub parts: &'a Parts,
    pub route: &'a Route,
    /// The request's host (the `Host` field, or the authority of an absolute-form URI).
    pub host: &'a str,
    /// The origin-form target, `/path?query`.
    pub pq: &'a str,
    pub peer: SocketAddr,
    pub started: Instant,
    /// The primary cache key (method, host, target, the route's query and header rules);
    /// the stored variant, when responses vary, is selected from it by the cache.
    pub key: CacheKey,
}

/// Why no [`Exchange`] could be built: answered before any phase runs.
pub(crate) enum Refused<'a> {
    /// No usable `Host`.
    NoHost,
    /// No route matches; the host is named in the error.
    NoRoute(&'a str),
}

impl<'a> Exchange<'a> {
    pub fn new(
        parts: &'a Parts,
        routes: &'a Routes,
        peer: SocketAddr,
        started: Instant,
    ) -> Result<Exchange<'a>, Refused<'a>> {
        let host = request_host(parts).ok_or(Refused::NoHost)?;
        let route = routes
            .find(host, parts.uri.path(), &parts.method)
            .ok_or(Refused::NoRoute(host))?;
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let key = route.key(&parts.method, host, pq, &parts.headers);
        Ok(Exchange {
            parts,
            route,
            host,
            pq,
            peer,
            started,
            key,
        })
    }

    pub fn method(&self) -> &Method {
        &self.parts.method
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.parts.headers
    }

    /// Only GET and HEAD without a body are answered by the cache; a `Range` only when it is
    /// one byte range on a GET (sliced from the stored full response), others pass through.
    pub fn is_cacheable(&self) -> bool {
        let parts = self.parts;
        (parts.method == Method::GET || parts.method == Method::HEAD)
            && !has_body(&parts.headers)
            && parts
                .headers
                .get(header::RANGE)
                .is_none_or(|r| parts.method == Method::GET && range::parse(r).is_some())
    }

    /// The request declares a body larger than `limit`.
    pub fn body_over(&self, limit: u64) -> bool {
        content_length(&self.parts.headers).is_some_and(|n| n > limit)
    }
}

pub(crate) fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || content_length(headers).is_some_and(|n| n > 0)
}

pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
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
