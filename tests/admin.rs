//! The admin API's guard rails, end to end over real sockets: bearer tokens and their scopes,
//! the refusal without a token, the `Origin` refusal, the open metrics and health endpoints
//! (on the admin listener and on `metrics_listen`), query strings redacted from
//! `/prefetch/transitions`, one `/purge/all` at a time against a real (frozen) Redis; and the
//! upstream's error details kept out of 502 bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::time::Duration;

use common::{
    admin_post, config, config_with_admin, eventually, get, get_with, post, post_with, token_file,
    Got, TestProxy, TestUpstream, CACHED, PURGE_TOKEN, READ_TOKEN,
};
use redis_server::RedisServer;

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A stored, fresh entry at `pq`, answered from the cache.
async fn cached(proxy: &TestProxy, pq: &str) {
    get(&proxy.url(pq)).await;
    assert_eq!(get(&proxy.url(pq)).await.x_cache(), "HIT");
}

/// An upstream and a proxy holding one fresh entry at `path`; `admin` is the `[admin]` body,
/// `None` for the test tokens. Returns the entry's path and query.
async fn with_entry(admin: Option<&str>, path: &str) -> (TestUpstream, TestProxy, String) {
    let up = TestUpstream::start().await;
    let cfg = match admin {
        Some(admin) => config_with_admin(up.addr, admin, ""),
        None => config(up.addr, ""),
    };
    let proxy = TestProxy::start(cfg).await;
    let pq = format!("{path}?{CACHED}");
    cached(&proxy, &pq).await;
    (up, proxy, pq)
}

fn error_code(got: &Got) -> String {
    got.json()["error"]["code"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_configured_the_protected_endpoints_refuse() {
    let (up, proxy, pq) = with_entry(Some(""), "/kept").await;

    let purged = post(&proxy.purge_url(&proxy.url(&pq))).await;
    assert_eq!(purged.status, 403, "{:?}", purged.body);
    assert_eq!(error_code(&purged), "admin_auth_not_configured");
    let message = purged.json()["error"]["message"].to_string();
    assert!(
        message.contains("token_file"),
        "says how to fix it: {message}"
    );
    // Even a token is no use when none is configured.
    let with_token = post_with(
        &proxy.admin_url("/purge/all"),
        &[("authorization", &bearer(PURGE_TOKEN))],
    )
    .await;
    assert_eq!(with_token.status, 403);
    for path in ["/cache", "/prefetch/transitions"] {
        assert_eq!(get(&proxy.admin_url(path)).await.status, 403, "{path}");
    }

    assert_eq!(get(&proxy.url(&pq)).await.x_cache(), "HIT", "still stored");
    assert_eq!(up.count(&pq), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_scopes() {
    let (up, proxy, pq) = with_entry(None, "/scoped").await;
    let purge = proxy.purge_url(&proxy.url(&pq));

    let none = post(&purge).await;
    assert_eq!(none.status, 401, "{:?}", none.body);
    assert!(none.header("www-authenticate").starts_with("Bearer"));
    let wrong_token = format!("{PURGE_TOKEN}x");
    for wrong in [
        bearer(&wrong_token),
        format!("Basic {PURGE_TOKEN}"),
        "Bearer".into(),
    ] {
        let got = post_with(&purge, &[("authorization", &wrong)]).await;
        assert_eq!(got.status, 401, "{wrong}");
        assert!(got.header("www-authenticate").starts_with("Bearer"));
    }
    let read_only = post_with(&purge, &[("authorization", &bearer(READ_TOKEN))]).await;
    assert_eq!(read_only.status, 403);
    assert_eq!(error_code(&read_only), "insufficient_scope");
    assert!(read_only
        .header("www-authenticate")
        .contains("insufficient_scope"));
    assert_eq!(
        get(&proxy.url(&pq)).await.x_cache(),
        "HIT",
        "no refused call purged"
    );

    // Read scope opens the read endpoints.
    let read = [("authorization", bearer(READ_TOKEN))];
    let read: Vec<(&str, &str)> = read.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let c = get_with(&proxy.admin_url("/cache"), &read).await;
    assert_eq!(c.status, 200);
    assert_eq!(c.json()["entries"], 1);
    assert_eq!(get(&proxy.admin_url("/cache")).await.status, 401);

    let purged = admin_post(&purge).await;
    assert_eq!(purged.status, 200);
    assert_eq!(purged.json()["purged"], true);
    assert_eq!(get(&proxy.url(&pq)).await.x_cache(), "MISS", "gone");
    assert_eq!(up.count(&pq), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_an_origin_is_refused_even_with_a_valid_token() {
    let (_up, proxy, pq) = with_entry(None, "/origin").await;
    let auth = bearer(PURGE_TOKEN);
    for origin in [
        "http://evil.example",
        "null",
        &format!("http://{}", proxy.admin),
    ] {
        let h = [("authorization", auth.as_str()), ("origin", origin)];
        let got = post_with(&proxy.purge_url(&proxy.url(&pq)), &h).await;
        assert_eq!(got.status, 403, "{origin}");
        assert_eq!(error_code(&got), "origin_refused");
        let got = post_with(&proxy.admin_url("/purge/all"), &h).await;
        assert_eq!(got.status, 403, "{origin}");
        let got = get_with(&proxy.admin_url("/prefetch/transitions"), &h).await;
        assert_eq!(got.status, 403, "{origin}");
    }
    assert_eq!(get(&proxy.url(&pq)).await.x_cache(), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_stay_open_and_get_their_own_listener() {
    let up = TestUpstream::start().await;
    let extra = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
"#;
    // The shared config sets [server] itself; build this one from the admin body alone.
    let file = token_file(&format!("purge:{PURGE_TOKEN}\n"));
    let text = format!(
        "[admin]\ntoken_file = \"{}\"\n{extra}\n[[route]]\nname = \"api\"\nupstream = \"http://{}\"\n",
        file.path().display(),
        up.addr
    );
    let cfg = augur::config::Config::from_str(&text, "metrics.toml").unwrap();
    let proxy = TestProxy::start(cfg).await;
    let metrics = proxy.metrics.expect("the metrics listener is bound");
    for base in [proxy.admin, metrics] {
        for path in ["/metrics", "/healthz", "/readyz"] {
            let got = get(&format!("http://{base}{path}")).await;
            assert_eq!(got.status, 200, "{base}{path} without a token");
        }
    }
    let text =
        String::from_utf8_lossy(&get(&format!("http://{metrics}/metrics")).await.body).into_owned();
    assert!(text.contains("augur_cache_entries"), "{text}");
    // Nothing else is served there, token or not.
    let auth = [("authorization", &*bearer(PURGE_TOKEN))];
    for (post, path) in [
        (true, "/purge/all"),
        (false, "/cache"),
        (false, "/prefetch/transitions"),
    ] {
        let url = format!("http://{metrics}{path}");
        let got = if post {
            post_with(&url, &auth).await
        } else {
            get_with(&url, &auth).await
        };
        assert_eq!(got.status, 404, "{path} on the metrics listener");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_show_paths_without_query_strings() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, "prefetch = true")).await;
    let a = format!("/pf/login?{CACHED}");
    let b =
        format!("/pf/reset-password?token=s3cr3t-reset-token-1&email=user1%40example.com&{CACHED}");
    get(&proxy.url(&a)).await;
    get(&proxy.url(&b)).await; // learns a ─► b
    let read = bearer(READ_TOKEN);
    let got = get_with(
        &proxy.admin_url("/prefetch/transitions?limit=50"),
        &[("authorization", &read)],
    )
    .await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let body = String::from_utf8_lossy(&got.body).into_owned();
    assert!(
        body.contains("/pf/reset-password"),
        "the path stays: {body}"
    );
    for secret in ["s3cr3t", "user1", "token=", "email", "max-age"] {
        assert!(!body.contains(secret), "{secret} leaked: {body}");
    }
    assert_eq!(
        get(&proxy.admin_url("/prefetch/transitions")).await.status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_all_reports_what_it_did() {
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, "")).await;
    cached(&proxy, &format!("/one?{CACHED}")).await;
    cached(&proxy, &format!("/two?{CACHED}")).await;
    let got = admin_post(&proxy.admin_url("/purge/all")).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let json = got.json();
    assert_eq!(json["purged"], "all");
    assert_eq!(json["l1_entries"], 2, "{json}");
    assert!(json["l2_keys"].is_null(), "no [redis]: {json}");
}

/// A hung Redis holds the first `/purge/all` for `connect_timeout`; the calls that arrive
/// meanwhile are turned away instead of piling up behind it, and the first one says that Redis
/// was not purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_all_runs_one_at_a_time() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let section = format!(
        "\n[redis]\nurl = \"{}\"\nkey_prefix = \"augur-admin:\"\ntimeout = \"100ms\"\nconnect_timeout = \"3s\"\nbreaker_cooldown = \"200ms\"\n",
        redis.url()
    );
    let proxy = TestProxy::start(config(up.addr, &section)).await;
    eventually(Duration::from_secs(5), "Redis connected", || async {
        get(&proxy.admin_url("/readyz")).await.json()["status"] == "ready"
    })
    .await;
    cached(&proxy, &format!("/r?{CACHED}")).await;
    eventually(Duration::from_secs(5), "write-behind to Redis", || async {
        let n: usize = redis::cmd("DBSIZE").query(&mut redis.conn()).unwrap();
        n == 1
    })
    .await;

    redis.freeze(true);
    let url = proxy.admin_url("/purge/all");
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { admin_post(&url).await })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut reports = Vec::new();
    for call in calls {
        let got = tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .expect("a purge answered within its bound")
            .unwrap();
        statuses.push(got.status.as_u16());
        reports.push(got.json());
    }
    redis.freeze(false);
    statuses.sort_unstable();
    assert_eq!(statuses, vec![409, 409, 503], "{reports:?}");
    let first = reports.iter().find(|r| r["purged"] == "l1").unwrap();
    assert_eq!(first["l1_entries"], 1, "{first}");
    assert_eq!(first["error"]["code"], "l2_purge_failed", "{first}");
    let busy = reports
        .iter()
        .find(|r| r["error"]["code"] == "purge_in_progress");
    assert!(busy.is_some(), "{reports:?}");

    // Redis back: the purge goes through and says how many keys it removed.
    eventually(
        Duration::from_secs(10),
        "a purge after Redis thaws",
        || async {
            let got = admin_post(&url).await;
            got.status == 200 && got.json()["l2_keys"] == 1
        },
    )
    .await;
}

/// L10: what went wrong inside (OS errors, internal addresses, hyper's wording) goes to the log;
/// the client gets the stable code and a fixed message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_error_details_stay_in_the_log() {
    // Nothing listens here: a connect error ("Connection refused (os error 111)").
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // Accepts and hangs up at once: a protocol error from the client.
    let rude = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rude_addr = rude.local_addr().unwrap();
    let hangups = tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((s, _)) = rude.accept().await else {
                return;
            };
            drop(s);
        }
    });
    for (upstream, code, message) in [
        (closed, "upstream_unreachable", "upstream unreachable"),
        (rude_addr, "upstream_error", "upstream failed"),
    ] {
        let proxy = TestProxy::start(config(upstream, "")).await;
        let got = get(&proxy.url("/x")).await;
        assert_eq!(got.status, 502);
        assert_eq!(error_code(&got), code);
        assert_eq!(got.json()["error"]["message"], message);
        let body = String::from_utf8_lossy(&got.body).into_owned();
        for detail in [
            "os error",
            "refused",
            "closed",
            "127.0.0.1",
            &upstream.port().to_string(),
            "hyper",
            "SendRequest",
        ] {
            assert!(
                !body.contains(detail),
                "{detail:?} reached the client: {body}"
            );
        }
    }
    hangups.abort();
}
