//! Security finding C1 end to end: a request that carries credentials (`Cookie`, an API-key
//! header, `Authorization`) is answered from the cache only with what the origin said may be
//! shared, and its own answer is stored only when the origin says so explicitly. A real
//! upstream that echoes the request headers it received (`x-echo-<name>`), the real proxy, a
//! real client, a manual clock; waits are bounded polls.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::start_following as start;
use common::PATIENCE;
use common::{
    admin_post, config, eventually, get, get_with, pq, until, Got, TestProxy, TestUpstream,
};

/// The shipped configs' catch-all: a route TTL for origins that send no caching headers.
const TTL: &str = "ttl = \"30s\"";

/// GET `p` with `name: value` (none when `value` is empty).
async fn as_client(proxy: &TestProxy, p: &str, name: &str, value: &str) -> Got {
    if value.is_empty() {
        get(&proxy.url(p)).await
    } else {
        get_with(&proxy.url(p), &[(name, value)]).await
    }
}

/// Alice, then bob: each gets the answer made for their own cookie.
async fn alice_then_bob(proxy: &TestProxy, p: &str) {
    for cookie in ["s=alice", "s=bob"] {
        assert_own(
            &as_client(proxy, p, "cookie", cookie).await,
            "cookie",
            cookie,
        );
    }
}

/// The response was made for the client that sent `value` in `name` (the upstream echoes
/// what it received), not served from what another client's request stored.
fn assert_own(got: &Got, name: &str, value: &str) {
    assert_eq!(got.status, 200);
    assert_eq!(
        got.header(&format!("x-echo-{name}")),
        value,
        "{name}: {value:?} was answered with another client's response (x-cache {})",
        got.x_cache()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_response_under_a_route_ttl_is_never_served_to_another_client() {
    let (up, proxy) = start(TTL).await;
    let alice = as_client(&proxy, "/me", "cookie", "s=alice").await;
    assert_eq!(alice.x_cache(), "MISS");
    assert_own(&alice, "cookie", "s=alice");
    assert_own(
        &as_client(&proxy, "/me", "cookie", "s=bob").await,
        "cookie",
        "s=bob",
    );
    // Anonymous: not alice's; its own answer is stored (the route TTL applies to it) ...
    assert_own(&as_client(&proxy, "/me", "cookie", "").await, "cookie", "");
    assert_eq!(get(&proxy.url("/me")).await.x_cache(), "HIT");
    // ... and never answers a request with a cookie.
    assert_own(
        &as_client(&proxy, "/me", "cookie", "s=carol").await,
        "cookie",
        "s=carol",
    );
    assert_eq!(up.count("/me"), 4);
    assert_eq!(proxy.metric("augur_credentialed_requests_total").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_headers_count_as_credentials_by_default() {
    let (up, proxy) = start(TTL).await;
    for name in ["x-api-key", "x-auth-token", "api-key", "x-access-token"] {
        let p = format!("/me/profile/{name}");
        assert_own(
            &as_client(&proxy, &p, name, "alice-key").await,
            name,
            "alice-key",
        );
        assert_own(
            &as_client(&proxy, &p, name, "bob-key").await,
            name,
            "bob-key",
        );
        assert_own(&as_client(&proxy, &p, name, "").await, name, "");
        assert_own(
            &as_client(&proxy, &p, name, "carol-key").await,
            name,
            "carol-key",
        );
        assert_eq!(up.count(&p), 4, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_credential_headers_replace_the_default_list() {
    let up = TestUpstream::start().await;
    let mut config = config(up.addr, TTL);
    config.cache.credential_headers = vec![http::HeaderName::from_static("x-tenant-secret")];
    let proxy = TestProxy::start(config).await;
    let name = "x-tenant-secret";
    assert_own(&as_client(&proxy, "/t", name, "a").await, name, "a");
    assert_own(&as_client(&proxy, "/t", name, "b").await, name, "b");
    assert_eq!(up.count("/t"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicitly_shared_answer_to_a_cookie_request_is_stored_and_served() {
    let (up, proxy) = start(TTL).await;
    let p = pq("/pub", &[("cc", "public, max-age=60")]);
    assert_eq!(
        as_client(&proxy, &p, "cookie", "s=alice").await.x_cache(),
        "MISS"
    );
    assert_eq!(
        as_client(&proxy, &p, "cookie", "s=bob").await.x_cache(),
        "HIT"
    );
    assert_eq!(get(&proxy.url(&p)).await.x_cache(), "HIT");
    assert_eq!(up.count(&p), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharing_without_explicit_freshness_never_takes_the_route_ttl() {
    let (up, proxy) = start(TTL).await;
    // `public` says "may be shared", but not for how long: the route TTL is not a licence to
    // keep one user's answer for everyone.
    let p = pq("/pub-no-age", &[("cc", "public")]);
    alice_then_bob(&proxy, &p).await;
    assert_eq!(up.count(&p), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heuristic_freshness_never_applies_to_a_cookie_request() {
    let (up, proxy) = start("").await;
    let p = pq(
        "/lm",
        &[("h_last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")],
    );
    alice_then_bob(&proxy, &p).await;
    assert_eq!(up.count(&p), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_grace_never_stretches_an_answer_to_a_cookie_request() {
    let (up, proxy) = start("grace = \"60s\"").await;
    let p = pq("/g", &[("cc", "public, max-age=1")]);
    assert_own(
        &as_client(&proxy, &p, "cookie", "s=alice").await,
        "cookie",
        "s=alice",
    );
    proxy.clock.advance(Duration::from_secs(5));
    // Past the origin's own second: the route's grace does not stretch alice's answer.
    assert_own(
        &as_client(&proxy, &p, "cookie", "s=bob").await,
        "cookie",
        "s=bob",
    );
    assert_eq!(up.count(&p), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_keys_on_the_cookie_stores_per_cookie() {
    let (up, proxy) = start(&format!("{TTL}\nkey_headers = [\"Cookie\"]")).await;
    assert_eq!(
        as_client(&proxy, "/k", "cookie", "s=alice").await.x_cache(),
        "MISS"
    );
    assert_own(
        &as_client(&proxy, "/k", "cookie", "s=bob").await,
        "cookie",
        "s=bob",
    );
    let again = as_client(&proxy, "/k", "cookie", "s=alice").await;
    assert_eq!(again.x_cache(), "HIT");
    assert_own(&again, "cookie", "s=alice");
    assert_eq!(up.count("/k"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_different_cookies_each_get_their_own_answer() {
    let (up, proxy) = start(TTL).await;
    let proxy = std::sync::Arc::new(proxy);
    let p = pq("/burst", &[("delay_ms", "300")]);
    // Nine cookies and one anonymous request, all for one uncached URL at once: whoever leads
    // the flight, nobody else is handed its answer.
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let (proxy, p) = (proxy.clone(), p.clone());
            tokio::spawn(async move {
                let cookie = if i == 0 {
                    String::new()
                } else {
                    format!("s=user{i}")
                };
                let got = as_client(&proxy, &p, "cookie", &cookie).await;
                (cookie, got)
            })
        })
        .collect();
    for t in tasks {
        let (cookie, got) = tokio::time::timeout(PATIENCE, t).await.unwrap().unwrap();
        assert_own(&got, "cookie", &cookie);
    }
    assert!(up.count(&p) >= 10, "each cookie fetched for itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetched_anonymous_copy_never_answers_a_cookie_request() {
    let (up, proxy) = start(&format!("{TTL}\nprefetch = true")).await;
    let (a, b) = ("/pf/a", "/pf/b");
    get(&proxy.url(a)).await;
    get(&proxy.url(b)).await; // learns a ─► b
    assert_eq!(admin_post(&proxy.admin_url("/purge/all")).await.status, 200);
    get(&proxy.url(a)).await;
    until("b prefetched after a", || up.count(b) == 2).await;
    eventually(PATIENCE, "the prefetch stored b", || async {
        proxy.metric("augur_cache_stored_total").await >= 4.0
    })
    .await;
    assert_eq!(get(&proxy.url(b)).await.x_cache(), "HIT", "b is stored");
    let logged_in = as_client(&proxy, b, "cookie", "s=alice").await;
    assert_own(&logged_in, "cookie", "s=alice");
    assert_eq!(up.count(b), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_refresh_never_carries_the_triggering_clients_cookie() {
    let (up, proxy) = start("").await;
    let p = pq(
        "/swr",
        &[("cc", "public, max-age=1, stale-while-revalidate=60")],
    );
    assert_own(&get(&proxy.url(&p)).await, "cookie", "");
    proxy.clock.advance(Duration::from_secs(5));
    // Stale within its window: alice gets the shared copy at once and triggers a refresh.
    let stale = as_client(&proxy, &p, "cookie", "s=alice").await;
    assert_eq!(stale.x_cache(), "STALE");
    until("the refresh reached the upstream", || up.count(&p) == 2).await;
    assert_eq!(
        up.last_request_headers().get("cookie"),
        None,
        "the refresh updates the copy stored for everyone: it goes without alice's cookie"
    );
    eventually(PATIENCE, "the refreshed copy is stored", || async {
        proxy.metric("augur_cache_stored_total").await >= 2.0
    })
    .await;
    let anonymous = get(&proxy.url(&p)).await;
    assert_eq!(anonymous.x_cache(), "HIT");
    assert_own(&anonymous, "cookie", "");
}
