//! The request path end to end: real upstream, real proxy, real client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{
    admin_post, config, eventually, get, get_with, post, send, TestProxy, TestUpstream, CACHED,
};
use http::Request;
use http_body_util::Full;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_then_hit_with_one_upstream_request() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, "")).await;
    let pq = format!("/users/1?{CACHED}");
    let first = get(&proxy.url(&pq)).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.x_cache(), "MISS");
    proxy.clock.advance(Duration::from_secs(7));
    let second = get(&proxy.url(&pq)).await;
    assert_eq!(second.x_cache(), "HIT");
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("age"), "7");
    assert_eq!(second.header("cache-control"), "public, max-age=60");
    assert_eq!(up.count(&pq), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_order_and_encoding_do_not_split_the_cache() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, "")).await;
    assert_eq!(
        get(&proxy.url(&format!("/q?b=2&a=%41&{CACHED}")))
            .await
            .x_cache(),
        "MISS"
    );
    assert_eq!(
        get(&proxy.url(&format!("/q?{CACHED}&a=A&b=2")))
            .await
            .x_cache(),
        "HIT"
    );
    assert_eq!(up.total(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_ttl_applies_and_expiry_refetches() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, "ttl = \"30s\"")).await;
    let pq = "/plain"; // the upstream sends no Cache-Control: the route TTL decides
    assert_eq!(get(&proxy.url(pq)).await.x_cache(), "MISS");
    proxy.clock.advance(Duration::from_secs(29));
    assert_eq!(get(&proxy.url(pq)).await.x_cache(), "HIT");
    proxy.clock.advance(Duration::from_secs(2));
    assert_eq!(
        get(&proxy.url(pq)).await.x_cache(),
        "MISS",
        "never served fresh past its TTL"
    );
    assert_eq!(up.count(pq), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_freshness_nothing_is_stored() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, "")).await;
    for _ in 0..3 {
        assert_eq!(get(&proxy.url("/plain")).await.x_cache(), "MISS");
    }
    assert_eq!(up.count("/plain"), 3);
    for cc in ["no-store%2C%20max-age%3D60", "private%2C%20max-age%3D60"] {
        let pq = format!("/p?cc={cc}");
        get(&proxy.url(&pq)).await;
        get(&proxy.url(&pq)).await;
        assert_eq!(up.count(&pq), 2, "{cc} must not be stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_misses_make_one_upstream_request() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, "")).await;
    let url = proxy.url(&format!("/hot?delay_ms=300&{CACHED}"));
    let tasks: Vec<_> = (0..100)
        .map(|_| tokio::spawn(get(Box::leak(url.clone().into_boxed_str()))))
        .collect();
    let mut bodies = Vec::new();
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.status, 200);
        bodies.push(got.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(up.total(), 1, "coalesced into one upstream request");
    let coalesced = proxy.metric("augur_coalesced_total").await;
    assert!(coalesced > 0.0, "augur_coalesced_total {coalesced}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncacheable_leader_does_not_serialise_waiters() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, "")).await;
    let url = proxy.url("/private?delay_ms=400&cc=no-store");
    let tasks: Vec<_> = (0..20)
        .map(|_| tokio::spawn(get(Box::leak(url.clone().into_boxed_str()))))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    assert_eq!(up.total(), 20, "every request fetched for itself");
    // Serialised waiters would reach the upstream one at a time.
    let peak = up.peak_concurrency();
    assert!(
        peak >= 10,
        "waiters fetched concurrently (peak upstream concurrency {peak})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_stored_once_served_both_ways() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, "")).await;
    let pq = format!("/big.json?size=20000&{CACHED}");
    let plain = get(&proxy.url(&pq)).await;
    assert_eq!(plain.body.len(), 20000);
    assert_eq!(plain.header("content-encoding"), "");
    assert!(plain
        .header("vary")
        .to_ascii_lowercase()
        .contains("accept-encoding"));
    let original = Bytes::from(common::json_body(20000));
    assert_eq!(plain.body, original);

    let z = get_with(&proxy.url(&pq), &[("accept-encoding", "gzip, zstd")]).await;
    assert_eq!(z.x_cache(), "HIT");
    assert_eq!(z.header("content-encoding"), "zstd");
    assert!(
        z.body.len() < 20000 / 3,
        "stored compressed ({} bytes)",
        z.body.len()
    );
    assert_eq!(zstd::decode_all(&z.body[..]).unwrap(), original);

    let again = get_with(&proxy.url(&pq), &[("accept-encoding", "gzip")]).await;
    assert_eq!(again.x_cache(), "HIT");
    assert_eq!(again.body, original);
    assert_eq!(up.count(&pq), 1);

    let saved = proxy.metric("augur_compression_saved_bytes_total").await;
    assert!(saved > 10_000.0, "{saved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_answered_from_the_stored_get() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, "")).await;
    let pq = format!("/h?size=3000&{CACHED}");
    get(&proxy.url(&pq)).await;
    let head = send(
        Request::head(proxy.url(&pq))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.x_cache(), "HIT");
    assert_eq!(head.header("content-length"), "3000");
    assert!(head.body.is_empty());
    assert_eq!(up.total(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_a_502_json_error() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = TestProxy::start(config(closed, "")).await;
    let got = get(&proxy.url("/x")).await;
    assert_eq!(got.status, 502);
    assert_eq!(got.header("content-type"), "application/json");
    assert_eq!(got.json()["error"]["code"], "upstream_unreachable");
    assert_eq!(got.json()["error"]["status"], 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_slow_is_a_504_json_error() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, "timeout = \"200ms\"")).await;
    let got = get(&proxy.url(&format!("/slow?delay_ms=1500&{CACHED}"))).await;
    assert_eq!(got.status, 504, "{:?}", got.body);
    assert_eq!(got.json()["error"]["code"], "upstream_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_a_404_json_error() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, "path_prefix = \"/api/\"")).await;
    let got = get(&proxy.url("/elsewhere")).await;
    assert_eq!(got.status, 404);
    assert_eq!(got.json()["error"]["code"], "no_route");
    assert_eq!(up.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_get_413_and_431() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, "")).await;
    // Declared larger than the 1 MiB limit: answered before any body is read. Raw TCP, because
    // a client that insists on writing a whole 2 MiB body races the proxy closing the connection.
    let head = "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 2097152\r\n\r\n";
    let reply = common::raw_exchange(proxy.addr, head.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("\"body_too_large\""), "{reply}");
    // A head that reaches max_header_bytes (16 KiB here) unfinished: hyper reads all of it,
    // refuses it, and closes with nothing unread (so no reset races the 431).
    let mut head = String::from("GET /x HTTP/1.1\r\nHost: t\r\nX-Huge: ");
    head.push_str(&"a".repeat(16 * 1024 - head.len()));
    let reply = common::raw_exchange(proxy.addr, head.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    assert_eq!(up.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_pass_through_with_forwarding_headers() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, "")).await;
    let req = Request::post(proxy.url(&format!("/orders?{CACHED}")))
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("x-forwarded-for", "10.1.2.3")
        .body(Full::new(Bytes::from_static(b"{\"a\":1}")))
        .unwrap();
    let got = send(req).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.x_cache(), "BYPASS");
    let seen = up.last_request_headers();
    assert!(
        !seen.contains_key("x-hop"),
        "Connection-named header removed"
    );
    assert_eq!(seen["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], proxy.addr.to_string());
    assert_eq!(seen["host"], up.addr.to_string());
    // A second POST goes upstream again.
    post(&proxy.url(&format!("/orders?{CACHED}"))).await;
    assert_eq!(up.total(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let up = TestUpstream::start().await;
    let mut proxy = TestProxy::start(config(up.addr, "")).await;
    let url = proxy.url("/slow?delay_ms=600");
    let in_flight = tokio::spawn(async move { get(&url).await });
    // Wait until the upstream has the request, then ask the proxy to stop.
    eventually(
        Duration::from_secs(1),
        "the upstream has the request",
        || async { up.total() == 1 },
    )
    .await;
    assert_eq!(up.total(), 1);
    let ready = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(ready.status, 200);
    proxy.shutdown();
    let got = in_flight.await.unwrap();
    assert_eq!(got.status, 200, "the in-flight request completed");
    let result = tokio::time::timeout(Duration::from_secs(5), proxy.task.take().unwrap()).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "server stopped cleanly");
    assert!(
        tokio::net::TcpStream::connect(proxy.addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, "")).await;
    let pq = format!("/m?{CACHED}");
    get(&proxy.url(&pq)).await;
    get(&proxy.url(&pq)).await;
    assert_eq!(get(&proxy.admin_url("/healthz")).await.status, 200);
    assert_eq!(get(&proxy.admin_url("/readyz")).await.status, 200);
    let text = String::from_utf8_lossy(&get(&proxy.admin_url("/metrics")).await.body).into_owned();
    for needle in [
        r#"augur_requests_total{route="api",cache="HIT",status="2xx"} 1"#,
        r#"augur_requests_total{route="api",cache="MISS",status="2xx"} 1"#,
        "augur_upstream_duration_seconds_bucket",
        "augur_cache_entries 1",
        "augur_cache_bytes ",
        "augur_cache_evictions_total 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // Purge by URL, then the next request is a miss.
    let purged = admin_post(&proxy.purge_url(&proxy.url(&pq))).await;
    assert_eq!(purged.json()["purged"], true, "{:?}", purged.body);
    assert_eq!(get(&proxy.url(&pq)).await.x_cache(), "MISS");
    assert_eq!(up.count(&pq), 2);
}
