//! May this response be stored, for how long, and may a stored one answer this request?
//! (RFC 9111, RFC 5861, RFC 9213; pure: `now` is a parameter.)
//!
//! Sits between the upstream's response head and the store: `proxy` hands the fetched head to
//! [`decide`] and stores only on [`Decision::Store`], which carries everything a later hit
//! needs (lifetime, initial age, revalidation rules, stale windows) so that a hit never
//! re-parses `Cache-Control`. [`usable`] is the per-request check of a stored entry against
//! the request's own directives. Anything this module is unsure of is not stored, because a
//! shared cache that stores too little is slow while one that stores too much leaks one user's
//! data to another.

use std::time::SystemTime;

use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::entry::{Entry, Flags};
use crate::config::CacheMode;

/// The largest delta-seconds value honoured (RFC 9111 §1.2.2: 2^31).
const DELTA_MAX: u64 = 1 << 31;

/// Status codes that are heuristically cacheable (RFC 9110 §15.1).
pub const HEURISTIC_STATUSES: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// Upstream statuses that count as an error for `stale-if-error` (RFC 5861 §4).
pub fn is_error_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// `CDN-Cache-Control` (RFC 9213): a targeted field for caches like Augur.
pub static CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// Parsed cache directives (request or response) that matter to a shared cache.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    /// Unqualified `no-cache`: every use needs a successful revalidation.
    pub no_cache: bool,
    /// `no-cache="a, b"`: the named fields must not be reused without revalidation; Augur
    /// strips them from the stored copy.
    pub no_cache_fields: Vec<HeaderName>,
    /// Unqualified `private`: a shared cache must not store the response.
    pub private: bool,
    /// `private="a, b"`: a shared cache must not store the named fields.
    pub private_fields: Vec<HeaderName>,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    // Request directives.
    /// `max-stale` without a value is [`DELTA_MAX`]: any staleness.
    pub max_stale: Option<u64>,
    pub min_fresh: Option<u64>,
    pub only_if_cached: bool,
}

impl CacheControl {
    /// Parse every `Cache-Control` field line of `headers`.
    pub fn parse(headers: &HeaderMap) -> CacheControl {
        CacheControl::parse_field(headers, &header::CACHE_CONTROL)
    }

    /// Parse every line of field `name`.
    ///
    /// Robust by construction: directive names are case-insensitive, whitespace is ignored,
    /// quoted values may contain commas, unknown directives are skipped, the first occurrence
    /// of a duplicated directive wins, and an invalid delta-seconds (§1.2.2) makes the response
    /// stale (`0`) rather than fresh forever. A field list that does not parse makes the
    /// directive unqualified (the stricter reading).
    pub fn parse_field(headers: &HeaderMap, name: &HeaderName) -> CacheControl {
        let mut cc = CacheControl::default();
        for value in headers.get_all(name) {
            let Ok(text) = value.to_str() else { continue };
            cc.add(text);
        }
        cc
    }

    fn add(&mut self, text: &str) {
        for directive in split_list(text) {
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (n.trim(), Some(unquote(a.trim()))),
                None => (directive.trim(), None),
            };
            let is = |d: &str| name.eq_ignore_ascii_case(d);
            let delta = |slot: &mut Option<u64>| *slot = slot.or(Some(delta_seconds(arg)));
            if is("no-store") {
                self.no_store = true;
            } else if is("no-cache") {
                match arg.map(field_names) {
                    Some(Some(fields)) => self.no_cache_fields.extend(fields),
                    _ => self.no_cache = true,
                }
            } else if is("private") {
                match arg.map(field_names) {
                    Some(Some(fields)) => self.private_fields.extend(fields),
                    _ => self.private = true,
                }
            } else if is("public") {
                self.public = true;
            } else if is("must-revalidate") {
                self.must_revalidate = true;
            } else if is("proxy-revalidate") {
                self.proxy_revalidate = true;
            } else if is("max-age") {
                delta(&mut self.max_age);
            } else if is("s-maxage") {
                delta(&mut self.s_maxage);
            } else if is("stale-while-revalidate") {
                delta(&mut self.stale_while_revalidate);
            } else if is("stale-if-error") {
                delta(&mut self.stale_if_error);
            } else if is("max-stale") {
                let v = match arg {
                    None => DELTA_MAX,
                    a => delta_seconds(a),
                };
                self.max_stale = self.max_stale.or(Some(v));
            } else if is("min-fresh") {
                delta(&mut self.min_fresh);
            } else if is("only-if-cached") {
                self.only_if_cached = true;
            }
        }
    }

    fn is_empty(&self) -> bool {
        self == &CacheControl::default()
    }
}

/// The directives that govern a response in a shared cache: the first targeted field present
/// (Augur's own, then `CDN-Cache-Control`, RFC 9213 §2.1) instead of `Cache-Control`. The
/// bool says a targeted field was used (then `Expires` is ignored too).
pub fn response_directives(headers: &HeaderMap, targeted: &[HeaderName]) -> (CacheControl, bool) {
    for name in targeted {
        if headers.contains_key(name) {
            let cc = CacheControl::parse_field(headers, name);
            if !cc.is_empty() {
                return (cc, true);
            }
        }
    }
    (CacheControl::parse(headers), false)
}

/// The request's directives; `Pragma: no-cache` counts as `no-cache` when the request has no
/// `Cache-Control` (RFC 9111 §5.4). Two map lookups when the request has neither.
pub fn request_directives(headers: &HeaderMap) -> CacheControl {
    if headers.contains_key(header::CACHE_CONTROL) {
        return CacheControl::parse(headers);
    }
    let mut cc = CacheControl::default();
    if let Some(p) = headers.get(header::PRAGMA) {
        if let Ok(text) = p.to_str() {
            cc.no_cache = split_list(text).any(|d| d.eq_ignore_ascii_case("no-cache"));
        }
    }
    cc
}

/// A quoted field-name list (`"set-cookie, x-a"`); `None` when any name is invalid or the list
/// is empty.
fn field_names(arg: &str) -> Option<Vec<HeaderName>> {
    let names: Option<Vec<HeaderName>> = split_list(arg)
        .map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    names.filter(|n| !n.is_empty())
}

/// Split a comma-separated field value, honouring quoted strings.
pub fn split_list(text: &str) -> impl Iterator<Item = &str> {
    let mut pieces = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                pieces.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&text[start..]);
    pieces.into_iter().map(str::trim).filter(|p| !p.is_empty())
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

/// delta-seconds (§1.2.2): digits only; larger than 2^31 is 2^31; anything invalid is 0.
fn delta_seconds(arg: Option<&str>) -> u64 {
    match arg {
        Some(a) if !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) => {
            a.parse::<u64>().map_or(DELTA_MAX, |v| v.min(DELTA_MAX))
        }
        _ => 0,
    }
}

/// An HTTP date as unix milliseconds; `None` when absent or invalid.
pub fn http_date_ms(value: Option<&HeaderValue>) -> Option<u64> {
    let text = value?.to_str().ok()?;
    let t = httpdate::parse_http_date(text.trim()).ok()?;
    let d = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    u64::try_from(d.as_millis()).ok()
}

/// What the store should do with a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Store(Stored),
    /// Do not store, and why.
    DontStore(NoStore),
}

/// Why a response is not stored. Typed, not a string: whether the reason leaves a
/// hit-for-pass mark ([`NoStore::leaves_pass_mark`]) decides whether later requests for the
/// key are coalesced, and that rule lives here, next to the reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoStore {
    /// Not a final, complete response (1xx, 206, 304, out of range).
    Status,
    /// The request said `no-store`.
    RequestNoStore,
    /// The response said `no-store`.
    NoStore,
    /// The response said `private`.
    Private,
    /// An answer to a request with credentials (`Authorization`, §3.5, or a configured
    /// credential header such as `Cookie`) that does not say explicitly, with its own
    /// freshness, that it may be shared.
    Credentials,
    /// `Set-Cookie`, on a route that does not opt in to storing it (cookie stripped).
    SetCookie,
    /// `Vary: *`: no later request can match it (§4.1).
    VaryStar,
    /// A content coding Augur does not store (it stores identity and compresses itself).
    ContentEncoding,
    /// A status that is not heuristically cacheable, without explicit freshness.
    StatusWithoutFreshness,
    /// No explicit freshness, no route TTL, no usable heuristic.
    NoFreshness,
    /// Stale on arrival (lifetime zero or `no-cache`) with nothing to revalidate with.
    StaleWithoutValidator,
}

impl NoStore {
    /// For logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            NoStore::Status => "status",
            NoStore::RequestNoStore => "request no-store",
            NoStore::NoStore => "no-store",
            NoStore::Private => "private",
            NoStore::Credentials => "credentials",
            NoStore::SetCookie => "set-cookie",
            NoStore::VaryStar => "vary",
            NoStore::ContentEncoding => "content-encoding",
            NoStore::StatusWithoutFreshness => "status without freshness",
            NoStore::NoFreshness => "no freshness information",
            NoStore::StaleWithoutValidator => "stale on arrival, no validator",
        }
    }

    /// Does the reason say something about the resource, so that the next requests for it
    /// will not be storable either (a hit-for-pass mark: skip coalescing for a while)? Not for
    /// a transient status, nor for what only this request said (its own `no-store`, its
    /// credentials).
    pub fn leaves_pass_mark(self) -> bool {
        !matches!(
            self,
            NoStore::Status
                | NoStore::StatusWithoutFreshness
                | NoStore::RequestNoStore
                | NoStore::Credentials
        )
    }
}

/// Everything a stored entry needs from the decision, computed once at store time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Fresh for this long from an age of `initial_age_ms` at the response time.
    pub lifetime_ms: u64,
    pub initial_age_ms: u64,
    pub flags: Flags,
    /// May be served stale while a background refresh runs, this long past the lifetime.
    pub stale_while_revalidate_ms: u64,
    /// May be served stale when the upstream fails, this long past the lifetime.
    pub stale_if_error_ms: u64,
    /// Fields not to store (`private="…"`, `no-cache="…"`, `Set-Cookie`).
    pub strip: Vec<HeaderName>,
}

/// Everything the decision depends on.
#[derive(Debug)]
pub struct Input<'a> {
    pub req_headers: &'a HeaderMap,
    /// The request carries credentials outside its key (`Authorization`, or a configured
    /// credential header; `Authorization` in `req_headers` counts whatever this says).
    pub credentials: bool,
    pub status: StatusCode,
    pub resp_headers: &'a HeaderMap,
    /// The route's TTL (zero = none).
    pub route_ttl_ms: u64,
    pub mode: CacheMode,
    /// Upper bound of heuristic freshness (zero = never heuristic).
    pub heuristic_max_ms: u64,
    /// Route grace: the stale window when the origin grants none.
    pub grace_ms: u64,
    /// The route opted in to storing responses with `Set-Cookie` (cookie stripped).
    pub cache_set_cookie: bool,
    /// Targeted cache-control fields, in precedence order.
    pub targeted: &'a [HeaderName],
    /// When the request went upstream (unix ms).
    pub request_time: u64,
    /// When the response head arrived (unix ms).
    pub response_time: u64,
}

/// Decide storability and freshness (RFC 9111 §3, §4.2.1, §4.2.2, §4.2.3, §5.2.2; RFC 5861;
/// RFC 9213).
pub fn decide(i: &Input<'_>) -> Decision {
    let status = i.status.as_u16();
    // Final, understood, and a complete representation (206 needs range merging Augur does
    // not do; 304 only ever freshens, see `proxy`).
    if !(200..600).contains(&status) || status == 206 || status == 304 {
        return Decision::DontStore(NoStore::Status);
    }
    if request_directives(i.req_headers).no_store {
        return Decision::DontStore(NoStore::RequestNoStore);
    }
    let (cc, targeted) = response_directives(i.resp_headers, i.targeted);
    if let Some(reason) = refused(i, &cc) {
        return Decision::DontStore(reason);
    }
    let date = http_date_ms(i.resp_headers.get(header::DATE));
    let has_validator = i.resp_headers.contains_key(header::ETAG)
        || i.resp_headers.contains_key(header::LAST_MODIFIED);
    let explicit = explicit_ms(i, &cc, targeted, date);
    let lifetime_ms = match lifetime_ms(i, &cc, explicit, date, has_validator) {
        Ok(l) => l,
        Err(reason) => return Decision::DontStore(reason),
    };
    if (lifetime_ms == 0 || cc.no_cache) && !has_validator {
        // Would need revalidation on every use, and there is nothing to revalidate with.
        return Decision::DontStore(NoStore::StaleWithoutValidator);
    }
    // Whether a credentialed request may be answered with it: the origin said it may be
    // shared (§3.5), and for how long; a lifetime Augur made up (route TTL, heuristic) or
    // stretched (`floor`, `override`) is no such statement.
    let auth_ok = shareable_with_auth(&cc)
        && match explicit {
            Some(e) => lifetime_ms <= e,
            None => lifetime_ms == 0,
        };
    Decision::Store(stored(i, cc, date, lifetime_ms, auth_ok))
}

/// Does the request carry credentials (§3.5, and the configured credential headers)?
fn credentialed(i: &Input<'_>) -> bool {
    i.credentials || i.req_headers.contains_key(header::AUTHORIZATION)
}

/// What the response itself (and the credentials of the request) forbid storing, whatever
/// its freshness.
fn refused(i: &Input<'_>, cc: &CacheControl) -> Option<NoStore> {
    if cc.no_store {
        return Some(NoStore::NoStore);
    }
    if cc.private {
        return Some(NoStore::Private);
    }
    // §3.5: a shared cache stores an answer to an authenticated request only when the
    // response says it may be shared; Augur reads a cookie or an API key the same way.
    if credentialed(i) && !shareable_with_auth(cc) {
        return Some(NoStore::Credentials);
    }
    if i.resp_headers.contains_key(header::SET_COOKIE) && !i.cache_set_cookie {
        return Some(NoStore::SetCookie);
    }
    // §4.1: `Vary: *` can never be matched by a later request; other `Vary` responses are
    // stored as one variant among several (`vary_names`, `Cache::store`).
    if vary_names(i.resp_headers).is_none() {
        return Some(NoStore::VaryStar);
    }
    if let Some(ce) = i.resp_headers.get(header::CONTENT_ENCODING) {
        if !ce.as_bytes().eq_ignore_ascii_case(b"identity") {
            return Some(NoStore::ContentEncoding);
        }
    }
    None
}

/// §3.5: the response says a shared cache may answer authenticated requests with it.
fn shareable_with_auth(cc: &CacheControl) -> bool {
    cc.public || cc.s_maxage.is_some() || cc.must_revalidate
}

/// The origin's explicit freshness lifetime (`s-maxage`, `max-age`, `Expires`), if it gave one.
fn explicit_ms(i: &Input<'_>, cc: &CacheControl, targeted: bool, date: Option<u64>) -> Option<u64> {
    let date_invalid = i.resp_headers.contains_key(header::DATE) && date.is_none();
    if let Some(s) = cc.s_maxage {
        Some(s * 1000)
    } else if let Some(m) = cc.max_age {
        Some(m * 1000)
    } else if let (false, Some(expires)) = (targeted, i.resp_headers.get(header::EXPIRES)) {
        // An invalid Expires or Date means "already expired" (§5.3).
        Some(match (http_date_ms(Some(expires)), date_invalid) {
            (Some(e), false) => e.saturating_sub(date.unwrap_or(i.response_time)),
            _ => 0,
        })
    } else {
        None
    }
}

/// The freshness lifetime (§4.2.1): explicit, else the route TTL, else heuristic (§4.2.2);
/// then the route's mode applied to it. For a request with credentials only the origin's
/// explicit lifetime counts (a `cap` may still shorten it): a route TTL or a heuristic is
/// Augur's guess about a resource, not the origin's word that one user's answer may be kept
/// for everyone.
fn lifetime_ms(
    i: &Input<'_>,
    cc: &CacheControl,
    explicit: Option<u64>,
    date: Option<u64>,
    has_validator: bool,
) -> Result<u64, NoStore> {
    let credentialed = credentialed(i);
    let heuristic_ok = HEURISTIC_STATUSES.contains(&i.status.as_u16()) || cc.public;
    let base = match explicit {
        Some(l) => l,
        None if !heuristic_ok => return Err(NoStore::StatusWithoutFreshness),
        // Revalidated on every use: each use asks the origin with the client's credentials.
        None if credentialed && cc.no_cache && has_validator => 0,
        None if credentialed => return Err(NoStore::Credentials),
        None if i.route_ttl_ms > 0 => i.route_ttl_ms,
        None => match heuristic_ms(i, date) {
            Some(l) => l,
            // Revalidated on every use anyway: the validator is what makes storing it worth it.
            None if cc.no_cache && has_validator => 0,
            None => return Err(NoStore::NoFreshness),
        },
    };
    let t = i.route_ttl_ms;
    Ok(match i.mode {
        _ if t == 0 => base,
        CacheMode::Cap => base.min(t),
        _ if credentialed => base,
        CacheMode::Respect => base,
        CacheMode::Override => t,
        CacheMode::Floor => base.max(t),
    })
}

/// The stored entry's flags, stale windows and fields to strip, for a response `decide`
/// stores with `lifetime_ms`; `auth_ok`: it may answer requests with credentials.
fn stored(
    i: &Input<'_>,
    cc: CacheControl,
    date: Option<u64>,
    lifetime_ms: u64,
    auth_ok: bool,
) -> Stored {
    let mut flags = Flags::default();
    // s-maxage carries proxy-revalidate's meaning for a shared cache (§5.2.2.10).
    let revalidate = cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some();
    flags.set(Flags::MUST_REVALIDATE, revalidate);
    flags.set(Flags::NO_CACHE, cc.no_cache);
    flags.set(Flags::AUTH_OK, auth_ok);
    // Stale use: never against must-revalidate / proxy-revalidate / no-cache; an explicit
    // RFC 5861 grant is honoured with s-maxage; the route grace fills in only when the origin
    // said nothing either way, and never for an answer to a request with credentials (only
    // the origin's word keeps that one).
    let forbid = cc.must_revalidate || cc.proxy_revalidate || cc.no_cache;
    let grace_ms = if credentialed(i) { 0 } else { i.grace_ms };
    let grant = |explicit: Option<u64>| match explicit {
        _ if forbid => 0,
        Some(s) => s * 1000,
        None if cc.s_maxage.is_some() => 0,
        None => grace_ms,
    };
    let stale_while_revalidate_ms = grant(cc.stale_while_revalidate);
    let stale_if_error_ms = grant(cc.stale_if_error);
    let mut strip = cc.private_fields;
    strip.extend(cc.no_cache_fields);
    if i.resp_headers.contains_key(header::SET_COOKIE) {
        strip.push(header::SET_COOKIE);
    }
    Stored {
        lifetime_ms,
        initial_age_ms: initial_age_ms(i.resp_headers, date, i.request_time, i.response_time),
        flags,
        stale_while_revalidate_ms,
        stale_if_error_ms,
        strip,
    }
}

/// Heuristic freshness (§4.2.2): 10% of the time since `Last-Modified`, at most the configured
/// maximum; `None` without a usable `Last-Modified`.
fn heuristic_ms(i: &Input<'_>, date: Option<u64>) -> Option<u64> {
    if i.heuristic_max_ms == 0 {
        return None;
    }
    let lm = http_date_ms(i.resp_headers.get(header::LAST_MODIFIED))?;
    let since = date.unwrap_or(i.response_time).checked_sub(lm)?;
    Some((since / 10).min(i.heuristic_max_ms)).filter(|&l| l > 0)
}

/// Corrected initial age (§4.2.3), so a response that already spent time in another cache
/// upstream is not treated as brand new.
pub fn initial_age_ms(
    resp_headers: &HeaderMap,
    date_ms: Option<u64>,
    request_time: u64,
    response_time: u64,
) -> u64 {
    let age_value = resp_headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .map(|s| delta_seconds(Some(s.trim())) * 1000)
        .unwrap_or(0);
    let apparent_age = date_ms.map_or(0, |d| response_time.saturating_sub(d));
    let response_delay = response_time.saturating_sub(request_time);
    apparent_age.max(age_value + response_delay)
}

/// The request header fields that select among a response's variants (RFC 9111 §4.1): the
/// field names its `Vary` lists, lower case, sorted, without duplicates, and without
/// `Accept-Encoding` (Augur fetches and stores the identity representation and negotiates the
/// coding itself). `None` when they can never match: `Vary: *`, or a name that is not a valid
/// field name. An empty list: the response does not vary (beyond the coding).
pub fn vary_names(resp_headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names: Vec<HeaderName> = Vec::new();
    for value in resp_headers.get_all(header::VARY) {
        let text = value.to_str().ok()?;
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            // `HeaderName` parsing lower-cases, so any spelling gives the same name.
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            if name != header::ACCEPT_ENCODING {
                names.push(name);
            }
        }
    }
    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// How a stored entry may answer one request (§4, §4.2.4; RFC 5861).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Fresh enough for the request: serve it.
    Fresh,
    /// Stale, and the request accepts that (`max-stale`): serve it as is.
    Stale,
    /// Stale within `stale-while-revalidate` (or grace): serve it and refresh in the background.
    StaleWhileRevalidate,
    /// Must go upstream first (conditionally when the entry has validators).
    Revalidate,
    /// Must not be used for this request at all (§3.5: it carries credentials).
    Unusable,
}

/// Decide how `entry` may answer a request with directives `req` at `now`; `credentials`: the
/// request carries credentials outside its key, so only an entry the origin marked shareable
/// with its own freshness may answer it (§3.5).
pub fn usable(entry: &Entry, req: &CacheControl, credentials: bool, now: u64) -> Use {
    if credentials && !entry.flags.contains(Flags::AUTH_OK) {
        return Use::Unusable;
    }
    if req.no_cache || entry.flags.contains(Flags::NO_CACHE) {
        return Use::Revalidate;
    }
    let age = entry.age_ms(now);
    if req.max_age.is_some_and(|m| age > m.saturating_mul(1000)) {
        return Use::Revalidate;
    }
    let needed = age.saturating_add(req.min_fresh.unwrap_or(0).saturating_mul(1000));
    if needed < entry.lifetime {
        return Use::Fresh;
    }
    if req.min_fresh.is_some() {
        // The client asked for freshness to spare; nothing stale will do.
        return Use::Revalidate;
    }
    let staleness = age.saturating_sub(entry.lifetime);
    let strict = entry.flags.contains(Flags::MUST_REVALIDATE);
    if !strict
        && req
            .max_stale
            .is_some_and(|s| staleness <= s.saturating_mul(1000))
    {
        return Use::Stale;
    }
    if staleness < entry.stale_while_revalidate {
        return Use::StaleWhileRevalidate;
    }
    Use::Revalidate
}

/// May `entry` stand in for a failed upstream at `now` (`stale-if-error` or route grace)?
pub fn stale_if_error_ok(entry: &Entry, now: u64) -> bool {
    entry.age_ms(now) < entry.lifetime.saturating_add(entry.stale_if_error)
}

/// Weak comparison of a stored `ETag` with an `If-None-Match` value (RFC 9110 §8.8.3.2,
/// §13.1.2): `*` matches any stored representation.
pub fn if_none_match(etag: Option<&HeaderValue>, if_none_match: &HeaderValue) -> bool {
    let Ok(list) = if_none_match.to_str() else {
        return false;
    };
    let weak = |t: &str| {
        let t = t.trim();
        t.strip_prefix("W/").unwrap_or(t).to_owned()
    };
    let stored = match etag.and_then(|e| e.to_str().ok()) {
        Some(e) => weak(e),
        None => return list.trim() == "*",
    };
    split_list(list).any(|t| t == "*" || (t.ends_with('"') && weak(t) == stored))
}

/// `If-Modified-Since` (RFC 9110 §13.1.3): not modified when the stored `Last-Modified` is no
/// later than the date given. Without a stored `Last-Modified` it never matches.
pub fn not_modified_since(last_modified: Option<&HeaderValue>, since: &HeaderValue) -> bool {
    match (http_date_ms(last_modified), http_date_ms(Some(since))) {
        (Some(lm), Some(s)) => lm <= s,
        _ => false,
    }
}

/// Fields a 304 must not change in the stored response (§3.2): framing and coding describe the
/// stored body, and a cookie is never stored.
pub fn freshen_excluded(name: &HeaderName) -> bool {
    matches!(
        *name,
        header::CONTENT_LENGTH
            | header::CONTENT_ENCODING
            | header::CONTENT_TYPE
            | header::CONTENT_RANGE
            | header::TRANSFER_ENCODING
            | header::SET_COOKIE
            | header::AGE
    )
}

/// The stored headers updated with a 304's (§3.2, §4.3.4): each field the 304 carries replaces
/// the stored lines of that name, except [`freshen_excluded`] ones.
pub fn freshen(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut merged = stored.clone();
    for name in not_modified.keys() {
        if freshen_excluded(name) {
            continue;
        }
        merged.remove(name);
        for v in not_modified.get_all(name) {
            merged.append(name.clone(), v.clone());
        }
    }
    merged
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::cache::entry::StoredBody;
    use bytes::Bytes;
    use proptest::prelude::*;

    const NOW: u64 = 1_000_000_000;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    struct Case {
        req: HeaderMap,
        status: u16,
        resp: HeaderMap,
        ttl: u64,
        mode: CacheMode,
        set_cookie: bool,
        grace: u64,
        credentials: bool,
    }

    fn case(req: &[(&str, &str)], status: u16, resp: &[(&str, &str)]) -> Case {
        Case {
            req: headers(req),
            status,
            resp: headers(resp),
            ttl: 0,
            mode: CacheMode::Respect,
            set_cookie: false,
            grace: 0,
            credentials: false,
        }
    }

    impl Case {
        /// The request carries a configured credential header (a cookie, an API key).
        fn credentialed(mut self) -> Case {
            self.credentials = true;
            self
        }
        fn ttl(mut self, ttl: u64, mode: CacheMode) -> Case {
            self.ttl = ttl;
            self.mode = mode;
            self
        }
        fn decide(&self) -> Decision {
            let targeted = [
                HeaderName::from_static("augur-cache-control"),
                CDN_CACHE_CONTROL.clone(),
            ];
            decide(&Input {
                req_headers: &self.req,
                credentials: self.credentials,
                status: StatusCode::from_u16(self.status).unwrap(),
                resp_headers: &self.resp,
                route_ttl_ms: self.ttl,
                mode: self.mode,
                heuristic_max_ms: 24 * 3_600_000,
                grace_ms: self.grace,
                cache_set_cookie: self.set_cookie,
                targeted: &targeted,
                request_time: NOW,
                response_time: NOW,
            })
        }
        fn stored(&self) -> Stored {
            match self.decide() {
                Decision::Store(s) => s,
                Decision::DontStore(r) => panic!("not stored: {}", r.as_str()),
            }
        }
        fn lifetime(&self) -> u64 {
            self.stored().lifetime_ms
        }
        fn refused(&self) -> bool {
            matches!(self.decide(), Decision::DontStore(_))
        }
    }

    fn entry_from(s: &Stored) -> Entry {
        Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: StoredBody::Raw(Bytes::new()),
            request_time: NOW,
            response_time: NOW,
            initial_age: s.initial_age_ms,
            lifetime: s.lifetime_ms,
            flags: s.flags,
            stale_while_revalidate: s.stale_while_revalidate_ms,
            stale_if_error: s.stale_if_error_ms,
        }
    }

    fn req_cc(v: &str) -> CacheControl {
        request_directives(&headers(&[("cache-control", v)]))
    }

    #[test]
    fn parses_robustly() {
        let cc = CacheControl::parse(&headers(&[
            ("cache-control", " Max-Age = 60 , PUBLIC,foo=\"a,b\""),
            ("cache-control", "max-age=5, s-maxage=\"30\""),
        ]));
        assert_eq!(cc.max_age, Some(60), "first occurrence wins");
        assert_eq!(cc.s_maxage, Some(30), "quoted value accepted");
        assert!(cc.public);
        let bad = CacheControl::parse(&headers(&[("cache-control", "max-age=abc")]));
        assert_eq!(bad.max_age, Some(0), "invalid delta-seconds is stale");
        let neg = CacheControl::parse(&headers(&[("cache-control", "max-age=-5")]));
        assert_eq!(neg.max_age, Some(0), "negative is invalid, so stale");
        let big = CacheControl::parse(&headers(&[(
            "cache-control",
            "max-age=99999999999999999999",
        )]));
        assert_eq!(big.max_age, Some(DELTA_MAX));
        let quoted = CacheControl::parse(&headers(&[("cache-control", "private=\"a, no-store\"")]));
        assert!(!quoted.no_store, "commas inside quotes do not split");
        assert!(
            !quoted.private,
            "a field list that does not parse stays qualified-or-strict"
        );
        let fields = CacheControl::parse(&headers(&[(
            "cache-control",
            "private=\"Set-Cookie, X-A\"",
        )]));
        assert!(!fields.private);
        assert_eq!(
            fields.private_fields,
            vec![header::SET_COOKIE, HeaderName::from_static("x-a")]
        );
        let bad_list = CacheControl::parse(&headers(&[("cache-control", "no-cache=\"bad name\"")]));
        assert!(
            bad_list.no_cache,
            "an unparsable field list is the unqualified (stricter) form"
        );
        let req = req_cc("max-stale, min-fresh=5, only-if-cached");
        assert_eq!(req.max_stale, Some(DELTA_MAX));
        assert_eq!(req.min_fresh, Some(5));
        assert!(req.only_if_cached);
    }

    #[test]
    fn pragma_no_cache_only_without_cache_control() {
        assert!(request_directives(&headers(&[("pragma", "no-cache")])).no_cache);
        assert!(
            !request_directives(&headers(&[
                ("pragma", "no-cache"),
                ("cache-control", "max-age=5")
            ]))
            .no_cache
        );
    }

    #[test]
    fn lifetime_precedence_s_maxage_max_age_expires() {
        assert_eq!(
            case(&[], 200, &[("cache-control", "max-age=10, s-maxage=20")]).lifetime(),
            20_000
        );
        assert_eq!(
            case(&[], 200, &[("cache-control", "max-age=10")])
                .ttl(99_000, CacheMode::Respect)
                .lifetime(),
            10_000
        );
        assert_eq!(
            case(&[], 200, &[])
                .ttl(5_000, CacheMode::Respect)
                .lifetime(),
            5_000
        );
        let exp = case(
            &[],
            200,
            &[
                ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("expires", "Sun, 06 Nov 1994 08:50:37 GMT"),
            ],
        );
        assert_eq!(exp.lifetime(), 60_000);
        let both = case(
            &[],
            200,
            &[
                ("cache-control", "max-age=5"),
                ("expires", "Sun, 06 Nov 2094 08:50:37 GMT"),
            ],
        );
        assert_eq!(both.lifetime(), 5_000, "max-age beats Expires");
    }

    #[test]
    fn invalid_expires_or_date_is_already_expired() {
        assert!(
            case(&[], 200, &[("expires", "not a date")]).refused(),
            "expired, no validator"
        );
        let with_etag = case(&[], 200, &[("expires", "0"), ("etag", "\"v1\"")]);
        assert_eq!(with_etag.lifetime(), 0, "stored stale, to be revalidated");
        let bad_date = case(
            &[],
            200,
            &[
                ("date", "yesterday"),
                ("expires", "Sun, 06 Nov 2094 08:50:37 GMT"),
                ("etag", "\"v\""),
            ],
        );
        assert_eq!(bad_date.lifetime(), 0);
    }

    #[test]
    fn heuristic_freshness_is_ten_percent_capped_and_only_for_listed_statuses() {
        let lm = |s: u16| {
            case(
                &[],
                s,
                &[
                    ("date", "Sun, 06 Nov 1994 10:00:00 GMT"),
                    ("last-modified", "Sun, 06 Nov 1994 00:00:00 GMT"),
                ],
            )
        };
        assert_eq!(lm(200).lifetime(), 3_600_000, "10% of 10h");
        for s in HEURISTIC_STATUSES {
            assert!(!lm(s).refused(), "{s} is heuristically cacheable");
        }
        for s in [201, 202, 302, 307, 403, 500, 503] {
            assert!(lm(s).refused(), "{s} needs explicit freshness");
        }
        assert!(
            !case(&[], 500, &[("cache-control", "max-age=5")]).refused(),
            "explicit freshness stores any final status"
        );
        let old = case(
            &[],
            200,
            &[
                ("date", "Sun, 06 Nov 1994 10:00:00 GMT"),
                ("last-modified", "Tue, 06 Nov 1984 00:00:00 GMT"),
            ],
        );
        assert_eq!(old.lifetime(), 24 * 3_600_000, "capped");
        assert!(case(&[], 200, &[("last-modified", "garbage")]).refused());
        assert!(case(&[], 200, &[]).refused(), "no freshness information");
        assert!(
            !case(&[], 404, &[]).ttl(1_000, CacheMode::Respect).refused(),
            "route ttl applies to heuristic statuses"
        );
        assert!(
            case(&[], 503, &[]).ttl(1_000, CacheMode::Respect).refused(),
            "but not to errors"
        );
    }

    #[test]
    fn partial_informational_and_not_modified_are_not_stored() {
        for s in [100, 206, 304] {
            assert!(
                case(&[], s, &[("cache-control", "max-age=60")]).refused(),
                "{s}"
            );
        }
    }

    #[test]
    fn refuses_what_a_shared_cache_must_not_store() {
        let cc = |v: &str| case(&[], 200, &[("cache-control", v)]);
        assert!(cc("no-store, max-age=60").refused());
        assert!(cc("private, max-age=60").refused());
        assert!(
            cc("PRIVATE").ttl(5_000, CacheMode::Override).refused(),
            "override never stores private"
        );
        assert!(case(
            &[("cache-control", "no-store")],
            200,
            &[("cache-control", "max-age=60")]
        )
        .refused());
        assert!(case(&[], 200, &[("cache-control", "max-age=60"), ("vary", "*")]).refused());
        assert!(case(
            &[],
            200,
            &[("cache-control", "max-age=60"), ("vary", "a, *")]
        )
        .refused());
        assert!(
            !case(
                &[],
                200,
                &[("cache-control", "max-age=60"), ("vary", "cookie")]
            )
            .refused(),
            "stored as a variant"
        );
        assert!(!case(
            &[],
            200,
            &[("cache-control", "max-age=60"), ("vary", "Accept-Encoding")]
        )
        .refused());
        assert!(case(
            &[],
            200,
            &[
                ("cache-control", "max-age=60"),
                ("content-encoding", "gzip")
            ]
        )
        .refused());
    }

    #[test]
    fn credentials_need_explicit_sharing_and_explicit_freshness() {
        let refused = |c: Case| c.decide() == Decision::DontStore(NoStore::Credentials);
        let lm = ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT");
        // What an anonymous request stores, a credentialed one does not.
        for resp in [&[][..], &[("cache-control", "max-age=60")], &[lm]] {
            assert!(!case(&[], 200, resp)
                .ttl(30_000, CacheMode::Respect)
                .refused());
            let c = case(&[], 200, resp).ttl(30_000, CacheMode::Respect);
            assert!(refused(c.credentialed()), "{resp:?}");
        }
        // Shareable, but no lifetime of the origin's own: no route TTL, no heuristic.
        for resp in [
            &[("cache-control", "public")][..],
            &[("cache-control", "public"), lm],
        ] {
            let c = case(&[], 200, resp).ttl(30_000, CacheMode::Respect);
            assert!(refused(c.credentialed()), "{resp:?}");
        }
        // The origin's own word: stored, the route TTL neither stretches it nor replaces it.
        for mode in [CacheMode::Respect, CacheMode::Override, CacheMode::Floor] {
            let c = case(&[], 200, &[("cache-control", "public, max-age=10")]).ttl(30_000, mode);
            let s = c.credentialed().stored();
            assert_eq!(s.lifetime_ms, 10_000, "{mode:?}");
            assert!(s.flags.contains(Flags::AUTH_OK));
        }
        let cap = case(&[], 200, &[("cache-control", "public, max-age=60")])
            .ttl(30_000, CacheMode::Cap)
            .credentialed();
        assert_eq!(cap.lifetime(), 30_000, "a cap only shortens");
        // No grace for it either.
        let mut graced = case(&[], 200, &[("cache-control", "public, max-age=10")]).credentialed();
        graced.grace = 60_000;
        assert_eq!(graced.stored().stale_while_revalidate_ms, 0);
        assert_eq!(graced.stored().stale_if_error_ms, 0);
        // Refused for its credentials only: later anonymous requests still coalesce.
        assert!(!NoStore::Credentials.leaves_pass_mark());
    }

    #[test]
    fn only_the_origins_own_lifetime_makes_an_entry_answer_credentialed_requests() {
        let auth_ok = |c: Case| c.stored().flags.contains(Flags::AUTH_OK);
        let public = [("cache-control", "public")];
        let public_60 = [("cache-control", "public, max-age=60")];
        assert!(!auth_ok(
            case(&[], 200, &public).ttl(30_000, CacheMode::Respect)
        ));
        assert!(auth_ok(
            case(&[], 200, &public_60).ttl(30_000, CacheMode::Respect)
        ));
        assert!(!auth_ok(
            case(&[], 200, &public_60).ttl(90_000, CacheMode::Floor)
        ));
        assert!(!auth_ok(
            case(&[], 200, &public_60).ttl(90_000, CacheMode::Override)
        ));
        assert!(auth_ok(
            case(&[], 200, &public_60).ttl(30_000, CacheMode::Cap)
        ));
    }

    #[test]
    fn authorization_needs_public_s_maxage_or_must_revalidate() {
        let auth = [("authorization", "Bearer x")];
        assert!(case(&auth, 200, &[("cache-control", "max-age=60")]).refused());
        for ok in [
            "public, max-age=60",
            "s-maxage=60",
            "must-revalidate, max-age=60",
        ] {
            let s = case(&auth, 200, &[("cache-control", ok)]).stored();
            assert!(s.flags.contains(Flags::AUTH_OK), "{ok}");
        }
        let plain = case(&[], 200, &[("cache-control", "max-age=60")]).stored();
        assert!(!plain.flags.contains(Flags::AUTH_OK));
        let e = entry_from(&plain);
        assert_eq!(
            usable(&e, &CacheControl::default(), true, NOW),
            Use::Unusable,
            "not reused for an authorized request"
        );
        assert_eq!(usable(&e, &CacheControl::default(), false, NOW), Use::Fresh);
    }

    #[test]
    fn set_cookie_only_with_opt_in_and_then_stripped() {
        let c = case(
            &[],
            200,
            &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
        );
        assert!(c.refused());
        let mut c = c;
        c.set_cookie = true;
        assert_eq!(c.stored().strip, vec![header::SET_COOKIE]);
    }

    #[test]
    fn qualified_private_and_no_cache_strip_fields() {
        let s = case(
            &[],
            200,
            &[(
                "cache-control",
                "max-age=60, private=\"x-user\", no-cache=\"x-token\"",
            )],
        )
        .stored();
        assert_eq!(
            s.strip,
            vec![
                HeaderName::from_static("x-user"),
                HeaderName::from_static("x-token")
            ]
        );
        assert!(!s.flags.contains(Flags::NO_CACHE));
    }

    #[test]
    fn unqualified_no_cache_stores_but_always_revalidates() {
        assert!(
            case(&[], 200, &[("cache-control", "no-cache, max-age=60")]).refused(),
            "no validator"
        );
        let s = case(
            &[],
            200,
            &[("cache-control", "no-cache, max-age=60"), ("etag", "\"a\"")],
        )
        .stored();
        assert!(s.flags.contains(Flags::NO_CACHE));
        assert_eq!(s.stale_while_revalidate_ms, 0);
        let e = entry_from(&s);
        assert_eq!(
            usable(&e, &CacheControl::default(), false, NOW),
            Use::Revalidate
        );
    }

    #[test]
    fn route_modes() {
        let origin = |mode, ttl| {
            case(&[], 200, &[("cache-control", "max-age=60")])
                .ttl(ttl, mode)
                .lifetime()
        };
        assert_eq!(origin(CacheMode::Respect, 10_000), 60_000);
        assert_eq!(origin(CacheMode::Override, 10_000), 10_000);
        assert_eq!(origin(CacheMode::Floor, 90_000), 90_000);
        assert_eq!(origin(CacheMode::Floor, 10_000), 60_000);
        assert_eq!(origin(CacheMode::Cap, 10_000), 10_000);
        assert_eq!(origin(CacheMode::Cap, 90_000), 60_000);
        let silent = |mode| case(&[], 200, &[]).ttl(10_000, mode).lifetime();
        for m in [
            CacheMode::Respect,
            CacheMode::Override,
            CacheMode::Floor,
            CacheMode::Cap,
        ] {
            assert_eq!(silent(m), 10_000);
        }
        let zero = case(&[], 200, &[("cache-control", "max-age=0")]).ttl(10_000, CacheMode::Floor);
        assert_eq!(zero.lifetime(), 10_000);
    }

    #[test]
    fn targeted_fields_take_precedence() {
        let c = case(
            &[],
            200,
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=30"),
            ],
        );
        assert_eq!(c.lifetime(), 30_000);
        let c = case(
            &[],
            200,
            &[
                ("cache-control", "max-age=5"),
                ("cdn-cache-control", "max-age=30"),
                ("augur-cache-control", "max-age=90"),
            ],
        );
        assert_eq!(c.lifetime(), 90_000);
        assert!(case(
            &[],
            200,
            &[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "no-store")
            ]
        )
        .refused());
        let exp = case(
            &[],
            200,
            &[
                ("cdn-cache-control", "public"),
                ("expires", "Sun, 06 Nov 2094 08:50:37 GMT"),
            ],
        );
        assert!(
            exp.refused(),
            "Expires is ignored when a targeted field governs"
        );
        let empty = case(
            &[],
            200,
            &[("cache-control", "max-age=7"), ("cdn-cache-control", "")],
        );
        assert_eq!(
            empty.lifetime(),
            7_000,
            "an empty targeted field is ignored"
        );
    }

    #[test]
    fn stale_windows_and_what_forbids_them() {
        let s = |v: &str, grace: u64| {
            let mut c = case(&[], 200, &[("cache-control", v), ("etag", "\"e\"")]);
            c.grace = grace;
            let s = c.stored();
            (s.stale_while_revalidate_ms, s.stale_if_error_ms)
        };
        assert_eq!(
            s("max-age=1, stale-while-revalidate=30, stale-if-error=60", 0),
            (30_000, 60_000)
        );
        assert_eq!(s("max-age=1", 5_000), (5_000, 5_000), "grace fills in");
        assert_eq!(
            s("max-age=1, stale-while-revalidate=3", 5_000),
            (3_000, 5_000)
        );
        assert_eq!(
            s(
                "max-age=1, must-revalidate, stale-while-revalidate=30",
                5_000
            ),
            (0, 0)
        );
        assert_eq!(
            s("max-age=1, proxy-revalidate, stale-if-error=30", 5_000),
            (0, 0)
        );
        assert_eq!(
            s("s-maxage=1", 5_000),
            (0, 0),
            "s-maxage implies proxy-revalidate"
        );
        assert_eq!(
            s("s-maxage=1, stale-while-revalidate=9", 0),
            (9_000, 0),
            "explicit grant honoured"
        );
    }

    #[test]
    fn request_directives_against_a_stored_entry() {
        let s = case(
            &[],
            200,
            &[("cache-control", "max-age=60, stale-while-revalidate=30")],
        )
        .stored();
        let e = entry_from(&s);
        let at = |secs: u64| NOW + secs * 1000;
        let none = CacheControl::default();
        assert_eq!(usable(&e, &none, false, at(59)), Use::Fresh);
        assert_eq!(usable(&e, &none, false, at(60)), Use::StaleWhileRevalidate);
        assert_eq!(usable(&e, &none, false, at(90)), Use::Revalidate);
        assert_eq!(
            usable(&e, &req_cc("max-age=10"), false, at(11)),
            Use::Revalidate
        );
        assert_eq!(usable(&e, &req_cc("max-age=10"), false, at(10)), Use::Fresh);
        assert_eq!(
            usable(&e, &req_cc("min-fresh=20"), false, at(45)),
            Use::Revalidate
        );
        assert_eq!(
            usable(&e, &req_cc("no-cache"), false, at(1)),
            Use::Revalidate
        );
        assert_eq!(
            usable(&e, &req_cc("max-stale=100"), false, at(150)),
            Use::Stale
        );
        assert_eq!(
            usable(&e, &req_cc("max-stale"), false, at(10_000)),
            Use::Stale
        );
        let strict = entry_from(
            &case(
                &[],
                200,
                &[("cache-control", "max-age=60, must-revalidate")],
            )
            .stored(),
        );
        assert_eq!(
            usable(&strict, &req_cc("max-stale"), false, at(61)),
            Use::Revalidate,
            "must-revalidate beats max-stale"
        );
    }

    #[test]
    fn stale_if_error_window() {
        let e = entry_from(
            &case(
                &[],
                200,
                &[("cache-control", "max-age=10, stale-if-error=20")],
            )
            .stored(),
        );
        assert!(stale_if_error_ok(&e, NOW + 29_999));
        assert!(!stale_if_error_ok(&e, NOW + 30_000));
    }

    #[test]
    fn conditional_comparisons() {
        let etag = HeaderValue::from_static("W/\"v1\"");
        let inm = |v: &'static str| HeaderValue::from_static(v);
        assert!(
            if_none_match(Some(&etag), &inm("\"v1\"")),
            "weak comparison"
        );
        assert!(if_none_match(Some(&etag), &inm("\"x\", W/\"v1\"")));
        assert!(if_none_match(Some(&etag), &inm("*")));
        assert!(!if_none_match(Some(&etag), &inm("\"v2\"")));
        assert!(!if_none_match(None, &inm("\"v1\"")));
        let lm = HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT");
        assert!(not_modified_since(
            Some(&lm),
            &inm("Sun, 06 Nov 1994 08:49:37 GMT")
        ));
        assert!(!not_modified_since(
            Some(&lm),
            &inm("Sun, 06 Nov 1994 08:49:36 GMT")
        ));
        assert!(!not_modified_since(
            None,
            &inm("Sun, 06 Nov 1994 08:49:37 GMT")
        ));
        assert!(!not_modified_since(Some(&lm), &inm("junk")));
    }

    #[test]
    fn freshen_replaces_fields_but_not_framing() {
        let stored = headers(&[
            ("etag", "\"1\""),
            ("cache-control", "max-age=1"),
            ("content-type", "a/b"),
            ("x-old", "1"),
        ]);
        let nm = headers(&[
            ("cache-control", "max-age=99"),
            ("content-type", "c/d"),
            ("content-length", "0"),
            ("x-new", "2"),
        ]);
        let m = freshen(&stored, &nm);
        assert_eq!(m["cache-control"], "max-age=99");
        assert_eq!(m["content-type"], "a/b");
        assert!(!m.contains_key("content-length"));
        assert_eq!(m["x-old"], "1");
        assert_eq!(m["x-new"], "2");
    }

    #[test]
    fn initial_age_counts_upstream_age_and_delay() {
        let h = headers(&[("age", "30")]);
        assert_eq!(initial_age_ms(&h, None, 1_000, 3_000), 32_000);
        let h = HeaderMap::new();
        assert_eq!(
            initial_age_ms(&h, Some(0), 9_000, 10_000),
            10_000,
            "apparent age from Date"
        );
    }

    fn any_value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ -~]{0,40}",
            proptest::collection::vec(
                prop_oneof![
                    Just("max-age"),
                    Just("s-maxage"),
                    Just("no-cache"),
                    Just("private"),
                    Just("no-store"),
                    Just("public"),
                    Just("must-revalidate"),
                    Just("max-stale"),
                    Just("stale-while-revalidate"),
                    Just("stale-if-error"),
                    Just("min-fresh"),
                    Just("="),
                    Just("\""),
                    Just(","),
                    Just(" "),
                    Just("\\"),
                    Just("99999999999999999999999"),
                    Just("-1"),
                    Just("W/"),
                    Just("*"),
                    Just("Sun, 06 Nov 1994 08:49:37 GMT"),
                ],
                0..12
            )
            .prop_map(|v| v.concat()),
        ]
    }

    #[test]
    fn vary_names_are_normalised() {
        let names = |lines: &[&str]| {
            let mut h = HeaderMap::new();
            for l in lines {
                h.append(header::VARY, HeaderValue::from_str(l).unwrap());
            }
            vary_names(&h).map(|v| v.iter().map(|n| n.as_str().to_owned()).collect::<Vec<_>>())
        };
        assert_eq!(names(&[]), Some(vec![]));
        assert_eq!(names(&["Accept-Encoding"]), Some(vec![]));
        assert_eq!(
            names(&[
                "Accept-Language , ORIGIN",
                "accept-language,,Accept-Encoding"
            ]),
            Some(vec!["accept-language".to_owned(), "origin".to_owned()])
        );
        assert_eq!(names(&["origin", "*"]), None);
        assert_eq!(names(&["bad name"]), None);
    }

    proptest! {
        /// Whatever the headers say, a stored response is never served fresh past its
        /// lifetime, and never past what the request's max-age allows.
        #[test]
        fn never_fresh_past_lifetime(
            cc in any_value(), age in 0u64..100_000, later in 0u64..10_000_000,
            req in any_value(), ttl in 0u64..100_000, mode in 0usize..4,
        ) {
            let modes = [CacheMode::Respect, CacheMode::Override, CacheMode::Floor, CacheMode::Cap];
            let mut c = case(&[], 200, &[("etag", "\"e\"")]);
            if let Ok(v) = HeaderValue::from_str(&cc) { c.resp.insert(header::CACHE_CONTROL, v); }
            c.resp.insert(header::AGE, HeaderValue::from(age));
            c = c.ttl(ttl, modes[mode]);
            if let Decision::Store(s) = c.decide() {
                let e = entry_from(&s);
                let now = NOW + later;
                let rq = match HeaderValue::from_str(&req) {
                    Ok(v) => { let mut h = HeaderMap::new(); h.insert(header::CACHE_CONTROL, v); request_directives(&h) }
                    Err(_) => CacheControl::default(),
                };
                if usable(&e, &rq, false, now) == Use::Fresh {
                    prop_assert!(e.age_ms(now) < e.lifetime);
                    prop_assert!(e.age_ms(now) >= age * 1000);
                    if let Some(m) = rq.max_age { prop_assert!(e.age_ms(now) <= m * 1000); }
                }
            }
        }

        /// Arbitrary bytes in every header the parsers read: no panic, ever.
        #[test]
        fn parsers_never_panic(
            values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..60), 12),
            text in any_value(), status in 100u16..600,
        ) {
            let names = ["cache-control", "cdn-cache-control", "augur-cache-control", "expires", "date",
                "last-modified", "age", "vary", "pragma", "etag", "authorization", "set-cookie"];
            let mut h = HeaderMap::new();
            for (n, v) in names.iter().zip(values.iter()) {
                if let Ok(v) = HeaderValue::from_bytes(v) { h.append(*n, v.clone()); }
                if let Ok(v) = HeaderValue::from_str(&text) { h.append(*n, v); }
            }
            let mut c = case(&[], status, &[]);
            c.resp = h.clone();
            c.req = h.clone();
            let _ = c.decide();
            let _ = request_directives(&h);
            let e = entry_from(&Stored { lifetime_ms: 5, initial_age_ms: 0, flags: Flags::default(),
                stale_while_revalidate_ms: 0, stale_if_error_ms: 0, strip: vec![] });
            let _ = usable(&e, &request_directives(&h), true, NOW);
            for v in h.values() {
                let _ = if_none_match(h.get("etag"), v);
                let _ = not_modified_since(Some(v), v);
                let _ = http_date_ms(Some(v));
            }
            let _ = freshen(&h, &h);
            let _ = vary_names(&h);
        }
    }
}
