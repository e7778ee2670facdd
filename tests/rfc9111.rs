//! RFC 9111 / 5861 / 9213 rules end to end: a real upstream sending exactly the headers under
//! test, the real proxy, a real client, and a manual clock instead of sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::start_following as start;
use common::{
    admin_post, config, eventually, get, get_with, pq, send, Got, TestProxy, TestUpstream,
};
use http::Request;
use http_body_util::Full;

fn http_date(offset_secs: i64) -> String {
    let now = SystemTime::now();
    let t = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs as u64)
    } else {
        now - Duration::from_secs((-offset_secs) as u64)
    };
    httpdate::fmt_http_date(t)
}

async fn method(proxy: &TestProxy, m: &str, pq: &str) -> Got {
    send(
        Request::builder()
            .method(m)
            .uri(proxy.url(pq))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// ───────────────────────────── storing (§3) ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heuristic_freshness_is_a_tenth_of_last_modified_age() {
    let (up, proxy) = start("").await;
    // Modified 10 hours ago: fresh for 1 hour by heuristic.
    let p = pq("/h", &[("h_last-modified", &http_date(-36_000))]);
    assert_eq!(get(&proxy.url(&p)).await.x_cache(), "MISS");
    proxy.clock.advance(secs(3_500));
    assert_eq!(get(&proxy.url(&p)).await.x_cache(), "HIT");
    proxy.clock.advance(secs(200));
    assert_ne!(get(&proxy.url(&p)).await.x_cache(), "HIT");
    assert_eq!(up.count(&p), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heuristic_statuses_are_stored_others_need_explicit_freshness() {
    let (up, proxy) = start("").await;
    let lm = http_date(-36_000);
    for (status, stored) in [("404", true), ("410", true), ("201", false), ("500", false)] {
        let p = pq("/s", &[("status", status), ("h_last-modified", &lm)]);
        get(&proxy.url(&p)).await;
        get(&proxy.url(&p)).await;
        assert_eq!(up.count(&p), if stored { 1 } else { 2 }, "status {status}");
    }
    let p = pq("/s", &[("status", "500"), ("cc", "max-age=60")]);
    get(&proxy.url(&p)).await;
    assert_eq!(
        get(&proxy.url(&p)).await.x_cache(),
        "HIT",
        "explicit freshness stores any final status"
    );
    let p = pq("/s", &[("status", "206"), ("cc", "max-age=60")]);
    get(&proxy.url(&p)).await;
    get(&proxy.url(&p)).await;
    assert_eq!(up.count(&p), 2, "206 is never stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_and_age_from_upstream_count() {
    let (up, proxy) = start("").await;
    let p = pq("/e", &[("h_expires", &http_date(60))]);
    get(&proxy.url(&p)).await;
    assert_eq!(get(&proxy.url(&p)).await.x_cache(), "HIT");
    let bad = pq("/e", &[("h_expires", "0")]);
    get(&proxy.url(&bad)).await;
    get(&proxy.url(&bad)).await;
    assert_eq!(up.count(&bad), 2, "invalid Expires is already expired");
    // 30 s already spent in a cache upstream: 30 s of freshness left, and Age says so.
    let aged = pq("/e", &[("cc", "max-age=60"), ("h_age", "30")]);
    get(&proxy.url(&aged)).await;
    proxy.clock.advance(secs(10));
    let hit = get(&proxy.url(&aged)).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.header("age"), "40");
    proxy.clock.advance(secs(21));
    assert_eq!(get(&proxy.url(&aged)).await.x_cache(), "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_is_shared_only_when_the_response_says_so() {
    let (up, proxy) = start("").await;
    let auth = [("authorization", "Bearer alice")];
    let plain = pq("/a", &[("cc", "max-age=60")]);
    get_with(&proxy.url(&plain), &auth).await;
    get_with(&proxy.url(&plain), &auth).await;
    assert_eq!(up.count(&plain), 2, "not stored for an authorized request");
    // Stored from an anonymous request: never reused for an authorized one.
    get(&proxy.url(&plain)).await;
    assert_eq!(get(&proxy.url(&plain)).await.x_cache(), "HIT");
    assert_eq!(get_with(&proxy.url(&plain), &auth).await.x_cache(), "MISS");
    for cc in [
        "public, max-age=60",
        "s-maxage=60",
        "max-age=60, must-revalidate",
    ] {
        let p = pq("/a", &[("cc", cc)]);
        get_with(&proxy.url(&p), &auth).await;
        assert_eq!(
            get_with(&proxy.url(&p), &auth).await.x_cache(),
            "HIT",
            "{cc}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_is_not_stored_by_default() {
    let (up, proxy) = start("").await;
    let p = pq("/c", &[("cc", "max-age=60"), ("h_set-cookie", "sid=alice")]);
    get(&proxy.url(&p)).await;
    let second = get(&proxy.url(&p)).await;
    assert_eq!(second.header("set-cookie"), "sid=alice");
    assert_eq!(up.count(&p), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_opt_in_stores_but_never_serves_the_cookie() {
    let (up, proxy) = start("cache_set_cookie = true").await;
    let p = pq("/c", &[("cc", "max-age=60"), ("h_set-cookie", "sid=alice")]);
    let first = get(&proxy.url(&p)).await;
    assert_eq!(
        first.header("set-cookie"),
        "sid=alice",
        "the fetching client gets its cookie"
    );
    let hit = get(&proxy.url(&p)).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.header("set-cookie"), "", "never from the cache");
    assert_eq!(up.count(&p), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qualified_private_and_no_cache_fields_are_stripped() {
    let (up, proxy) = start("").await;
    let p = pq(
        "/f",
        &[
            ("cc", "max-age=60, private=\"x-user\", no-cache=\"x-token\""),
            ("h_x-user", "alice"),
            ("h_x-token", "t1"),
        ],
    );
    let first = get(&proxy.url(&p)).await;
    assert_eq!(first.header("x-user"), "alice");
    let hit = get(&proxy.url(&p)).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.header("x-user"), "");
    assert_eq!(hit.header("x-token"), "");
    assert_eq!(up.count(&p), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_listed_fields_are_not_stored() {
    let (_up, proxy) = start("").await;
    let p = pq(
        "/hop",
        &[
            ("cc", "max-age=60"),
            ("h_connection", "x-secret"),
            ("h_x-secret", "1"),
        ],
    );
    let first = get(&proxy.url(&p)).await;
    assert_eq!(first.header("x-secret"), "");
    let hit = get(&proxy.url(&p)).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.header("x-secret"), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_cache_modes() {
    let (up, proxy) = start("ttl = \"10s\"\ncache_mode = \"override\"").await;
    let p = pq("/m", &[("cc", "max-age=60")]);
    get(&proxy.url(&p)).await;
    proxy.clock.advance(secs(11));
    assert_eq!(
        get(&proxy.url(&p)).await.x_cache(),
        "MISS",
        "route ttl wins over max-age=60"
    );
    assert_eq!(up.count(&p), 2);

    let (up, proxy) = start("ttl = \"100s\"\ncache_mode = \"floor\"").await;
    let p = pq("/m", &[("cc", "max-age=5")]);
    get(&proxy.url(&p)).await;
    proxy.clock.advance(secs(50));
    assert_eq!(
        get(&proxy.url(&p)).await.x_cache(),
        "HIT",
        "at least the route ttl"
    );
    assert_eq!(up.count(&p), 1);

    let (_up, proxy) = start("ttl = \"5s\"\ncache_mode = \"cap\"").await;
    let p = pq("/m", &[("cc", "max-age=600")]);
    get(&proxy.url(&p)).await;
    proxy.clock.advance(secs(6));
    assert_eq!(
        get(&proxy.url(&p)).await.x_cache(),
        "MISS",
        "at most the route ttl"
    );
}

// ───────────────────────────── request directives (§5.2.1) ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_directives_are_obeyed() {
    let (up, proxy) = start("").await;
    let p = pq("/r", &[("cc", "max-age=60")]);
    let cc = |v: &'static str| [("cache-control", v)];
    get(&proxy.url(&p)).await;
    proxy.clock.advance(secs(20));
    assert_eq!(
        get_with(&proxy.url(&p), &cc("max-age=10")).await.x_cache(),
        "MISS"
    );
    assert_eq!(up.count(&p), 2);
    proxy.clock.advance(secs(50));
    assert_eq!(
        get_with(&proxy.url(&p), &cc("min-fresh=20"))
            .await
            .x_cache(),
        "MISS"
    );
    assert_eq!(
        get_with(&proxy.url(&p), &cc("no-cache")).await.x_cache(),
        "MISS"
    );
    assert_eq!(
        get_with(&proxy.url(&p), &[("pragma", "no-cache")])
            .await
            .x_cache(),
        "MISS"
    );
    assert_eq!(up.count(&p), 5);
    proxy.clock.advance(secs(90));
    let stale = get_with(&proxy.url(&p), &cc("max-stale=60")).await;
    assert_eq!(stale.x_cache(), "STALE");
    assert_eq!(up.count(&p), 5);

    let fresh = pq("/r2", &[("cc", "max-age=60")]);
    get_with(&proxy.url(&fresh), &cc("no-store")).await;
    get(&proxy.url(&fresh)).await;
    assert_eq!(up.count(&fresh), 2, "request no-store: not stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_if_cached_never_goes_upstream() {
    let (up, proxy) = start("").await;
    let p = pq("/o", &[("cc", "max-age=60")]);
    let oic = [("cache-control", "only-if-cached")];
    let none = get_with(&proxy.url(&p), &oic).await;
    assert_eq!(none.status, 504);
    assert_eq!(none.json()["error"]["code"], "not_cached");
    assert_eq!(up.total(), 0);
    get(&proxy.url(&p)).await;
    assert_eq!(get_with(&proxy.url(&p), &oic).await.x_cache(), "HIT");
    proxy.clock.advance(secs(61));
    assert_eq!(get_with(&proxy.url(&p), &oic).await.status, 504);
    assert_eq!(up.total(), 1);
}

// ───────────────────────────── validation (§4.3) ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_waiting_on_a_revalidation_are_labelled_revalidated() {
    let (up, proxy) = start("").await;
    let p = pq(
        "/rv",
        &[
            ("cc", "max-age=10"),
            ("h_etag", "\"v1\""),
            ("validate", "1"),
            ("delay_ms", "300"),
        ],
    );
    assert_eq!(get(&proxy.url(&p)).await.x_cache(), "MISS");
    proxy.clock.advance(secs(11));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let url = proxy.url(&p);
            tokio::spawn(async move { get(&url).await.x_cache().to_owned() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), "REVALIDATED");
    }
    assert_eq!(up.count(&p), 2, "one conditional request for all ten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_entry_is_revalidated_and_freshened_by_304() {
    let (up, proxy) = start("").await;
    let p = pq(
        "/v",
        &[
            ("cc", "max-age=10"),
            ("h_etag", "\"v1\""),
            ("validate", "1"),
        ],
    );
    let first = get(&proxy.url(&p)).await;
    assert_eq!(first.header("x-count"), "1");
    proxy.clock.advance(secs(11));
    let again = get(&proxy.url(&p)).await;
    assert_eq!(again.x_cache(), "REVALIDATED");
    assert_eq!(again.body, first.body);
    assert_eq!(
        again.header("x-count"),
        "2",
        "stored headers updated from the 304"
    );
    let seen = up.last_request_headers();
    assert_eq!(seen["if-none-match"], "\"v1\"");
    proxy.clock.advance(secs(9));
    assert_eq!(
        get(&proxy.url(&p)).await.x_cache(),
        "HIT",
        "freshened for another 10 s"
    );
    assert_eq!(up.count(&p), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_modified_validates_with_if_modified_since() {
    let (up, proxy) = start("").await;
    let lm = http_date(-100);
    let p = pq(
        "/lm",
        &[
            ("cc", "max-age=5"),
            ("h_last-modified", &lm),
            ("validate", "1"),
        ],
    );
    get(&proxy.url(&p)).await;
    proxy.clock.advance(secs(6));
    assert_eq!(get(&proxy.url(&p)).await.x_cache(), "REVALIDATED");
    let seen = up.last_request_headers();
    assert_eq!(seen["if-modified-since"], lm.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cache_revalidates_every_use() {
    let (up, proxy) = start("").await;
    let p = pq(
        "/nc",
        &[("cc", "no-cache"), ("h_etag", "\"n\""), ("validate", "1")],
    );
    assert_eq!(get(&proxy.url(&p)).await.x_cache(), "MISS");
    assert_eq!(get(&proxy.url(&p)).await.x_cache(), "REVALIDATED");
    assert_eq!(get(&proxy.url(&p)).await.x_cache(), "REVALIDATED");
    assert_eq!(up.count(&p), 3);
    let without_validator = pq("/nc", &[("cc", "no-cache, max-age=60")]);
    get(&proxy.url(&without_validator)).await;
    get(&proxy.url(&without_validator)).await;
    assert_eq!(up.count(&without_validator), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_conditional_requests_get_304_from_a_fresh_entry() {
    let (up, proxy) = start("").await;
    let lm = http_date(-1000);
    let p = pq(
        "/cond",
        &[
            ("cc", "max-age=60"),
            ("h_etag", "\"abc\""),
            ("h_last-modified", &lm),
        ],
    );
    get(&proxy.url(&p)).await;
    let nm = get_with(&proxy.url(&p), &[("if-none-match", "W/\"abc\"")]).await;
    assert_eq!(nm.status, 304, "weak comparison matches");
    assert!(nm.body.is_empty());
    assert_eq!(nm.header("etag"), "\"abc\"");
    let other = get_with(&proxy.url(&p), &[("if-none-match", "\"zzz\", \"yyy\"")]).await;
    assert_eq!(other.status, 200);
    let ims = get_with(&proxy.url(&p), &[("if-modified-since", &http_date(0))]).await;
    assert_eq!(ims.status, 304);
    let old = get_with(&proxy.url(&p), &[("if-modified-since", &http_date(-5000))]).await;
    assert_eq!(old.status, 200);
    let both = get_with(
        &proxy.url(&p),
        &[
            ("if-none-match", "\"zzz\""),
            ("if-modified-since", &http_date(0)),
        ],
    )
    .await;
    assert_eq!(
        both.status, 200,
        "If-None-Match wins over If-Modified-Since"
    );
    assert_eq!(up.count(&p), 1);
}

/// L5: the zstd coding of a stored body is another representation (RFC 9110 §8.8.3): it
/// carries a weak validator, never the identity body's strong one, and a client that cached
/// it still gets a 304 (weak comparison, §13.1.2) while `If-Range` with it never yields a
/// range of the identity bytes (strong comparison, §13.1.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zstd_coding_has_its_own_validator() {
    let (up, proxy) = start("").await;
    let p = pq(
        "/coded",
        &[("cc", "max-age=60"), ("size", "5000"), ("h_etag", "\"z\"")],
    );
    let zstd = [("accept-encoding", "zstd")];
    let coded = get_with(&proxy.url(&p), &zstd).await;
    assert_eq!(coded.header("content-encoding"), "zstd");
    assert_eq!(coded.header("etag"), "W/\"z\"", "weak for the zstd coding");
    let plain = get(&proxy.url(&p)).await;
    assert_eq!(
        (plain.x_cache(), plain.header("content-encoding")),
        ("HIT", "")
    );
    assert_eq!(
        plain.header("etag"),
        "\"z\"",
        "the identity body keeps the strong tag"
    );

    let revalidate = [("accept-encoding", "zstd"), ("if-none-match", "W/\"z\"")];
    let nm = get_with(&proxy.url(&p), &revalidate).await;
    assert_eq!(
        nm.status, 304,
        "the client's copy of the zstd coding is current"
    );
    assert_eq!(
        nm.header("etag"),
        "W/\"z\"",
        "the 304 names the coding it validates"
    );
    let nm = get_with(&proxy.url(&p), &[("if-none-match", "W/\"z\"")]).await;
    assert_eq!(
        nm.status, 304,
        "weak comparison: the same body in another coding"
    );
    assert_eq!(nm.header("etag"), "\"z\"");

    let resume = [("range", "bytes=0-9"), ("if-range", "W/\"z\"")];
    let whole = get_with(&proxy.url(&p), &resume).await;
    assert_eq!(whole.status, 200, "no identity range for a zstd validator");
    assert_eq!(whole.body.len(), 5000);
    assert_eq!(up.count(&p), 1);
}

// ───────────────────────────── stale content (RFC 5861) ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let (up, proxy) = start("").await;
    let p = pq(
        "/swr",
        &[
            ("cc", "max-age=1, stale-while-revalidate=60"),
            ("h_etag", "\"s\""),
            ("validate", "1"),
            ("delay_ms", "200"),
        ],
    );
    get(&proxy.url(&p)).await;
    proxy.clock.advance(secs(5));
    assert_eq!(
        get(&proxy.url(&p)).await.x_cache(),
        "STALE",
        "served at once"
    );
    for _ in 0..5 {
        let x = get(&proxy.url(&p)).await;
        assert!(["STALE", "HIT"].contains(&x.x_cache()), "{}", x.x_cache());
    }
    assert!(
        up.wait_count(&p, 2).await,
        "background refresh reached the upstream"
    );
    eventually(
        Duration::from_secs(1),
        "the refresh freshened the entry",
        || async { get(&proxy.url(&p)).await.x_cache() == "HIT" },
    )
    .await;
    assert_eq!(up.count(&p), 2, "refreshed once");
    proxy.clock.advance(secs(120));
    assert_eq!(
        get(&proxy.url(&p)).await.x_cache(),
        "REVALIDATED",
        "past the window: revalidate first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_covers_5xx_and_a_dead_upstream() {
    let (up, proxy) = start("").await;
    let p = pq("/sie", &[("cc", "max-age=1, stale-if-error=60")]);
    let first = get(&proxy.url(&p)).await;
    proxy.clock.advance(secs(5));
    up.fail_with(503);
    let stale = get(&proxy.url(&p)).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.x_cache(), "STALE");
    assert_eq!(stale.body, first.body);
    up.stop();
    let dead = get(&proxy.url(&p)).await;
    assert_eq!((dead.status.as_u16(), dead.x_cache()), (200, "STALE"));
    proxy.clock.advance(secs(60));
    assert_eq!(
        get(&proxy.url(&p)).await.status,
        502,
        "past the window the error shows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_covers_an_upstream_timeout() {
    let (up, proxy) = start("timeout = \"300ms\"").await;
    let p = pq("/slow", &[("cc", "max-age=1, stale-if-error=60")]);
    get(&proxy.url(&p)).await;
    proxy.clock.advance(secs(5));
    up.answer_after(Duration::from_millis(1500));
    let got = get(&proxy.url(&p)).await;
    assert_eq!((got.status.as_u16(), got.x_cache()), (200, "STALE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn must_revalidate_forbids_stale() {
    let (up, proxy) = start("grace = \"60s\"").await;
    let p = pq(
        "/mr",
        &[(
            "cc",
            "max-age=1, must-revalidate, stale-if-error=60, stale-while-revalidate=60",
        )],
    );
    get(&proxy.url(&p)).await;
    proxy.clock.advance(secs(5));
    up.fail_with(500);
    let got = get(&proxy.url(&p)).await;
    assert_eq!(got.status, 500);
    assert_eq!(got.x_cache(), "MISS");
    let client = get_with(&proxy.url(&p), &[("cache-control", "max-stale")]).await;
    assert_eq!(client.status, 500, "nor for a client's max-stale");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_grace_for_origins_that_send_no_stale_directives() {
    let (up, proxy) = start("grace = \"30s\"").await;
    let p = pq("/g", &[("cc", "max-age=1")]);
    get(&proxy.url(&p)).await;
    proxy.clock.advance(secs(10));
    up.fail_with(502);
    assert_eq!(get(&proxy.url(&p)).await.x_cache(), "STALE");
    up.recover();
    assert!(
        up.wait_count(&p, 2).await,
        "grace also refreshes in the background"
    );
}

// ───────────────────────────── Vary (§4.1) ─────────────────────────────

/// GET `pq` with `Accept-Language` lines (none = header absent); the upstream echoes what it got.
async fn lang(proxy: &TestProxy, pq: &str, lines: &[&str]) -> Got {
    let headers: Vec<(&str, &str)> = lines.iter().map(|l| ("accept-language", *l)).collect();
    get_with(&proxy.url(pq), &headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_stores_one_variant_per_selecting_header_value() {
    let (up, proxy) = start("").await;
    let p = pq("/v", &[("cc", "max-age=60"), ("h_vary", "Accept-Language")]);
    for l in ["en", "fr"] {
        let got = lang(&proxy, &p, &[l]).await;
        assert_eq!(
            (got.x_cache(), got.header("x-echo-accept-language")),
            ("MISS", l)
        );
    }
    // Each variant answers only the requests that select it.
    for l in ["en", "fr", "en", "fr"] {
        let got = lang(&proxy, &p, &[l]).await;
        assert_eq!(
            (got.x_cache(), got.header("x-echo-accept-language")),
            ("HIT", l)
        );
    }
    // An absent header is a variant of its own, not a match for any value.
    let none = lang(&proxy, &p, &[]).await;
    assert_eq!(
        (none.x_cache(), none.header("x-echo-accept-language")),
        ("MISS", "")
    );
    assert_eq!(lang(&proxy, &p, &[]).await.x_cache(), "HIT");
    assert_eq!(up.count(&p), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_matching_normalises_whitespace_name_case_and_field_lines() {
    let (up, proxy) = start("").await;
    // The origin spells the field name in capitals and lists Accept-Encoding too (which Augur
    // negotiates itself, so it selects nothing).
    let p = pq(
        "/n",
        &[
            ("cc", "max-age=60"),
            ("h_vary", "ACCEPT-LANGUAGE, Accept-Encoding"),
        ],
    );
    assert_eq!(lang(&proxy, &p, &["en, fr"]).await.x_cache(), "MISS");
    // Whitespace around list elements and the split into field lines select nothing.
    for lines in [
        &["en,fr"][..],
        &["en ,  fr"],
        &["en", "fr"],
        &[" en", "fr "],
    ] {
        let got = lang(&proxy, &p, lines).await;
        assert_eq!(got.x_cache(), "HIT", "{lines:?}");
        assert_eq!(got.header("x-echo-accept-language"), "en, fr");
    }
    // The coding is not a selecting header: any Accept-Encoding gets the stored variant.
    let zstd = get_with(
        &proxy.url(&p),
        &[("accept-language", "en,fr"), ("accept-encoding", "zstd")],
    )
    .await;
    assert_eq!(zstd.x_cache(), "HIT");
    // A different order is a different value (list order can carry meaning).
    assert_eq!(lang(&proxy, &p, &["fr, en"]).await.x_cache(), "MISS");
    assert_eq!(up.count(&p), 2, "en,fr and fr,en");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_star_never_matches() {
    let (up, proxy) = start("").await;
    let p = pq(
        "/star",
        &[("cc", "max-age=60"), ("h_vary", "Accept-Language, *")],
    );
    for _ in 0..3 {
        assert_eq!(lang(&proxy, &p, &["en"]).await.x_cache(), "MISS");
    }
    assert_eq!(up.count(&p), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_per_url_are_bounded_by_max_variants() {
    let up = TestUpstream::start().await;
    let mut cfg = config(up.addr, "");
    cfg.cache.max_variants = 2;
    let proxy = TestProxy::start(cfg).await;
    up.follow(&proxy.clock);
    let p = pq("/many", &[("cc", "max-age=60"), ("h_vary", "X-Variant")]);
    let variant = |v: &'static str| {
        let url = proxy.url(&p);
        async move {
            get_with(&url, &[("x-variant", v)])
                .await
                .x_cache()
                .to_owned()
        }
    };
    for v in ["a", "b", "c"] {
        assert_eq!(variant(v).await, "MISS");
    }
    // Only the two most recently stored are kept: a client cycling through header values
    // cannot make one URL hold more.
    assert_eq!(variant("c").await, "HIT");
    assert_eq!(variant("b").await, "HIT");
    assert_eq!(variant("a").await, "MISS");
    assert_eq!(variant("c").await, "HIT");
    assert_eq!(variant("b").await, "MISS", "dropped when a came back");
    assert_eq!(up.count(&p), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_for_new_variants_costs_one_upstream_request_per_variant() {
    let (up, proxy) = start("").await;
    // Nothing is known about the URL yet: all thirty join one flight, and the leader's
    // response says it varies. Each waiter then re-selects its own variant.
    let p = pq(
        "/burst",
        &[
            ("cc", "max-age=60"),
            ("h_vary", "Accept-Language"),
            ("delay_ms", "300"),
        ],
    );
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let url = proxy.url(&p);
            let l = ["en", "fr", "de"][i % 3];
            tokio::spawn(async move {
                let got = get_with(&url, &[("accept-language", l)]).await;
                (l, got.header("x-echo-accept-language").to_owned())
            })
        })
        .collect();
    for t in tasks {
        let (asked, got) = t.await.unwrap();
        assert_eq!(asked, got, "a request was answered with another variant");
    }
    assert_eq!(up.count(&p), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_unsafe_methods_drop_every_variant() {
    let (up, proxy) = start("").await;
    let p = pq(
        "/pv",
        &[("cc", "max-age=60"), ("h_vary", "Accept-Language")],
    );
    let fill = || async {
        for l in ["en", "fr"] {
            lang(&proxy, &p, &[l]).await;
            assert_eq!(lang(&proxy, &p, &[l]).await.x_cache(), "HIT");
        }
    };
    fill().await;
    let purged = admin_post(&proxy.purge_url(&proxy.url(&p))).await;
    assert_eq!(purged.json()["purged"], true, "{:?}", purged.body);
    for l in ["en", "fr"] {
        assert_eq!(lang(&proxy, &p, &[l]).await.x_cache(), "MISS", "{l}");
    }
    fill().await;
    method(&proxy, "PUT", &p).await;
    for l in ["en", "fr"] {
        assert_eq!(lang(&proxy, &p, &[l]).await.x_cache(), "MISS", "{l}");
    }
    assert_eq!(up.count(&p), 7, "2 + 2 + 2 GETs and the PUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_that_stops_varying_is_stored_once_again() {
    // `h_vary` is left out of the key, so both URLs below are one resource whose origin
    // first varies and then stops (the test upstream reads `h_vary`, so it is forwarded).
    let (up, proxy) = start(
        r#"query_exclude = ["h_vary"]
forward_unkeyed_query = true"#,
    )
    .await;
    let varying = pq(
        "/sv",
        &[("cc", "max-age=60"), ("h_vary", "Accept-Language")],
    );
    let plain = pq("/sv", &[("cc", "max-age=60")]);
    assert_eq!(lang(&proxy, &varying, &["en"]).await.x_cache(), "MISS");
    assert_eq!(lang(&proxy, &plain, &["en"]).await.x_cache(), "HIT");
    // A new variant, fetched: this time the origin does not vary.
    assert_eq!(lang(&proxy, &plain, &["fr"]).await.x_cache(), "MISS");
    // One representation for everyone now; the old variant is gone.
    for l in ["fr", "en", "de"] {
        let got = lang(&proxy, &plain, &[l]).await;
        assert_eq!(
            (got.x_cache(), got.header("x-echo-accept-language")),
            ("HIT", "fr")
        );
    }
    assert_eq!(up.count(&varying) + up.count(&plain), 2);
}

// ───────────────────────────── invalidation (§4.4) ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_methods_invalidate_target_and_locations() {
    let (up, proxy) = start("").await;
    let cached = |path: &str| pq(path, &[("cc", "max-age=60")]);
    for path in ["/items", "/items/1", "/items/2", "/items/3"] {
        get(&proxy.url(&cached(path))).await;
        assert_eq!(get(&proxy.url(&cached(path))).await.x_cache(), "HIT");
    }
    // A failed POST invalidates nothing.
    up.fail_with(500);
    method(&proxy, "POST", &cached("/items")).await;
    up.recover();
    assert_eq!(get(&proxy.url(&cached("/items"))).await.x_cache(), "HIT");
    // A successful one invalidates its target (the same URL with the same query)…
    method(&proxy, "POST", &cached("/items")).await;
    assert_eq!(get(&proxy.url(&cached("/items"))).await.x_cache(), "MISS");
    // …and Location / Content-Location on the same host.
    let loc = format!("http://{}{}", proxy.addr, cached("/items/1"));
    method(
        &proxy,
        "PUT",
        &pq(
            "/x",
            &[
                ("h_location", &loc),
                ("h_content-location", &cached("/items/2")),
            ],
        ),
    )
    .await;
    assert_eq!(get(&proxy.url(&cached("/items/1"))).await.x_cache(), "MISS");
    assert_eq!(get(&proxy.url(&cached("/items/2"))).await.x_cache(), "MISS");
    // Another host's Location is left alone.
    let foreign = format!("http://other.example{}", cached("/items/3"));
    method(&proxy, "DELETE", &pq("/x", &[("h_location", &foreign)])).await;
    assert_eq!(get(&proxy.url(&cached("/items/3"))).await.x_cache(), "HIT");
    assert!(up.total() > 0);
}

// ───────────────────────────── targeted fields (RFC 9213) ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeted_fields_take_precedence_over_cache_control() {
    let (up, proxy) = start("").await;
    let cdn = pq(
        "/t",
        &[("cc", "no-store"), ("h_cdn-cache-control", "max-age=60")],
    );
    get(&proxy.url(&cdn)).await;
    assert_eq!(get(&proxy.url(&cdn)).await.x_cache(), "HIT");
    let own = pq(
        "/t",
        &[
            ("cc", "max-age=60"),
            ("h_cdn-cache-control", "max-age=60"),
            ("h_augur-cache-control", "no-store"),
        ],
    );
    get(&proxy.url(&own)).await;
    get(&proxy.url(&own)).await;
    assert_eq!(up.count(&own), 2, "Augur-Cache-Control wins");
}

/// A config like [`common::config`] with `cache` as the body of its `[cache]` table.
fn config_with_cache(upstream: std::net::SocketAddr, cache: &str) -> augur::config::Config {
    let text = format!(
        r#"
[admin]
allow_unauthenticated_loopback = true

[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[cache]
memory = "64MiB"
{cache}

[[route]]
name = "api"
upstream = "http://{upstream}"
"#
    );
    augur::config::Config::from_str(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// L14: `[cache] honour_cdn_cache_control = false` (for an origin whose
/// `CDN-Cache-Control` is meant for its outer CDN only): `Cache-Control` governs, so a
/// `private` response is not stored whatever `CDN-Cache-Control` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdn_cache_control_can_be_ignored() {
    let up = TestUpstream::start().await;
    let off = TestProxy::start(config_with_cache(
        up.addr,
        "honour_cdn_cache_control = false",
    ))
    .await;
    let on = TestProxy::start(config(up.addr, "")).await;
    let p = pq(
        "/cdn",
        &[("cc", "private"), ("h_cdn-cache-control", "max-age=60")],
    );
    get(&on.url(&p)).await;
    assert_eq!(
        get(&on.url(&p)).await.x_cache(),
        "HIT",
        "honoured by default"
    );
    assert_eq!(up.count(&p), 1);
    get(&off.url(&p)).await;
    assert_ne!(get(&off.url(&p)).await.x_cache(), "HIT");
    assert_eq!(up.count(&p), 3, "Cache-Control: private governs");
    // Augur's own targeted field still applies.
    let own = pq(
        "/cdn",
        &[("cc", "private"), ("h_augur-cache-control", "max-age=60")],
    );
    get(&off.url(&own)).await;
    assert_eq!(get(&off.url(&own)).await.x_cache(), "HIT");
}

// ───────────────────────────── ranges (RFC 9110 §14) ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_ranges_are_sliced_from_the_stored_response() {
    let (up, proxy) = start("").await;
    let p = pq(
        "/range",
        &[("cc", "max-age=60"), ("size", "5000"), ("h_etag", "\"r\"")],
    );
    let full = Bytes::from(common::json_body(5000));
    let first = get_with(&proxy.url(&p), &[("range", "bytes=0-99")]).await;
    assert_eq!(
        first.status, 206,
        "the miss fetches the whole body and answers the range"
    );
    assert_eq!(first.body, full.slice(0..100));
    assert_eq!(first.header("content-range"), "bytes 0-99/5000");
    let tail = get_with(
        &proxy.url(&p),
        &[("range", "bytes=-10"), ("accept-encoding", "zstd")],
    )
    .await;
    assert_eq!((tail.status.as_u16(), tail.x_cache()), (206, "HIT"));
    assert_eq!(tail.body, full.slice(4990..));
    assert_eq!(tail.header("content-encoding"), "");
    let open = get_with(&proxy.url(&p), &[("range", "bytes=4000-")]).await;
    assert_eq!(open.body.len(), 1000);
    let outside = get_with(&proxy.url(&p), &[("range", "bytes=9000-9999")]).await;
    assert_eq!(outside.status, 416);
    assert_eq!(outside.header("content-range"), "bytes */5000");
    let stale_if_range = get_with(
        &proxy.url(&p),
        &[("range", "bytes=0-9"), ("if-range", "\"old\"")],
    )
    .await;
    assert_eq!(
        stale_if_range.status, 200,
        "If-Range mismatch: the whole body"
    );
    assert_eq!(up.count(&p), 1);
    let multi = get_with(&proxy.url(&p), &[("range", "bytes=0-1,5-6")]).await;
    assert_eq!(multi.x_cache(), "BYPASS", "multi-range passes through");
    assert_eq!(up.count(&p), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_still_answered_from_the_stored_get() {
    let (up, proxy) = start("").await;
    let p = pq("/head", &[("cc", "max-age=60")]);
    get(&proxy.url(&p)).await;
    let head = method(&proxy, "HEAD", &p).await;
    assert_eq!(head.x_cache(), "HIT");
    assert!(head.body.is_empty());
    assert_eq!(up.count(&p), 1);
}
