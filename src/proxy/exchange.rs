//! One client request as every phase of the request path sees it: built once in
//! `Proxy::handle`, before anything is derived from the request, and passed by reference to
//! each phase (as pingora-proxy's per-request `CTX`), so no phase re-derives the route, the
//! host or the key, and no phase takes six loose arguments.
//!
//! This is the one seam where the request is read: [`Exchange::new`] normalises it first
//! (`normalise`: hop-by-hop fields, the path, unkeyed overrides, unkeyed query parameters),
//! so that routing, the key and the upstream all see the same request.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Instant;

use http::header::{self, HeaderMap};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Uri};
use ipnet::IpNet;

use super::credentials::Credentials;
use crate::config::PathRules;
use crate::key::CacheKey;
use crate::normalise::{self, PathError};
use crate::range;
use crate::route::{Route, Routes};

/// The facts about one client request that the phases share.
pub(crate) struct Exchange<'a> {
    /// The request head, normalised (see [`Exchange::new`]).
    pub parts: &'a Parts,
    pub route: &'a Route,
    /// The request's host: the authority of an absolute-form or HTTP/2 target, else `Host`.
    pub host: &'a str,
    /// The origin-form target, `/path?query`, as normalised: what is routed, keyed and sent.
    pub pq: &'a str,
    pub peer: SocketAddr,
    /// The peer is a trusted proxy: its `X-Forwarded-Proto` / `-Host` are kept.
    pub trusted: bool,
    pub started: Instant,
    /// Decided once, before the cacheable-only normalisation (see [`Exchange::is_cacheable`]).
    cacheable: bool,
    /// The primary cache key (method, host, target, the route's query and header rules);
    /// the stored variant, when responses vary, is selected from it by the cache.
    pub key: CacheKey,
    /// The request carries credentials its key does not hold (`Authorization`, or a
    /// `cache.credential_headers` field outside the route's `key_headers`; see `credentials`).
    pub credentials: bool,
}

/// Why no [`Exchange`] could be built: answered before any phase runs.
pub(crate) enum Refused {
    /// No usable `Host`.
    NoHost,
    /// A path that cannot be normalised (an encoded slash, a stray `%`).
    BadPath(PathError),
    /// No route matches: `METHOD host/path`, for the error.
    NoRoute(String),
}

/// What the proxy's config says about reading requests.
pub(crate) struct Reading<'a> {
    pub routes: &'a Routes,
    pub paths: &'a PathRules,
    pub trusted_proxies: &'a [IpNet],
    pub credentials: &'a Credentials,
}

impl<'a> Exchange<'a> {
    /// Normalise the request once (see `normalise`), then route and key it. Everything after
    /// this sees only the normalised request: routing, the key, `Vary`, the prefetcher, the
    /// upstream.
    pub fn new(
        parts: &'a mut Parts,
        reading: &Reading<'a>,
        peer: SocketAddr,
        started: Instant,
    ) -> Result<Exchange<'a>, Refused> {
        normalise::strip_connection_named(&mut parts.headers);
        if let Some(path) = normalised_path(parts, reading.paths)? {
            let query = parts.uri.query().map(str::to_owned);
            set_target(parts, &path, query.as_deref())?;
        }
        let route = {
            let host = request_host(parts).ok_or(Refused::NoHost)?;
            match reading.routes.find(host, parts.uri.path(), &parts.method) {
                Some(route) => route,
                None => {
                    let what = format!("{} {host}{}", parts.method, parts.uri.path());
                    return Err(Refused::NoRoute(what));
                }
            }
        };
        let cacheable = is_cacheable(parts);
        if cacheable {
            let cfg = &route.cfg;
            normalise::strip_unkeyed(
                &mut parts.headers,
                &cfg.key_headers,
                &cfg.strip_request_headers,
            );
            if !cfg.forward_unkeyed_query {
                let keyed = parts
                    .uri
                    .query()
                    .and_then(|q| normalise::keyed_query(q, &cfg.query));
                if let Some(query) = keyed {
                    let path = parts.uri.path().to_owned();
                    set_target(parts, &path, Some(&query))?;
                }
            }
        }
        let parts: &'a Parts = parts;
        let host = request_host(parts).ok_or(Refused::NoHost)?;
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let trusted = reading
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&peer.ip()));
        Ok(Exchange {
            parts,
            route,
            host,
            pq,
            peer,
            trusted,
            started,
            cacheable,
            key: route.key(&parts.method, host, pq, &parts.headers),
            credentials: reading
                .credentials
                .carried(&parts.headers, &route.cfg.key_headers),
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
        self.cacheable
    }

    /// The request declares a body larger than `limit`.
    pub fn body_over(&self, limit: u64) -> bool {
        content_length(&self.parts.headers).is_some_and(|n| n > limit)
    }
}

fn is_cacheable(parts: &Parts) -> bool {
    (parts.method == Method::GET || parts.method == Method::HEAD)
        && !has_body(&parts.headers)
        && parts
            .headers
            .get(header::RANGE)
            .is_none_or(|r| parts.method == Method::GET && range::parse(r).is_some())
}

/// The request's path normalised, when that changes it.
fn normalised_path(parts: &Parts, rules: &PathRules) -> Result<Option<String>, Refused> {
    match normalise::path(parts.uri.path(), rules) {
        Ok(Cow::Borrowed(_)) => Ok(None),
        Ok(Cow::Owned(p)) => Ok(Some(p)),
        Err(e) => Err(Refused::BadPath(e)),
    }
}

/// Replace the request target's path and query, keeping scheme and authority.
fn set_target(parts: &mut Parts, path: &str, query: Option<&str>) -> Result<(), Refused> {
    let pq = match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_owned(),
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query = PathAndQuery::try_from(pq).ok();
    parts.uri = Uri::from_parts(uri).map_err(|_| Refused::BadPath(PathError::BadEscape))?;
    Ok(())
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

/// The request's host: the authority of an absolute-form target or HTTP/2 `:authority`,
/// which RFC 9112 §3.2.2 and RFC 9113 §8.3.1 put before `Host`; else `Host`.
fn request_host(parts: &Parts) -> Option<&str> {
    match parts.uri.authority() {
        Some(a) => Some(a.as_str()).filter(|h| !h.is_empty()),
        None => parts
            .headers
            .get(header::HOST)?
            .to_str()
            .ok()
            .filter(|h| !h.is_empty()),
    }
}
