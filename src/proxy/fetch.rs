//! The miss: ask the upstream for the identity representation (conditionally when a stale
//! entry has validators, see `revalidate`), let `policy` decide, and either build an entry to
//! store or hand the response back to stream through. An upstream that fails, or answers
//! with an error status, is replaced by the stale entry where `stale-if-error` / grace allow.
//!
//! Reached only through the cache's coalesced path: a client's miss, a background refresh
//! (`refresh`) and a prefetch all run the same steps, told apart by [`Sender`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::response::Parts as ResponseParts;
use http::{Method, Response, StatusCode};
use parking_lot::Mutex;

use super::exchange::{content_length, Exchange};
use super::Proxy;
use crate::body::{Body, Prefixed};
use crate::cache::entry::{owned_headers, Entry, StoredBody};
use crate::cache::policy::{self, Decision, Stored};
use crate::cache::Fetched;
use crate::error::ProxyError;
use crate::key::CacheKey;
use crate::prefetch;
use crate::route::Route;
use crate::upstream::{self, buffer_body, Buffered, UpstreamBody};

/// Bodies at least this large are compressed off the async workers.
const BLOCKING_COMPRESS: usize = 256 * 1024;

/// Who a fetch is made for, which decides the headers it sends.
#[derive(Clone, Copy)]
pub(super) enum Sender {
    /// A client (or a background refresh on behalf of one): its headers, forwarded with
    /// `X-Forwarded-*` for this peer (kept from a trusted proxy).
    Client { peer: SocketAddr, trusted: bool },
    /// A background prefetch: the headers are already the filtered set the route lets a
    /// prefetch send; nothing of a client's identity, marked `x-augur-prefetch: 1`.
    Prefetch,
}

/// The request a fetch is made for (borrowed from a client's [`Exchange`], a queued refresh,
/// or a prefetch).
pub(super) struct Target<'a> {
    pub route: &'a Route,
    pub host: &'a str,
    pub pq: &'a str,
    pub headers: &'a HeaderMap,
    /// The primary key (the variant is selected from it and `headers`).
    pub key: CacheKey,
    pub sender: Sender,
    /// `headers` carry credentials outside the key (see `credentials`).
    pub credentials: bool,
}

impl Exchange<'_> {
    /// What a miss for this client request fetches.
    pub(super) fn target(&self) -> Target<'_> {
        Target {
            route: self.route,
            host: self.host,
            pq: self.pq,
            headers: self.headers(),
            key: self.key,
            sender: Sender::Client {
                peer: self.peer,
                trusted: self.trusted,
            },
            credentials: self.credentials,
        }
    }
}

/// Headers a fetch removed from the stored copy (`private="…"`, `Set-Cookie`) that still belong
/// in the response to the request that made the fetch.
#[derive(Default)]
pub(super) struct LeaderOnly(Mutex<Option<HeaderMap>>);

impl LeaderOnly {
    /// Keep the fields `stored` strips from `headers`, for this request's response only.
    fn keep(&self, stored: &Stored, headers: &HeaderMap) {
        let mut extra = HeaderMap::new();
        for name in &stored.strip {
            for v in headers.get_all(name) {
                extra.append(name.clone(), v.clone());
            }
        }
        if !extra.is_empty() {
            *self.0.lock() = Some(extra);
        }
    }

    /// Put them back into the response of the request that made the fetch.
    pub fn add_to(&self, headers: &mut HeaderMap) {
        if let Some(extra) = self.0.lock().take() {
            for (name, value) in &extra {
                headers.append(name.clone(), value.clone());
            }
        }
    }
}

/// What the upstream answered, with the times `policy` needs (unix ms).
pub(super) struct Answer {
    pub parts: ResponseParts,
    pub body: UpstreamBody,
    pub request_time: u64,
    pub response_time: u64,
}

impl Proxy {
    /// The miss, as a short sequence of named steps: the headers to send; the stored entry
    /// that may be revalidated or stand in; send; 304 ─► freshen; error status ─► stand in;
    /// decide; buffer and store, or stream through.
    pub(super) async fn fetch_for_store(
        &self,
        target: Target<'_>,
        leader_only: Option<&LeaderOnly>,
    ) -> Fetched {
        let mut headers = self.upstream_headers(&target);
        // The variant this request selects (the key itself unless responses vary).
        let key = self.cache.variant_key(&target.key, target.headers);
        let previous = self.revalidatable(key, target.credentials);
        let conditional = previous
            .as_deref()
            .is_some_and(|prev| add_validators(&mut headers, prev));
        let answer = match self.send(&target, headers).await {
            Ok(answer) => answer,
            Err(e) => return self.failed(target.route, e, previous),
        };
        if let (StatusCode::NOT_MODIFIED, true, Some(prev)) =
            (answer.parts.status, conditional, &previous)
        {
            return self.freshen(&target, key, prev, &answer);
        }
        if policy::is_error_status(answer.parts.status) {
            if let Some(stale) = stand_in(&previous, answer.response_time) {
                tracing::debug!(
                    pq = target.pq,
                    status = answer.parts.status.as_u16(),
                    "upstream error; serving stale"
                );
                return Fetched::Stale(stale);
            }
        }
        let stored = match policy::decide(&self.policy_input(&target, &answer, None)) {
            Decision::Store(s) => s,
            Decision::DontStore(reason) => {
                tracing::debug!(pq = target.pq, reason = reason.as_str(), "not storable");
                return Fetched::Pass {
                    response: streamed(answer.parts, answer.body),
                    remember: reason.leaves_pass_mark(),
                };
            }
        };
        self.store(&target, key, answer, stored, previous, leader_only)
            .await
    }

    /// The request headers a fetch sends upstream. The store holds one identity
    /// representation and compresses it itself; a client's validators and ranges concern the
    /// client's copy, not the one being stored.
    fn upstream_headers(&self, target: &Target<'_>) -> HeaderMap {
        let mut headers = match target.sender {
            Sender::Client { peer, trusted } => {
                upstream::forward_headers(target.headers.clone(), peer, target.host, trusted)
            }
            Sender::Prefetch => {
                let mut h = target.headers.clone();
                upstream::strip_hop_by_hop(&mut h);
                if let Ok(v) = HeaderValue::from_str(target.host) {
                    h.insert("x-forwarded-host", v);
                }
                prefetch::mark_prefetch(&mut h);
                h
            }
        };
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
        headers
    }

    /// GET the target upstream; the head, timed.
    async fn send(&self, target: &Target<'_>, headers: HeaderMap) -> Result<Answer, ProxyError> {
        let up = self.upstream(target.route);
        let request_time = self.cache.now_ms();
        let started = Instant::now();
        let resp = up
            .send(Method::GET, target.pq, headers, Body::empty())
            .await?;
        if let Some(m) = self.metrics.route(target.route.idx) {
            m.upstream_duration.record(started.elapsed().as_secs_f64());
        }
        let response_time = self.cache.now_ms();
        let (mut parts, body) = resp.into_parts();
        upstream::strip_hop_by_hop(&mut parts.headers);
        Ok(Answer {
            parts,
            body,
            request_time,
            response_time,
        })
    }

    /// The upstream failed (no head, or the body broke off): the stored entry stands in where
    /// `stale-if-error` / grace allow, else the error.
    fn failed(&self, route: &Route, e: ProxyError, previous: Option<Arc<Entry>>) -> Fetched {
        self.upstream_failed(route, &e);
        match stand_in(&previous, self.cache.now_ms()) {
            Some(stale) => Fetched::Stale(stale),
            None => Fetched::Failed(e),
        }
    }

    pub(super) fn upstream_failed(&self, route: &Route, e: &ProxyError) {
        if let Some(m) = self.metrics.route(route.idx) {
            m.upstream_errors.increment(1);
        }
        tracing::warn!(route = %route.cfg.name, error = %e, "upstream request failed");
    }

    /// A storable answer: buffered up to the entry size limit (larger ones stream through,
    /// unstored), compressed, built into an entry. The identity body is kept beside it so the
    /// response to this miss does not decompress what was just compressed.
    async fn store(
        &self,
        target: &Target<'_>,
        key: CacheKey,
        answer: Answer,
        stored: Stored,
        previous: Option<Arc<Entry>>,
        leader_only: Option<&LeaderOnly>,
    ) -> Fetched {
        let Answer { parts, body, .. } = answer;
        if content_length(&parts.headers).is_some_and(|n| n > self.max_entry_size) {
            return pass(streamed(parts, body));
        }
        let up = self.upstream(target.route);
        let bytes = match buffer_body(body, self.max_entry_size, up.timeout()).await {
            Ok(Buffered::Complete(b)) => b,
            Ok(Buffered::TooLarge(prefix, rest)) => {
                let body = Body::stream(Prefixed::new(prefix, rest));
                return pass(Response::from_parts(parts, body));
            }
            // The body failed mid-way (timeout, reset): as much an upstream error as no head.
            Err(e) => return self.failed(target.route, e, previous),
        };
        if let Some(cell) = leader_only {
            cell.keep(&stored, &parts.headers);
        }
        let identity = bytes.clone();
        let body = self.compress(bytes).await;
        let e = Arc::new(entry(
            parts.status,
            parts.headers,
            body,
            stored,
            answer.request_time,
            answer.response_time,
        ));
        self.cache.seed_identity(&key, &e, identity);
        Fetched::Stored(e)
    }

    /// Everything `policy::decide` needs for this route; `headers` in place of the answer's
    /// (a 304's merged into the stored ones).
    pub(super) fn policy_input<'a>(
        &'a self,
        target: &Target<'a>,
        answer: &'a Answer,
        headers: Option<(StatusCode, &'a HeaderMap)>,
    ) -> policy::Input<'a> {
        let cfg = &target.route.cfg;
        let (status, resp_headers) =
            headers.unwrap_or((answer.parts.status, &answer.parts.headers));
        policy::Input {
            req_headers: target.headers,
            credentials: target.credentials,
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
            request_time: answer.request_time,
            response_time: answer.response_time,
        }
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
}

/// Add the stored entry's validators to a fetch; `true` when it became conditional.
fn add_validators(headers: &mut HeaderMap, prev: &Entry) -> bool {
    let mut conditional = false;
    if let Some(etag) = prev.headers.get(header::ETAG) {
        headers.insert(header::IF_NONE_MATCH, etag.clone());
        conditional = true;
    }
    if let Some(lm) = prev.headers.get(header::LAST_MODIFIED) {
        headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
        conditional = true;
    }
    conditional
}

/// The stored entry, where it may stand in for a failing upstream at `now`.
fn stand_in(previous: &Option<Arc<Entry>>, now: u64) -> Option<Arc<Entry>> {
    previous
        .clone()
        .filter(|p| policy::stale_if_error_ok(p, now))
}

/// Too large to store: streamed through, and no hit-for-pass mark (the next one may fit).
fn pass(response: Response<Body>) -> Fetched {
    Fetched::Pass {
        response,
        remember: false,
    }
}

pub(super) fn streamed(parts: ResponseParts, body: UpstreamBody) -> Response<Body> {
    Response::from_parts(parts, Body::stream(body))
}

/// A stored entry from a response and the policy's decision: fields the policy strips
/// removed, framing and `Age` dropped (recomputed when served). Public for the
/// `policy_parsers` fuzz target, which stores what `policy::decide` lets through.
pub fn entry(
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
