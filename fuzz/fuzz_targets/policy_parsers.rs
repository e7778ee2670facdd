//! RFC 9111 rules on arbitrary heads: `Cache-Control` (and targeted fields), `Pragma`, `Vary`,
//! HTTP dates, `Age`, validators, and [`policy::decide`] / [`policy::usable`] on the result.
//! A client writes the request head and an upstream (or anything in front of it) the response
//! head: no panic, and a stored decision stays inside the bounds the rules promise.
#![no_main]

use arbitrary::Arbitrary;
use augur::cache::entry::StoredBody;
use augur::cache::policy::{self, CacheControl, Decision, Input};
use augur::config::CacheMode;
use augur::proxy::stored_entry;
use augur_fuzz::{clock_ms, headers, names, Field, FieldName};
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Case {
    req: Vec<Field>,
    resp: Vec<Field>,
    status: u16,
    route_ttl_ms: u64,
    mode: u8,
    heuristic_max_ms: u64,
    grace_ms: u64,
    cache_set_cookie: bool,
    targeted: Vec<FieldName>,
    request_time: u64,
    /// Upstream latency: the response head arrives this long after the request left.
    delay_ms: u32,
    /// When the stored entry is used, after the response arrived.
    later_ms: u64,
    text: String,
}

const MODES: [CacheMode; 4] = [
    CacheMode::Respect,
    CacheMode::Override,
    CacheMode::Floor,
    CacheMode::Cap,
];

fuzz_target!(|c: Case| {
    let req = headers(&c.req);
    let resp = headers(&c.resp);
    let targeted = names(&c.targeted);

    // The parsers on their own.
    let _ = policy::split_list(&c.text).count();
    let _ = CacheControl::parse(&resp);
    let (resp_cc, _) = policy::response_directives(&resp, &targeted);
    let req_cc = policy::request_directives(&req);
    let date = policy::http_date_ms(resp.get(header::DATE));
    if let Ok(v) = HeaderValue::from_str(&c.text) {
        let _ = policy::http_date_ms(Some(&v));
        let _ = policy::if_none_match(resp.get(header::ETAG), &v);
        let _ = policy::not_modified_since(resp.get(header::LAST_MODIFIED), &v);
    }
    if let Some(names) = policy::vary_names(&resp) {
        // Sorted, distinct, lower case, never `accept-encoding`: what variant keys assume.
        assert!(names.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
        assert!(!names.contains(&header::ACCEPT_ENCODING));
    }
    let merged = policy::freshen(&resp, &req);
    for name in req.keys().filter(|n| !policy::freshen_excluded(n)) {
        assert_eq!(
            merged.get_all(name).iter().count(),
            req.get_all(name).iter().count()
        );
    }

    let Ok(status) = StatusCode::from_u16(c.status) else {
        return;
    };
    let request_time = clock_ms(c.request_time);
    let response_time = request_time + u64::from(c.delay_ms);
    let _ = policy::initial_age_ms(&resp, date, request_time, response_time);
    let input = Input {
        req_headers: &req,
        status,
        resp_headers: &resp,
        route_ttl_ms: c.route_ttl_ms,
        mode: MODES[usize::from(c.mode) % MODES.len()],
        heuristic_max_ms: c.heuristic_max_ms,
        grace_ms: c.grace_ms,
        cache_set_cookie: c.cache_set_cookie,
        targeted: &targeted,
        request_time,
        response_time,
    };
    let Decision::Store(s) = policy::decide(&input) else {
        return;
    };
    // Never stored: the statuses a shared cache cannot reuse, and a request's own no-store.
    assert!(!matches!(status.as_u16(), 206 | 304) && status.as_u16() >= 200);
    assert!(!req_cc.no_store);
    // What a shared cache must not keep: `no-store`, `private`, and an answer to an
    // authenticated request the response does not declare shareable (§3.5).
    assert!(!resp_cc.no_store && !resp_cc.private);
    let auth = req.contains_key(header::AUTHORIZATION);
    if auth {
        assert!(resp_cc.public || resp_cc.s_maxage.is_some() || resp_cc.must_revalidate);
    }
    // Never served stale against `must-revalidate` or `no-cache`.
    if resp_cc.must_revalidate || resp_cc.no_cache {
        assert_eq!((s.stale_while_revalidate_ms, s.stale_if_error_ms), (0, 0));
    }
    // `Set-Cookie` is stored only with the route's opt-in, and then stripped.
    if resp.contains_key(header::SET_COOKIE) {
        assert!(c.cache_set_cookie);
        assert!(s.strip.contains(&header::SET_COOKIE));
    }
    // Stored as the proxy stores it: stripped fields, framing and `Age` removed.
    let entry = stored_entry(
        status,
        resp.clone(),
        StoredBody::Raw(Bytes::new()),
        s,
        request_time,
        response_time,
    );
    assert!(!entry.headers.contains_key(header::SET_COOKIE));
    for name in resp_cc
        .private_fields
        .iter()
        .chain(&resp_cc.no_cache_fields)
    {
        assert!(!entry.headers.contains_key(name), "{name} was stored");
    }
    let now = response_time.saturating_add(c.later_ms);
    let _ = policy::usable(&entry, &req_cc, auth, now);
    let _ = policy::stale_if_error_ok(&entry, now);
});
