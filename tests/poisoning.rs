//! Cache poisoning through inputs the key does not hold (security review H1, H2, M3, M5, M8,
//! L3, L9): each test sends what an attacker would, then what a victim would, and asserts the
//! victim gets its own answer. Real upstream, real proxy, raw sockets where a client library
//! would tidy the request up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::{config, get, get_with, raw_exchange, send, TestProxy, TestUpstream, CACHED};
use http::Request;
use http_body_util::Full;

async fn start(extra: &str) -> (TestUpstream, TestProxy) {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, extra)).await;
    (up, proxy)
}

/// H1: `Connection: x-tenant` makes the upstream answer for no tenant; that answer must not be
/// stored for the tenant the request named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_hide_a_keyed_header_from_the_upstream() {
    let (_up, proxy) = start(r#"key_headers = ["X-Tenant"]"#).await;
    let pq = format!("/tenant/home?{CACHED}");
    let attack = format!(
        "GET {pq} HTTP/1.1\r\nHost: {}\r\nX-Tenant: acme\r\nConnection: x-tenant\r\n\r\n",
        proxy.addr
    );
    let answer = raw_exchange(proxy.addr, attack.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let victim = get_with(&proxy.url(&pq), &[("x-tenant", "acme")]).await;
    assert_eq!(
        victim.header("x-echo-x-tenant"),
        "acme",
        "served the no-tenant answer"
    );
}

/// H1 for `Vary`: the variant is selected by what the upstream saw, not by a field that
/// `Connection` removed on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_poison_a_vary_variant() {
    let (_up, proxy) = start("").await;
    let pq = format!("/lang?{CACHED}&h_vary=Accept-Language");
    let attack = format!(
        "GET {pq} HTTP/1.1\r\nHost: {}\r\nAccept-Language: fr\r\nConnection: accept-language\r\n\r\n",
        proxy.addr
    );
    raw_exchange(proxy.addr, attack.as_bytes()).await;
    let victim = get_with(&proxy.url(&pq), &[("accept-language", "fr")]).await;
    assert_eq!(victim.header("x-echo-accept-language"), "fr");
}

/// H2: `Forwarded`, `X-Original-URL`, method overrides and the `X-Forwarded-*` fields Augur does
/// not set change what frameworks answer; they never reach the upstream on a cacheable
/// request, so what is stored is what a plain request gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_fields_never_reach_a_cacheable_fetch() {
    let (up, proxy) = start("").await;
    let pq = format!("/next?{CACHED}");
    let attacker = get_with(
        &proxy.url(&pq),
        &[
            ("forwarded", "host=evil.example;proto=https"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("x-forwarded-port", "8443"),
            ("x-forwarded-prefix", "/evil"),
        ],
    )
    .await;
    assert_eq!(attacker.x_cache(), "MISS");
    let seen = up.last_request_headers();
    for name in [
        "forwarded",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-forwarded-port",
        "x-forwarded-prefix",
    ] {
        assert!(!seen.contains_key(name), "{name} reached the upstream");
    }
    let victim = get(&proxy.url(&pq)).await;
    assert_eq!(victim.x_cache(), "HIT");
    assert!(victim.headers.get("x-echo-forwarded").is_none());
}

/// H2: a route that keys on an override field forwards it (it is in the key, so it is safe);
/// `strip_request_headers` removes a field of the operator's choosing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_overrides_are_forwarded_and_listed_fields_stripped() {
    let (up, proxy) = start(
        r#"key_headers = ["X-Original-URL"]
strip_request_headers = ["X-Debug"]"#,
    )
    .await;
    let pq = format!("/k?{CACHED}");
    get_with(
        &proxy.url(&pq),
        &[("x-original-url", "/other"), ("x-debug", "1")],
    )
    .await;
    let seen = up.last_request_headers();
    assert_eq!(seen["x-original-url"], "/other");
    assert!(!seen.contains_key("x-debug"));
    // Keyed: a request without it is another entry.
    assert_eq!(get(&proxy.url(&pq)).await.x_cache(), "MISS");
}

/// H2: a parameter the key excludes (a JSONP `callback`, `utm_*`) is not sent upstream either,
/// so the upstream cannot reflect it into an answer stored for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_query_parameters_do_not_reach_the_upstream() {
    let (up, proxy) = start(r#"query_exclude = ["callback", "utm_source"]"#).await;
    let attacker = get(&proxy.url(&format!("/j?{CACHED}&callback=evil&utm_source=x"))).await;
    assert_eq!(attacker.x_cache(), "MISS");
    assert_eq!(up.count(&format!("/j?{CACHED}")), 1, "sent without them");
    assert_eq!(up.total(), 1);
    assert_eq!(
        get(&proxy.url(&format!("/j?{CACHED}"))).await.x_cache(),
        "HIT"
    );
}

/// M3: routing, key and upstream see one normalised path. A "don't cache" route before a
/// caching catch-all cannot be bypassed with dot segments, their encodings or `//`, and an
/// encoded slash is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_key_and_upstream_see_one_normalised_path() {
    let up = TestUpstream::start().await;
    let extra = format!(
        r#"path_prefix = "/account/"

[[route]]
name = "rest"
upstream = "http://{}"
ttl = "30s""#,
        up.addr
    );
    let proxy = TestProxy::start(config(up.addr, &extra)).await;
    for path in [
        "/x/%2e%2e/account/me",
        "/x/%2E./account/me",
        "/x/../account/me",
        "//account/me",
        "/x/;/../../account/me",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", proxy.addr);
        let first = raw_exchange(proxy.addr, request.as_bytes()).await;
        let second = raw_exchange(proxy.addr, request.as_bytes()).await;
        for answer in [&first, &second] {
            assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
            assert!(
                answer.to_ascii_lowercase().contains("x-cache: miss"),
                "{path} was answered from the catch-all's cache: {answer}"
            );
        }
    }
    assert_eq!(up.count("/account/me"), 10, "forwarded normalised");
    let encoded = format!(
        "GET /x/..%2faccount/me HTTP/1.1\r\nHost: {}\r\n\r\n",
        proxy.addr
    );
    let answer = raw_exchange(proxy.addr, encoded.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(up.total(), 10);
}

/// M5: an unknown method answered 2xx does not evict the URL (fleet-wide it would be a purge
/// anyone can send); POST still does (RFC 9111 §4.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_methods_do_not_invalidate() {
    let (_up, proxy) = start("").await;
    let pq = format!("/x?{CACHED}");
    get(&proxy.url(&pq)).await;
    assert_eq!(get(&proxy.url(&pq)).await.x_cache(), "HIT");
    let foo = send(
        Request::builder()
            .method("FOO")
            .uri(proxy.url(&pq))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(foo.status, 200);
    assert_eq!(get(&proxy.url(&pq)).await.x_cache(), "HIT");
    common::post(&proxy.url(&pq)).await;
    assert_eq!(get(&proxy.url(&pq)).await.x_cache(), "MISS");
}

/// M8 and L3: `X-Forwarded-Proto` from a trusted front proxy is kept (an HTTPS-only origin
/// would otherwise redirect every request); from anyone else Augur sets it, and
/// `X-Forwarded-Host` is the host as the key sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_proto_is_kept_only_from_trusted_proxies() {
    let up = TestUpstream::start().await;
    let mut trusting = config(up.addr, "");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n\n[[route]]\nname = \"api\"\nupstream = \"http://{}\"\n",
        up.addr
    );
    trusting.server = augur::config::Config::from_str(&text, "t.toml")
        .unwrap()
        .server;
    let proxy = TestProxy::start(trusting).await;
    get_with(
        &proxy.url("/p"),
        &[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.example"),
        ],
    )
    .await;
    let seen = up.last_request_headers();
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-host"], "shop.example");

    let (up, proxy) = start("").await;
    let request = format!(
        "GET /p HTTP/1.1\r\nHost: LocalHost:{}\r\nX-Forwarded-Proto: https\r\n\r\n",
        proxy.addr.port()
    );
    raw_exchange(proxy.addr, request.as_bytes()).await;
    let seen = up.last_request_headers();
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(
        seen["x-forwarded-host"],
        format!("localhost:{}", proxy.addr.port())
    );
}

/// L9: an absolute-form target names the host (RFC 9112 §3.2.2); a `Host` field that says
/// otherwise does not pick the route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_names_the_host() {
    let (up, proxy) = start(r#"hosts = ["a.example"]"#).await;
    let request = b"GET http://a.example/abs HTTP/1.1\r\nHost: b.example\r\n\r\n";
    let answer = raw_exchange(proxy.addr, request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(up.count("/abs"), 1);
}

/// A route may answer reloads (`Cache-Control: no-cache`, `max-age=0`) from a fresh stored
/// response, so no client can make every request go upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_ignore_client_no_cache() {
    let (up, proxy) = start("ignore_client_no_cache = true").await;
    let pq = format!("/r?{CACHED}");
    get(&proxy.url(&pq)).await;
    for cc in ["no-cache", "max-age=0"] {
        let got = get_with(&proxy.url(&pq), &[("cache-control", cc)]).await;
        assert_eq!(got.x_cache(), "HIT", "{cc}");
    }
    assert_eq!(up.count(&pq), 1);
}

/// Reloads cannot hammer the upstream: concurrent `no-cache` requests for one key are
/// coalesced into one revalidation, like misses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_client_no_cache_requests_are_coalesced() {
    let (up, proxy) = start("").await;
    let pq = format!("/reload?{CACHED}&delay_ms=300");
    get(&proxy.url(&pq)).await;
    let url = proxy.url(&pq);
    let reloads: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get_with(&url, &[("cache-control", "no-cache")]).await })
        })
        .collect();
    for r in reloads {
        assert_eq!(r.await.unwrap().status, 200);
    }
    assert_eq!(up.count(&pq), 2, "one fetch, then one for all 20 reloads");
}
