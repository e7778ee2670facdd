//! Markov prefetching end to end: a real upstream that counts what it served, the real proxy
//! with its background prefetch worker, a real client. Waits are bounded polls, never sleeps
//! that decide the outcome; the cache clock is manual.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{
    admin_get, admin_post, config, eventually, get, get_with, until, TestProxy, TestUpstream,
    CACHED, PATIENCE,
};

/// `path`, fresh for a minute.
fn url(path: &str) -> String {
    format!("{path}?{CACHED}")
}

/// How `/prefetch/transitions` shows `pq`: the path, its query string redacted.
fn shown(pq: &str) -> String {
    format!("{}?…", pq.split('?').next().unwrap())
}

/// Empty the cache (what the client trained on is gone; the model stays).
async fn purge(proxy: &TestProxy) {
    assert_eq!(admin_post(&proxy.admin_url("/purge/all")).await.status, 200);
}

/// Wait until no prefetch is in flight (each one reached the cache or failed).
async fn settled(proxy: &TestProxy) {
    eventually(PATIENCE, "no prefetch in flight", || async {
        proxy.metric("augur_prefetch_in_flight").await == 0.0
    })
    .await;
}

async fn until_metric(proxy: &TestProxy, name: &str, at_least: f64) {
    eventually(PATIENCE, &format!("{name} >= {at_least}"), || async {
        proxy.metric(name).await >= at_least
    })
    .await;
}

const PREFETCH: &str = "prefetch = true";

/// `model.json` in `dir`, and the route and `[prefetch]` lines that use it (plus `more`).
fn with_state_file(dir: &tempfile::TempDir, more: &str) -> (std::path::PathBuf, String) {
    let file = dir.path().join("model.json");
    let extra = format!(
        "prefetch = true\n\n[prefetch]\nstate_file = \"{}\"{more}",
        file.display()
    );
    (file, extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trained_a_then_b_prefetches_b_and_the_client_hits() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, PREFETCH)).await;
    let (a, b) = (url("/a"), url("/b"));
    get(&proxy.url(&a)).await;
    get(&proxy.url(&b)).await; // learns a ─► b
    purge(&proxy).await;

    assert_eq!(get(&proxy.url(&a)).await.x_cache(), "MISS");
    until("the upstream sees b before the client asks", || {
        up.count(&b) == 2
    })
    .await;
    settled(&proxy).await;
    let got = get(&proxy.url(&b)).await;
    assert_eq!(got.x_cache(), "HIT");
    assert_eq!(up.count(&b), 2);
    until_metric(&proxy, "augur_prefetch_hits_total", 1.0).await;
    until_metric(&proxy, "augur_prefetch_used_total", 1.0).await;
    assert_eq!(proxy.metric("augur_prefetch_issued_total").await, 1.0);
    assert_eq!(proxy.metric("augur_prefetch_precision").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_told_apart_by_the_configured_cookie() {
    let up = TestUpstream::start().await;
    let extra = "prefetch = true\n\n[prefetch]\nclient_cookie = \"session\"";
    let proxy = TestProxy::start(config(up.addr, extra)).await;
    let (a, b, x, y) = (url("/a"), url("/b"), url("/x"), url("/y"));
    // Two clients interleaved from one address. By cookie they learn a ─► b and x ─► y; by
    // address (or by the whole Cookie line, which changes with `theme`) they would learn a ─► x.
    get_with(&proxy.url(&a), &[("cookie", "theme=1; session=s1")]).await;
    get_with(&proxy.url(&x), &[("cookie", "session=s2")]).await;
    get_with(&proxy.url(&b), &[("cookie", "session=s1;theme=2")]).await;
    get_with(&proxy.url(&y), &[("cookie", "session=s2")]).await;
    purge(&proxy).await;

    get_with(&proxy.url(&a), &[("cookie", "session=s3")]).await;
    until("b prefetched after a", || up.count(&b) == 2).await;
    settled(&proxy).await;
    assert_eq!(up.count(&x), 1, "x must not be predicted after a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_asking_while_the_prefetch_is_in_flight_waits_for_it() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, PREFETCH)).await;
    let (a, b) = (url("/a"), format!("/slow?delay_ms=400&{CACHED}"));
    get(&proxy.url(&a)).await;
    get(&proxy.url(&b)).await;
    purge(&proxy).await;

    get(&proxy.url(&a)).await;
    until("the prefetch reaches the upstream", || up.count(&b) == 2).await;
    let got = get(&proxy.url(&b)).await; // the prefetch is still waiting on the upstream
    assert_eq!(got.status, 200);
    assert_eq!(
        up.count(&b),
        2,
        "coalesced with the prefetch: one upstream request"
    );
    until_metric(&proxy, "augur_prefetch_used_total", 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_starts_when_the_request_arrives_not_when_it_completes() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, PREFETCH)).await;
    // a takes the upstream a second: its successor's prefetch need not wait for it.
    let (a, b) = (format!("/slow?delay_ms=1000&{CACHED}"), url("/b"));
    get(&proxy.url(&a)).await;
    get(&proxy.url(&b)).await; // learns a ─► b
    purge(&proxy).await;

    let a_url = proxy.url(&a);
    let client = tokio::spawn(async move { get(&a_url).await });
    until("b prefetched", || up.count(&b) == 2).await;
    // Predicted as a arrived, so b reached the upstream while a was still being fetched;
    // predicting after a's response would have sent b only once the client had its answer.
    assert!(
        !client.is_finished(),
        "b reached the upstream only after a was answered"
    );
    let got = client.await.unwrap();
    assert_eq!(got.x_cache(), "MISS");
    assert_eq!(up.count(&a), 2);
    settled(&proxy).await;
    assert_eq!(get(&proxy.url(&b)).await.x_cache(), "HIT");
    assert_eq!(up.count(&b), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_carries_ids_over() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, PREFETCH)).await;
    for id in [1, 2] {
        get(&proxy.url(&url(&format!("/users/{id}")))).await;
        get(&proxy.url(&url(&format!("/users/{id}/orders")))).await;
    }
    let orders7 = url("/users/7/orders");
    get(&proxy.url(&url("/users/7"))).await;
    until("/users/7/orders prefetched", || up.count(&orders7) == 1).await;
    settled(&proxy).await;
    assert_eq!(get(&proxy.url(&orders7)).await.x_cache(), "HIT");
    assert_eq!(up.count(&orders7), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_without_prefetch_is_never_prefetched() {
    let up = TestUpstream::start().await;
    // `api` (prefetch) serves /pf/…; `plain` (no prefetch) everything else.
    let extra = format!(
        "path_prefix = \"/pf/\"\nprefetch = true\n\n[[route]]\nname = \"plain\"\nupstream = \"http://{}\"",
        up.addr
    );
    let proxy = TestProxy::start(config(up.addr, &extra)).await;
    let (a, b) = (url("/a"), url("/b"));
    let (c, d) = (url("/pf/c"), url("/pf/d"));
    for p in [&a, &b, &c, &d] {
        get(&proxy.url(p)).await;
    }
    purge(&proxy).await;
    get(&proxy.url(&a)).await; // predicts b: not prefetchable
    get(&proxy.url(&c)).await; // predicts d: prefetched; the worker handles both in order
    until("control prefetch of /pf/d", || up.count(&d) == 2).await;
    assert_eq!(
        up.count(&b),
        1,
        "a route without prefetch = true is never prefetched"
    );

    // Only routes with prefetch = true are observed (M1): the model learned c ─► d and
    // nothing of a ─► b.
    let t = admin_get(&proxy.admin_url("/prefetch/transitions?limit=50")).await;
    let json = t.json();
    let strongest = json["strongest"].as_array().unwrap();
    let shows = |pq: &str| {
        strongest.iter().any(|t| {
            [&t["from"], &t["to"]]
                .iter()
                .any(|k| k.as_str().unwrap().ends_with(&shown(pq)))
        })
    };
    assert!(shows(&d), "{json}");
    assert!(!shows(&a) && !shows(&b), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_urls_are_not_observed() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, PREFETCH)).await;
    let long = url(&format!("/long/{}", "y".repeat(3000)));
    let (a, b) = (url("/a"), url("/b"));
    for p in [&a, &long, &b] {
        get(&proxy.url(p)).await;
    }
    until_metric(&proxy, "augur_prefetch_skipped_long_url_total", 1.0).await;
    // a ─► b is learned across the skipped request (it never reached the model); the long
    // URL is in no state.
    eventually(PATIENCE, "a ─► b learned", || async {
        let t = admin_get(&proxy.admin_url("/prefetch/transitions?limit=50")).await;
        let body = String::from_utf8_lossy(&t.body).into_owned();
        assert!(!body.contains("/long/"), "{body}");
        body.contains(&shown(&b))
    })
    .await;
}

/// `[prefetch]` with clients told apart by `x-client-id`, for tests that play several.
const BY_CLIENT: &str = "prefetch = true\n\n[prefetch]\nclient_header = \"x-client-id\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncacheable_prefetch_target_is_wasted_and_switched_off() {
    let up = TestUpstream::start().await;
    let extra = format!("{BY_CLIENT}\nbudget = 1.0");
    let proxy = TestProxy::start(config(up.addr, &extra)).await;
    let (a, x) = (url("/a"), "/x?cc=no-store".to_owned());
    get_with(&proxy.url(&a), &[("x-client-id", "trainer")]).await;
    get_with(&proxy.url(&x), &[("x-client-id", "trainer")]).await; // learns a ─► x
    for i in 0..100 {
        // Past the 5 s hit-for-pass mark each time: only the model can stop the prefetches.
        proxy.clock.advance(Duration::from_millis(5_500));
        let id = format!("visitor-{i}");
        get_with(&proxy.url(&a), &[("x-client-id", id.as_str())]).await;
    }
    settled(&proxy).await;
    let prefetched = up.count(&x) - 1;
    // min_samples = 3 by default; one more may start while the third is being credited.
    assert!(prefetched <= 4, "x prefetched {prefetched} times");
    assert!(prefetched >= 1, "x was never prefetched");
    until_metric(&proxy, "augur_prefetch_wasted_total", prefetched as f64).await;
    assert_eq!(
        proxy.metric("augur_prefetch_failed_total").await,
        prefetched as f64
    );
    assert_eq!(proxy.metric("augur_prefetch_issued_total").await, 0.0);
    let t = admin_get(&proxy.admin_url("/prefetch/transitions?limit=50")).await;
    let json = t.json();
    assert!(
        json["strongest"].as_array().unwrap().iter().any(|t| t["to"]
            .as_str()
            .unwrap()
            .ends_with(&shown(&x))
            && t["suppressed"] == true),
        "{json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_marked_key_is_never_prefetched() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, BY_CLIENT)).await;
    let (a, x) = (url("/a"), "/x?cc=no-store".to_owned());
    get_with(&proxy.url(&a), &[("x-client-id", "trainer")]).await;
    // Learns a ─► x; x's answer is not storable, so x is marked hit-for-pass.
    get_with(&proxy.url(&x), &[("x-client-id", "trainer")]).await;
    get_with(&proxy.url(&a), &[("x-client-id", "visitor")]).await;
    until_metric(&proxy, "augur_prefetch_skipped_pass_total", 1.0).await;
    settled(&proxy).await;
    assert_eq!(up.count(&x), 1, "a pass-marked x was prefetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_spend_the_global_budget() {
    let up = TestUpstream::start().await;
    let extra = format!("{BY_CLIENT}\nbudget = 1.0\nclient_budget = 0.1\nmax_concurrency = 64");
    let proxy = TestProxy::start(config(up.addr, &extra)).await;
    const N: usize = 30;
    let greedy = [("x-client-id", "greedy")];
    for i in 0..=N {
        get_with(&proxy.url(&url(&format!("/a{i}"))), &greedy).await;
        get_with(&proxy.url(&url(&format!("/b{i}"))), &greedy).await;
    }
    purge(&proxy).await;
    for i in 0..N {
        get_with(&proxy.url(&url(&format!("/a{i}"))), &greedy).await;
    }
    // Every a_i predicts b_i: each is prefetched or dropped by a budget.
    let outcomes = || async {
        proxy.metric("augur_prefetch_issued_total").await
            + proxy.metric("augur_prefetch_dropped_budget_total").await
            + proxy
                .metric("augur_prefetch_dropped_client_budget_total")
                .await
    };
    eventually(PATIENCE, "every prediction decided", || async {
        outcomes().await >= N as f64
    })
    .await;
    settled(&proxy).await;
    let issued = proxy.metric("augur_prefetch_issued_total").await;
    // The client's bucket: a burst of 1, then 0.1 per request of its own.
    assert!(issued <= 4.0, "greedy client issued {issued}");
    // The global bucket (1 per request, burst 20) is not spent: another client still gets
    // its prefetch.
    let last = url(&format!("/b{N}"));
    get_with(
        &proxy.url(&url(&format!("/a{N}"))),
        &[("x-client-id", "other")],
    )
    .await;
    until("b prefetched for another client", || up.count(&last) == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_file_is_private_and_saved_while_running() {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (file, extra) = with_state_file(&dir, "\nsave_interval = \"1s\"");
    let proxy = TestProxy::start(config(up.addr, &extra)).await;
    let (a, b) = (url("/a"), url("/b"));
    get(&proxy.url(&a)).await;
    get(&proxy.url(&b)).await;
    // No shutdown: a crash now would keep what the last periodic save wrote.
    eventually(PATIENCE, "model saved while running", || async {
        std::fs::read_to_string(&file).is_ok_and(|j| j.contains("/b?"))
    })
    .await;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["model.json"], "no temporary file left behind");
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saving_never_writes_through_a_planted_file() {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Someone who can write to the directory plants the old, predictable temporary name.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("model.tmp")).unwrap();
    let (file, extra) = with_state_file(&dir, "");
    let mut proxy = TestProxy::start(config(up.addr, &extra)).await;
    get(&proxy.url(&url("/a"))).await;
    get(&proxy.url(&url("/b"))).await;
    proxy.shutdown();
    let done = tokio::time::timeout(Duration::from_secs(5), proxy.task.take().unwrap()).await;
    assert!(matches!(done, Ok(Ok(Ok(())))));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    assert!(std::fs::read_to_string(&file).unwrap().contains("/b?"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_never_forwarded_unless_listed() {
    let up = TestUpstream::start().await;
    let extra = "prefetch = true\nprefetch_forward_headers = [\"Accept-Language\"]";
    let proxy = TestProxy::start(config(up.addr, extra)).await;
    let h = [
        ("authorization", "Bearer secret"),
        ("cookie", "session=s3cret"),
        ("accept-language", "fr"),
    ];
    let (a, b) = (url("/a"), url("/b"));
    get_with(&proxy.url(&a), &h).await;
    get_with(&proxy.url(&b), &h).await;
    purge(&proxy).await;
    get_with(&proxy.url(&a), &h).await;
    until("prefetch of b", || up.count(&b) == 2).await;
    settled(&proxy).await;
    // The prefetch runs alongside the client's own request for a (which carries the
    // credentials), so the upstream's last request may be either: read what the prefetch sent
    // from the stored b, whose response echoes its request headers as x-echo-*.
    let got = get(&proxy.url(&b)).await;
    assert_eq!(got.x_cache(), "HIT");
    assert_eq!(up.count(&b), 2);
    assert_eq!(got.header("x-echo-authorization"), "", "{:?}", got.headers);
    assert_eq!(got.header("x-echo-cookie"), "", "{:?}", got.headers);
    assert_eq!(got.header("x-echo-accept-language"), "fr");
    assert_eq!(got.header("x-echo-x-augur-prefetch"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetch_gone_from_the_cache_before_its_window_ends_is_wasted_as_evicted() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, PREFETCH)).await;
    let (a, b, c) = (url("/a"), url("/b"), url("/c"));
    get(&proxy.url(&a)).await;
    get(&proxy.url(&b)).await; // learns a ─► b
    purge(&proxy).await;
    get(&proxy.url(&a)).await;
    until("b prefetched", || up.count(&b) == 2).await;
    settled(&proxy).await;
    purge(&proxy).await; // b leaves the cache unused, well inside the 60 s use_window
    proxy.clock.advance(Duration::from_secs(2)); // the worker sweeps at most once a second
    get(&proxy.url(&c)).await;
    until_metric(&proxy, "augur_prefetch_wasted_evicted_total", 1.0).await;
    assert_eq!(proxy.metric("augur_prefetch_wasted_total").await, 1.0);
    assert_eq!(proxy.metric("augur_prefetch_used_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precision_floor_switches_a_noisy_transition_off() {
    let up = TestUpstream::start().await;
    let extra = "prefetch = true\n\n[prefetch]\nclient_header = \"x-client-id\"\nprecision_floor = 0.5\nmin_samples = 2\nuse_window = \"1s\"\nbudget = 1.0\nidle_gap = \"5s\"";
    let proxy = TestProxy::start(config(up.addr, extra)).await;
    let n = [("x-client-id", "noisy")];
    let ctl = [("x-client-id", "control")];
    let (a, b) = (url("/a"), url("/b"));
    let (c, d) = (url("/c"), url("/d"));
    get_with(&proxy.url(&a), &n).await;
    get_with(&proxy.url(&b), &n).await;
    get_with(&proxy.url(&c), &ctl).await;
    get_with(&proxy.url(&d), &ctl).await;

    // Each round: the cache is emptied; the noisy client asks for a but never for b. The control
    // client's c ─► d prefetch (which it uses) marks the point where the worker has handled the
    // round; then every prefetch of the round is waited for until stored.
    let mut prefetched_b = Vec::new();
    for round in 1..=4 {
        purge(&proxy).await;
        proxy.clock.advance(Duration::from_secs(2)); // past use_window: the last b is wasted
        get_with(&proxy.url(&a), &n).await;
        get_with(&proxy.url(&c), &ctl).await;
        until("control prefetch", || up.count(&d) == 1 + round).await;
        settled(&proxy).await;
        assert_eq!(get_with(&proxy.url(&d), &ctl).await.x_cache(), "HIT");
        prefetched_b.push(up.count(&b) - 1);
    }
    // Rounds 1 and 2 prefetch b; both are wasted; from round 3 the transition is off.
    assert_eq!(prefetched_b, vec![1, 2, 2, 2]);
    until_metric(&proxy, "augur_prefetch_wasted_total", 2.0).await;
    // Each b was purged before the sweep that resolved it, but its window had ended by then:
    // unused, not evicted.
    assert_eq!(
        proxy.metric("augur_prefetch_wasted_evicted_total").await,
        0.0
    );
    let t = admin_get(&proxy.admin_url("/prefetch/transitions?limit=50")).await;
    let json = t.json();
    assert!(
        json["strongest"].as_array().unwrap().iter().any(|t| t["to"]
            .as_str()
            .unwrap()
            .ends_with(&shown(&b))
            && t["suppressed"] == true),
        "{json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_caps_prefetches_under_a_burst() {
    let up = TestUpstream::start().await;
    let extra = "prefetch = true\n\n[prefetch]\nbudget = 0.1\nmax_concurrency = 64";
    let proxy = TestProxy::start(config(up.addr, extra)).await;
    const N: usize = 30;
    for i in 0..N {
        get(&proxy.url(&url(&format!("/a{i}")))).await;
        get(&proxy.url(&url(&format!("/b{i}")))).await;
    }
    purge(&proxy).await;
    let before = proxy.metric("augur_prefetch_dropped_budget_total").await;
    for i in 0..N {
        get(&proxy.url(&url(&format!("/a{i}")))).await;
    }
    // Every a_i predicts b_i: each is either prefetched or dropped by the budget.
    let mut issued = 0.0;
    let mut dropped = 0.0;
    for _ in 0..500 {
        issued = proxy.metric("augur_prefetch_issued_total").await;
        dropped = proxy.metric("augur_prefetch_dropped_budget_total").await - before;
        if issued + dropped >= N as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Burst of 2 tokens, plus 0.1 per request: at most 2 + 3 over the burst (and the
    // training requests refilled the bucket only up to the burst).
    assert!(issued <= 5.0, "issued {issued}, dropped {dropped}");
    assert!(
        dropped >= (N - 5) as f64,
        "issued {issued}, dropped {dropped}"
    );
    let b_fetches: usize = (0..N).map(|i| up.count(&url(&format!("/b{i}")))).sum();
    assert_eq!(b_fetches, N + issued as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_survives_a_restart() {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (file, extra) = with_state_file(&dir, "");
    let (a, b) = (url("/a"), url("/b"));
    // The model keys on the request's host: send the same one to both instances.
    let host = [("host", "api.example")];
    let mut first = TestProxy::start(config(up.addr, &extra)).await;
    get_with(&first.url(&a), &host).await;
    get_with(&first.url(&b), &host).await;
    first.shutdown();
    let done = tokio::time::timeout(Duration::from_secs(5), first.task.take().unwrap()).await;
    assert!(matches!(done, Ok(Ok(Ok(())))));
    assert!(file.exists(), "model saved on shutdown");

    let second = TestProxy::start(config(up.addr, &extra)).await; // empty cache, loaded model
    get_with(&second.url(&a), &host).await;
    until("b prefetched by the restarted proxy", || up.count(&b) == 2).await;
    settled(&second).await;
    assert_eq!(get_with(&second.url(&b), &host).await.x_cache(), "HIT");
}
