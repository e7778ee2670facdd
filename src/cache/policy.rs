//! May this response be stored, and for how long? (RFC 9111, pure: `now` is a parameter.)
//!
//! Sits between the upstream's response head and the store: `cache::lookup_or_fetch` hands the
//! fetched head here and stores only on [`Decision::Store`]. This is the core-proxy subset of
//! RFC 9111 (2xx with explicit freshness or a route TTL; `no-store`, `private`, `no-cache`,
//! `Authorization`, `Set-Cookie`, `Vary` respected conservatively); anything it is unsure of
//! is not stored, because a shared cache that stores too little is slow while one that stores
//! too much leaks one user's data to another.

use std::time::SystemTime;

use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};

/// The largest delta-seconds value honoured (RFC 9111 §1.2.2: 2^31).
const DELTA_MAX: u64 = 1 << 31;

/// Parsed `Cache-Control` directives that matter to a shared cache.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
}

impl CacheControl {
    /// Parse every `Cache-Control` field line of `headers`.
    ///
    /// Robust by construction: directive names are case-insensitive, whitespace is ignored,
    /// quoted values may contain commas, unknown directives are skipped, the first occurrence
    /// of a duplicated directive wins, and an invalid delta-seconds (§1.2.2) makes the response
    /// stale (`0`) rather than fresh forever.
    pub fn parse(headers: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for directive in split_list(text) {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(unquote(a.trim()))),
                    None => (directive.trim(), None),
                };
                let is = |d: &str| name.eq_ignore_ascii_case(d);
                if is("no-store") {
                    cc.no_store = true;
                } else if is("no-cache") {
                    cc.no_cache = true;
                } else if is("private") {
                    cc.private = true;
                } else if is("public") {
                    cc.public = true;
                } else if is("must-revalidate") {
                    cc.must_revalidate = true;
                } else if is("proxy-revalidate") {
                    cc.proxy_revalidate = true;
                } else if is("max-age") {
                    cc.max_age = cc.max_age.or(Some(delta_seconds(arg)));
                } else if is("s-maxage") {
                    cc.s_maxage = cc.s_maxage.or(Some(delta_seconds(arg)));
                }
            }
        }
        cc
    }
}

/// Split a comma-separated field value, honouring quoted strings.
fn split_list(text: &str) -> impl Iterator<Item = &str> {
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
    let t = httpdate::parse_http_date(text).ok()?;
    let d = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    u64::try_from(d.as_millis()).ok()
}

/// What the store should do with a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Store, fresh for `lifetime_ms` from an age of `initial_age_ms` at `response_time`.
    Store {
        lifetime_ms: u64,
        initial_age_ms: u64,
    },
    /// Do not store; the reason is for logs.
    DontStore(&'static str),
}

/// Everything the decision depends on.
#[derive(Debug)]
pub struct Input<'a> {
    pub req_headers: &'a HeaderMap,
    pub status: StatusCode,
    pub resp_headers: &'a HeaderMap,
    /// The route's TTL for responses without explicit freshness (zero = none).
    pub route_ttl_ms: u64,
    /// Headers the route already puts in the key: a `Vary` on them is satisfied.
    pub key_headers: &'a [HeaderName],
    /// When the request went upstream (unix ms).
    pub request_time: u64,
    /// When the response head arrived (unix ms).
    pub response_time: u64,
}

/// Decide storability and freshness lifetime (RFC 9111 §3, §4.2.1, §4.2.3).
pub fn decide(i: &Input<'_>) -> Decision {
    if !i.status.is_success() || i.status == StatusCode::PARTIAL_CONTENT {
        return Decision::DontStore("status");
    }
    let req_cc = CacheControl::parse(i.req_headers);
    if req_cc.no_store {
        return Decision::DontStore("request no-store");
    }
    let cc = CacheControl::parse(i.resp_headers);
    if cc.no_store {
        return Decision::DontStore("no-store");
    }
    if cc.private {
        return Decision::DontStore("private");
    }
    if cc.no_cache {
        return Decision::DontStore("no-cache");
    }
    if i.req_headers.contains_key(header::AUTHORIZATION)
        && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate)
    {
        return Decision::DontStore("authorization");
    }
    if i.resp_headers.contains_key(header::SET_COOKIE) {
        return Decision::DontStore("set-cookie");
    }
    if !vary_is_keyed(i.resp_headers, i.key_headers) {
        return Decision::DontStore("vary");
    }
    if let Some(ce) = i.resp_headers.get(header::CONTENT_ENCODING) {
        if !ce.as_bytes().eq_ignore_ascii_case(b"identity") {
            return Decision::DontStore("content-encoding");
        }
    }
    let date = http_date_ms(i.resp_headers.get(header::DATE));
    let lifetime_ms = if let Some(s) = cc.s_maxage {
        s * 1000
    } else if let Some(m) = cc.max_age {
        m * 1000
    } else if let Some(expires) = i.resp_headers.get(header::EXPIRES) {
        // An invalid Expires means "already expired" (§5.3).
        match (http_date_ms(Some(expires)), date.or(Some(i.response_time))) {
            (Some(e), Some(d)) => e.saturating_sub(d),
            _ => 0,
        }
    } else if i.route_ttl_ms > 0 {
        i.route_ttl_ms
    } else {
        return Decision::DontStore("no freshness information");
    };
    if lifetime_ms == 0 {
        return Decision::DontStore("zero lifetime");
    }
    Decision::Store {
        lifetime_ms,
        initial_age_ms: initial_age_ms(i.resp_headers, date, i.request_time, i.response_time),
    }
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

/// True when every field `Vary` names is already part of the key (route key headers), or is
/// `Accept-Encoding` (Augur fetches the identity representation itself and varies on
/// `Accept-Encoding` when serving). `Vary: *` never matches.
fn vary_is_keyed(resp_headers: &HeaderMap, key_headers: &[HeaderName]) -> bool {
    for value in resp_headers.get_all(header::VARY) {
        let Ok(text) = value.to_str() else {
            return false;
        };
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return false;
            }
            let keyed = name.eq_ignore_ascii_case("accept-encoding")
                || key_headers
                    .iter()
                    .any(|k| k.as_str().eq_ignore_ascii_case(name));
            if !keyed {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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

    fn decide_with(req: &[(&str, &str)], status: u16, resp: &[(&str, &str)], ttl: u64) -> Decision {
        let (rq, rs) = (headers(req), headers(resp));
        decide(&Input {
            req_headers: &rq,
            status: StatusCode::from_u16(status).unwrap(),
            resp_headers: &rs,
            route_ttl_ms: ttl,
            key_headers: &[],
            request_time: 1_000_000,
            response_time: 1_000_000,
        })
    }

    fn lifetime(d: Decision) -> u64 {
        match d {
            Decision::Store { lifetime_ms, .. } => lifetime_ms,
            Decision::DontStore(r) => panic!("not stored: {r}"),
        }
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
        let big = CacheControl::parse(&headers(&[(
            "cache-control",
            "max-age=99999999999999999999",
        )]));
        assert_eq!(big.max_age, Some(DELTA_MAX));
        let quoted = CacheControl::parse(&headers(&[("cache-control", "private=\"a, no-store\"")]));
        assert!(
            quoted.private && !quoted.no_store,
            "commas inside quotes do not split"
        );
    }

    #[test]
    fn lifetime_precedence() {
        assert_eq!(
            lifetime(decide_with(
                &[],
                200,
                &[("cache-control", "max-age=10, s-maxage=20")],
                0
            )),
            20_000
        );
        assert_eq!(
            lifetime(decide_with(
                &[],
                200,
                &[("cache-control", "max-age=10")],
                99_000
            )),
            10_000
        );
        assert_eq!(lifetime(decide_with(&[], 200, &[], 5_000)), 5_000);
        let exp = decide_with(
            &[],
            200,
            &[
                ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("expires", "Sun, 06 Nov 1994 08:50:37 GMT"),
            ],
            0,
        );
        assert_eq!(lifetime(exp), 60_000);
    }

    #[test]
    fn refuses_what_a_shared_cache_must_not_store() {
        let no = |d: Decision| matches!(d, Decision::DontStore(_));
        assert!(no(decide_with(&[], 200, &[], 0)), "no freshness info");
        assert!(no(decide_with(
            &[],
            200,
            &[("cache-control", "no-store, max-age=60")],
            0
        )));
        assert!(no(decide_with(
            &[],
            200,
            &[("cache-control", "private, max-age=60")],
            0
        )));
        assert!(no(decide_with(
            &[("cache-control", "no-store")],
            200,
            &[("cache-control", "max-age=60")],
            0
        )));
        assert!(no(decide_with(
            &[],
            206,
            &[("cache-control", "max-age=60")],
            0
        )));
        assert!(no(decide_with(
            &[],
            500,
            &[("cache-control", "max-age=60")],
            0
        )));
        assert!(no(decide_with(
            &[],
            200,
            &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
            0
        )));
        assert!(no(decide_with(
            &[],
            200,
            &[("cache-control", "max-age=60"), ("vary", "*")],
            0
        )));
        assert!(no(decide_with(
            &[],
            200,
            &[("cache-control", "max-age=60"), ("vary", "cookie")],
            0
        )));
        assert!(
            no(decide_with(&[], 200, &[("expires", "not a date")], 0)),
            "invalid Expires is expired"
        );
        assert!(no(decide_with(
            &[("authorization", "x")],
            200,
            &[("cache-control", "max-age=60")],
            0
        )));
        assert!(!no(decide_with(
            &[("authorization", "x")],
            200,
            &[("cache-control", "public, max-age=60")],
            0
        )));
        assert!(!no(decide_with(
            &[],
            200,
            &[("cache-control", "max-age=60"), ("vary", "Accept-Encoding")],
            0
        )));
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
}
