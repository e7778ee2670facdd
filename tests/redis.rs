//! Redis as the shared second tier, end to end: real `redis-server` processes (a single node and
//! a three-master cluster), real upstream, real proxies. No mocks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use augur::cache::entry::{Entry, Limits, Seal, StoredBody};
use augur::clock::Clock;
use bytes::Bytes;
use common::{
    admin_get, admin_post, config, eventually, get, until, TestProxy, TestUpstream, CACHED,
};
use redis_server::{RedisCluster, RedisServer};

const PREFIX: &str = "augur-test:";

/// The fleet's secret, as its `secret_file` holds it (with the trailing newline of `echo`).
const SECRET: &[u8] = b"a fleet secret for the tests, 40 bytes..";

/// `secret_file = "…"`: the secret written once into this test binary's own scratch directory.
fn secret_line() -> String {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let path = PATH.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("redis-test-secret");
        std::fs::write(&path, [SECRET, b"\n"].concat()).unwrap();
        path
    });
    format!("secret_file = \"{}\"", path.display())
}

/// The seal and limits this fleet's values carry (`[redis]` and `[cache]` of `config`).
fn fleet_seal() -> (Seal, Limits) {
    let limits = Limits {
        max_value: 1 << 20,
        max_body: 8 << 20,
    };
    (Seal::new(Some(SECRET)), limits)
}

/// `[redis]` with the fleet's secret.
fn redis_section(url: &str, extra: &str) -> String {
    let secret = secret_line();
    unauthenticated_section(url, &format!("{secret}\n{extra}"))
}

/// `[redis]` without a secret: values are bounds-checked but not authenticated.
fn unauthenticated_section(url: &str, extra: &str) -> String {
    format!("\n[redis]\nurl = \"{url}\"\nkey_prefix = \"{PREFIX}\"\ntimeout = \"100ms\"\nbreaker_cooldown = \"200ms\"\n{extra}\n")
}

fn cluster_section(urls: &[String]) -> String {
    let nodes: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "\n[redis]\ncluster = [{}]\nkey_prefix = \"{PREFIX}\"\ntimeout = \"200ms\"\n{}\n",
        nodes.join(", "),
        secret_line()
    )
}

/// What every instance of a fleet sees behind its load balancer: one Host (the key includes it).
const HOST: &str = "api.example";

/// GET `pq` from `proxy` with the fleet's Host.
async fn fetch(proxy: &TestProxy, pq: &str) -> common::Got {
    common::get_with(&proxy.url(pq), &[("host", HOST)]).await
}

fn keys(server: &RedisServer) -> Vec<Vec<u8>> {
    redis::cmd("KEYS")
        .arg(format!("{PREFIX}*"))
        .query(&mut server.conn())
        .unwrap()
}

/// Wait (up to 5 s) until the write-behind has put `n` entries in Redis.
async fn written(redis: &RedisServer, n: usize) {
    eventually(
        Duration::from_secs(5),
        &format!("write-behind of {n} entries to Redis"),
        || async { keys(redis).len() == n },
    )
    .await;
}

/// Both instances subscribed to the invalidation channel (so a purge reaches them).
async fn subscribed(conn: &mut redis::Connection, n: usize) {
    until(&format!("{n} subscribers to {PREFIX}invalidate"), || {
        let (_, count): (String, usize) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(format!("{PREFIX}invalidate"))
            .query(conn)
            .unwrap();
        count >= n
    })
    .await;
}

/// Connecting is asynchronous by design (Augur starts without Redis): wait for it.
async fn l2_ready(proxy: &TestProxy) {
    let url = proxy.admin_url("/readyz");
    eventually(Duration::from_secs(5), "L2 connected", || async {
        get(&url).await.json()["status"] == "ready"
    })
    .await;
}

async fn entries(proxy: &TestProxy) -> u64 {
    let got = admin_get(&proxy.admin_url("/cache")).await;
    got.json()["entries"].as_u64().unwrap()
}

/// Two proxy instances sharing one Redis, both connected to it.
async fn two_instances(redis: &RedisServer, up: &TestUpstream) -> (TestProxy, TestProxy) {
    let cfg = config(up.addr, &redis_section(&redis.url(), ""));
    let a = TestProxy::start(cfg.clone()).await;
    let b = TestProxy::start(cfg).await;
    l2_ready(&a).await;
    l2_ready(&b).await;
    (a, b)
}

/// Two instances on `section`, connected; A fetched `pq` and wrote it behind. Returns both, A's
/// response, and the Redis key it went to.
async fn one_shared_entry(
    redis: &RedisServer,
    up: &TestUpstream,
    section: &str,
    pq: &str,
) -> (TestProxy, TestProxy, common::Got, Vec<u8>) {
    let cfg = config(up.addr, section);
    let a = TestProxy::start(cfg.clone()).await;
    let b = TestProxy::start(cfg).await;
    l2_ready(&a).await;
    l2_ready(&b).await;
    let first = fetch(&a, pq).await;
    written(redis, 1).await;
    let key = keys(redis).remove(0);
    (a, b, first, key)
}

fn set_value(redis: &RedisServer, key: &[u8], value: &[u8]) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("PX")
        .arg(60_000)
        .query(&mut redis.conn())
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_upstream_fetch() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let (a, b) = two_instances(&redis, &up).await;
    let pq = format!("/users/1?size=5000&{CACHED}");

    let first = fetch(&a, &pq).await;
    assert_eq!((first.status.as_u16(), first.x_cache()), (200, "MISS"));
    written(&redis, 1).await;

    let shared = fetch(&b, &pq).await;
    assert_eq!(shared.x_cache(), "HIT");
    assert_eq!(shared.header("x-cache-tier"), "L2");
    assert_eq!(shared.body, first.body);
    let again = fetch(&b, &pq).await;
    assert_eq!(again.x_cache(), "HIT");
    assert_eq!(again.header("x-cache-tier"), "", "promoted: now an L1 hit");
    assert_eq!(up.count(&pq), 1, "one upstream hit for the fleet");
    assert_eq!(
        b.metric(r#"augur_l2_requests_total{result="hit"}"#).await,
        1.0
    );
    assert_eq!(
        a.metric(r#"augur_l2_requests_total{result="miss"}"#).await,
        1.0
    );
    assert_eq!(a.metric(r#"augur_l2_writes_total{result="ok"}"#).await, 1.0);
    let ready = get(&b.admin_url("/readyz")).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready", "{:?}", ready.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_keeps_the_remaining_lifetime() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let cfg = config(up.addr, &redis_section(&redis.url(), ""));
    let clock = Clock::manual();
    let a = TestProxy::start_with_clock(cfg.clone(), clock.clone()).await;
    let b = TestProxy::start_with_clock(cfg, clock.clone()).await;
    l2_ready(&a).await;
    l2_ready(&b).await;
    let pq = format!("/ttl?{CACHED}");

    assert_eq!(fetch(&a, &pq).await.x_cache(), "MISS");
    written(&redis, 1).await;
    clock.advance(Duration::from_secs(20));
    let promoted = fetch(&b, &pq).await;
    assert_eq!(promoted.header("x-cache-tier"), "L2");
    assert_eq!(promoted.header("age"), "20", "the age carries over");
    clock.advance(Duration::from_secs(39));
    let late = fetch(&b, &pq).await;
    assert_eq!((late.x_cache(), late.header("age")), ("HIT", "59"));
    clock.advance(Duration::from_secs(2));
    // Expired in B's L1 and in the copy Redis still holds: refetched, never served stale.
    let expired = fetch(&b, &pq).await;
    assert_eq!(expired.x_cache(), "MISS");
    assert_eq!(up.count(&pq), 2);
}

/// Two instances sharing Redis and one manual clock (the upstream's `Date` follows it).
async fn two_on_one_clock(redis: &RedisServer, up: &TestUpstream) -> (TestProxy, TestProxy, Clock) {
    let cfg = config(up.addr, &redis_section(&redis.url(), ""));
    let clock = Clock::manual();
    up.follow(&clock);
    let a = TestProxy::start_with_clock(cfg.clone(), clock.clone()).await;
    let b = TestProxy::start_with_clock(cfg, clock.clone()).await;
    l2_ready(&a).await;
    l2_ready(&b).await;
    (a, b, clock)
}

fn pttl_ms(redis: &RedisServer) -> i64 {
    let [key] = keys(redis).try_into().expect("one key in Redis");
    redis::cmd("PTTL")
        .arg(key)
        .query(&mut redis.conn())
        .unwrap()
}

/// Redis keeps an entry for its freshness plus its stale window, so another instance can serve
/// it stale while it refreshes it (`stale-while-revalidate`), or when the upstream fails
/// (`stale-if-error`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_keeps_the_stale_window_for_the_whole_fleet() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let (a, b, clock) = two_on_one_clock(&redis, &up).await;

    let swr = "/swr?cc=public%2C%20max-age%3D10%2C%20stale-while-revalidate%3D30";
    assert_eq!(fetch(&a, swr).await.x_cache(), "MISS");
    written(&redis, 1).await;
    let ttl = pttl_ms(&redis);
    assert!(
        (35_000..=40_000).contains(&ttl),
        "PX covers 10 s + 30 s: {ttl}"
    );
    clock.advance(Duration::from_secs(20));
    let stale = fetch(&b, swr).await;
    assert_eq!(
        (stale.x_cache(), stale.header("x-cache-tier")),
        ("STALE", "")
    );
    assert!(
        up.wait_count(swr, 2).await,
        "B refreshed it in the background"
    );

    let sie = "/sie?cc=public%2C%20max-age%3D10%2C%20stale-if-error%3D60";
    assert_eq!(fetch(&a, sie).await.x_cache(), "MISS");
    written(&redis, 2).await;
    clock.advance(Duration::from_secs(30));
    up.fail_with(503);
    let stood_in = fetch(&b, sie).await;
    assert_eq!(
        (stood_in.status.as_u16(), stood_in.x_cache()),
        (200, "STALE")
    );
    up.recover();
}

/// An entry promoted from Redis answers only what its freshness allows for *this* request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_entries_obey_the_request_directives() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let (a, b, _clock) = two_on_one_clock(&redis, &up).await;
    let pq = "/nc?cc=public%2C%20max-age%3D60&h_etag=%22v1%22&validate=1";
    assert_eq!(fetch(&a, pq).await.x_cache(), "MISS");
    written(&redis, 1).await;
    let got = common::get_with(&b.url(pq), &[("host", HOST), ("cache-control", "no-cache")]).await;
    assert_eq!(
        got.x_cache(),
        "REVALIDATED",
        "no-cache: asked the upstream first"
    );
    assert_eq!(up.count(pq), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_on_one_instance_reaches_the_other() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let (a, b) = two_instances(&redis, &up).await;
    subscribed(&mut redis.conn(), 2).await;
    let pq = format!("/p?{CACHED}");
    fetch(&a, &pq).await;
    written(&redis, 1).await;
    assert_eq!(fetch(&b, &pq).await.x_cache(), "HIT");
    assert_eq!(entries(&b).await, 1);

    let purged = admin_post(&a.purge_url(&format!("http://{HOST}{pq}"))).await;
    assert_eq!(purged.json()["purged"], true, "{:?}", purged.body);
    assert!(keys(&redis).is_empty(), "gone from Redis");
    eventually(Duration::from_secs(2), "B drops it from L1", || async {
        entries(&b).await == 0
    })
    .await;
    assert_eq!(fetch(&b, &pq).await.x_cache(), "MISS");
    assert_eq!(up.count(&pq), 2);

    // Purge of everything: Redis and both L1s.
    fetch(&a, &format!("/q?{CACHED}")).await;
    written(&redis, 2).await;
    assert_eq!(fetch(&b, &format!("/q?{CACHED}")).await.x_cache(), "HIT");
    assert_eq!(admin_post(&b.admin_url("/purge/all")).await.status, 200);
    assert!(keys(&redis).is_empty());
    eventually(Duration::from_secs(2), "A clears its L1", || async {
        entries(&a).await == 0
    })
    .await;
}

/// Variants (`Vary`) stay in each instance's L1: Redis is purged by URL, and an instance could
/// not name a variant another one stored. A purge on one instance still drops every variant
/// the others hold, through pub/sub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_stay_local_and_a_purge_drops_them_fleet_wide() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let (a, b) = two_instances(&redis, &up).await;
    subscribed(&mut redis.conn(), 2).await;
    let pq = format!("/lang?{CACHED}&h_vary=Accept-Language");
    let ask = |p: &TestProxy, l: &'static str| {
        let url = p.url(&pq);
        async move { common::get_with(&url, &[("host", HOST), ("accept-language", l)]).await }
    };
    assert_eq!(ask(&a, "en").await.x_cache(), "MISS");
    let fr = ask(&b, "fr").await;
    assert_eq!(fr.x_cache(), "MISS", "A's variant is not B's");
    assert_eq!(fr.header("x-echo-accept-language"), "fr");
    assert_eq!(ask(&b, "en").await.x_cache(), "MISS");
    for l in ["en", "fr"] {
        let got = ask(&b, l).await;
        assert_eq!(
            (got.x_cache(), got.header("x-echo-accept-language")),
            ("HIT", l)
        );
    }
    assert!(
        keys(&redis).is_empty(),
        "nothing varying is written to Redis"
    );

    let purged = admin_post(&a.purge_url(&format!("http://{HOST}{pq}"))).await;
    assert_eq!(purged.json()["purged"], true, "{:?}", purged.body);
    eventually(Duration::from_secs(2), "B drops its variants", || async {
        entries(&b).await == 0
    })
    .await;
    assert_eq!(ask(&b, "fr").await.x_cache(), "MISS");
    assert_eq!(up.count(&pq), 4, "a:en, b:fr, b:en, b:fr again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_value_is_a_miss_and_is_overwritten() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let pq = format!("/c?size=3000&{CACHED}");
    let section = redis_section(&redis.url(), "");
    let (_a, b, first, key) = one_shared_entry(&redis, &up, &section, &pq).await;
    let mut conn = redis.conn();
    let good: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    set_value(&redis, &key, &bad);

    let got = fetch(&b, &pq).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.x_cache(), "MISS", "a corrupt value is never served");
    assert_eq!(got.body, first.body);
    assert_eq!(up.count(&pq), 2);
    assert_eq!(
        b.metric(r#"augur_l2_requests_total{result="corrupt"}"#)
            .await,
        1.0
    );
    eventually(
        Duration::from_secs(5),
        "the refetch overwrites it",
        || async {
            let v: Vec<u8> = redis::cmd("GET")
                .arg(&key)
                .query(&mut redis.conn())
                .unwrap();
            let (seal, limits) = fleet_seal();
            Entry::open(&Bytes::from(v), &seal, &key, limits).is_ok()
        },
    )
    .await;

    // A foreign value (another program's, or garbage) is a miss too.
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("not an entry")
        .query(&mut conn)
        .unwrap();
    let c = TestProxy::start(config(up.addr, &redis_section(&redis.url(), ""))).await;
    l2_ready(&c).await;
    let got = fetch(&c, &pq).await;
    assert_eq!((got.status.as_u16(), got.x_cache()), (200, "MISS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_load_fails_no_request() {
    let mut redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, &redis_section(&redis.url(), ""))).await;
    l2_ready(&proxy).await;
    let deadline = Duration::from_millis(100); // [redis].timeout in redis_section
    let mut worst = Duration::ZERO;
    for round in 0..20 {
        if round == 6 {
            redis.kill();
        }
        // Ten concurrent requests over fresh and repeated URLs: L1 misses ask Redis.
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let url = proxy.url(&format!("/load/{}?{CACHED}", (round * 10 + i) % 70));
                tokio::spawn(async move {
                    let t = Instant::now();
                    let got = common::get_with(&url, &[("host", HOST)]).await;
                    (got.status.as_u16(), t.elapsed())
                })
            })
            .collect();
        for t in tasks {
            let (status, took) = t.await.unwrap();
            assert_eq!(status, 200, "round {round}");
            worst = worst.max(took);
        }
    }
    // The deadline, plus a local upstream, plus a loaded shared CI machine.
    assert!(
        worst < deadline + Duration::from_millis(400),
        "slowest request took {worst:?}"
    );
    let errors = proxy
        .metric(r#"augur_l2_requests_total{result="error"}"#)
        .await
        + proxy
            .metric(r#"augur_l2_requests_total{result="timeout"}"#)
            .await
        + proxy
            .metric(r#"augur_l2_requests_total{result="skipped"}"#)
            .await;
    assert!(errors > 0.0, "Redis was down for most of the load");
    let ready = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(ready.status, 200, "degraded is still ready");
    assert_eq!(ready.json()["status"], "degraded", "{:?}", ready.body);
    assert!(ready.json()["l2"]["reason"].is_string(), "{:?}", ready.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_redis_delays_no_request_past_the_deadline() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, &redis_section(&redis.url(), ""))).await;
    l2_ready(&proxy).await;
    redis.freeze(true);
    let deadline = Duration::from_millis(100);
    let mut worst = Duration::ZERO;
    for i in 0..30 {
        let t = Instant::now();
        let got = fetch(&proxy, &format!("/hung/{i}?{CACHED}")).await;
        worst = worst.max(t.elapsed());
        assert_eq!(got.status, 200);
    }
    redis.freeze(false);
    assert!(
        worst < deadline + Duration::from_millis(400),
        "slowest request took {worst:?}"
    );
    assert!(
        proxy
            .metric(r#"augur_l2_requests_total{result="timeout"}"#)
            .await
            >= 1.0
    );
    assert!(
        proxy
            .metric(r#"augur_l2_requests_total{result="skipped"}"#)
            .await
            >= 1.0,
        "the breaker opened and later requests skipped Redis"
    );
    // Thawed: the probe closes the breaker again.
    l2_ready(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_l2_use_resumes() {
    let mut redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let (a, b) = two_instances(&redis, &up).await;
    redis.kill();
    for i in 0..10 {
        assert_eq!(fetch(&a, &format!("/down/{i}?{CACHED}")).await.status, 200);
    }
    redis.restart();
    let mut i = 0;
    eventually(Duration::from_secs(15), "L2 shared again", || {
        i += 1;
        let (a, b) = (&a, &b);
        async move {
            let pq = format!("/up/{i}?{CACHED}");
            assert_eq!(fetch(a, &pq).await.status, 200);
            tokio::time::sleep(Duration::from_millis(50)).await;
            fetch(b, &pq).await.header("x-cache-tier") == "L2"
        }
    })
    .await;
    eventually(Duration::from_secs(5), "readyz back to ready", || async {
        get(&a.admin_url("/readyz")).await.json()["status"] == "ready"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_serves_from_l1_then_connects() {
    let mut redis = RedisServer::unstarted();
    let up = TestUpstream::start().await;
    let proxy = TestProxy::start(config(up.addr, &redis_section(&redis.url(), ""))).await;
    let pq = format!("/early?{CACHED}");
    assert_eq!(fetch(&proxy, &pq).await.x_cache(), "MISS");
    assert_eq!(fetch(&proxy, &pq).await.x_cache(), "HIT");
    let ready = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(ready.status, 200);
    let body = ready.json();
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["l2"]["connected"], false, "{body}");
    assert!(body["l2"]["reason"].is_string(), "{body}");

    redis.restart();
    eventually(
        Duration::from_secs(10),
        "connected with backoff",
        || async { get(&proxy.admin_url("/readyz")).await.json()["status"] == "ready" },
    )
    .await;
    fetch(&proxy, &format!("/late?{CACHED}")).await;
    written(&redis, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_rediss_with_a_private_ca() {
    let redis = RedisServer::start_tls();
    let up = TestUpstream::start().await;
    let extra = format!("ca_file = \"{}\"", redis.ca_file().display());
    let cfg = config(up.addr, &redis_section(&redis.url(), &extra));
    assert!(redis.url().starts_with("rediss://"));
    let a = TestProxy::start(cfg.clone()).await;
    let b = TestProxy::start(cfg).await;
    l2_ready(&a).await;
    l2_ready(&b).await;
    let pq = format!("/tls?{CACHED}");
    assert_eq!(fetch(&a, &pq).await.x_cache(), "MISS");
    written(&redis, 1).await;
    assert_eq!(fetch(&b, &pq).await.header("x-cache-tier"), "L2");
    assert_eq!(up.count(&pq), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_spreads_keys_shares_and_purges() {
    let cluster = RedisCluster::start();
    let up = TestUpstream::start().await;
    let cfg = config(up.addr, &cluster_section(&cluster.urls()));
    let a = TestProxy::start(cfg.clone()).await;
    let b = TestProxy::start(cfg).await;
    l2_ready(&a).await;
    l2_ready(&b).await;
    let n = 30;
    for i in 0..n {
        assert_eq!(
            fetch(&a, &format!("/k/{i}?{CACHED}")).await.x_cache(),
            "MISS"
        );
    }
    eventually(
        Duration::from_secs(5),
        "write-behind to the cluster",
        || async { cluster.keys_per_node().iter().sum::<usize>() == n },
    )
    .await;
    let spread = cluster.keys_per_node();
    assert!(
        spread.iter().filter(|&&k| k > 0).count() >= 2,
        "keys over several masters: {spread:?}"
    );
    for i in 0..n {
        let got = fetch(&b, &format!("/k/{i}?{CACHED}")).await;
        assert_eq!(got.header("x-cache-tier"), "L2", "key {i}");
    }
    assert_eq!(up.total(), n);

    // Purge through A reaches Redis and B's L1.
    let pq = format!("/k/0?{CACHED}");
    let purged = admin_post(&a.purge_url(&format!("http://{HOST}{pq}"))).await;
    assert_eq!(purged.json()["purged"], true, "{:?}", purged.body);
    eventually(Duration::from_secs(3), "B drops it", || async {
        entries(&b).await == (n - 1) as u64
    })
    .await;
    assert_eq!(fetch(&b, &pq).await.x_cache(), "MISS");
    eventually(
        Duration::from_secs(5),
        "B writes the refetch behind",
        || async { cluster.keys_per_node().iter().sum::<usize>() == n },
    )
    .await;
    assert_eq!(admin_post(&a.admin_url("/purge/all")).await.status, 200);
    assert_eq!(cluster.keys_per_node().iter().sum::<usize>(), 0);
    eventually(Duration::from_secs(3), "B clears its L1", || async {
        entries(&b).await == 0
    })
    .await;
}

// ───────────────────────── Redis is untrusted input (review H3, M9) ─────────────────────────

/// The review's 74-byte value: Augur's old (version 2) layout up to a header count of 30000,
/// under a valid unkeyed blake3 checksum. It aborted every instance that read it.
fn old_style_crash_value() -> Vec<u8> {
    let mut v = b"AUGE".to_vec();
    v.push(2);
    v.extend_from_slice(&200u16.to_be_bytes());
    // request_time, response_time, initial_age, lifetime (long), flags, the two windows.
    for t in [0u64, 0, 0, 1 << 40] {
        v.extend_from_slice(&t.to_be_bytes());
    }
    v.push(0);
    v.extend_from_slice(&[0; 16]);
    v.extend_from_slice(&30_000u16.to_be_bytes());
    let sum = blake3::hash(&v);
    v.extend_from_slice(&sum.as_bytes()[..16]);
    v
}

/// A value that would crash the reader is a miss: the upstream answers, the process lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_value_is_a_miss_and_the_proxy_lives() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let pq = format!("/crash?{CACHED}");
    let section = redis_section(&redis.url(), "");
    let (_a, b, first, key) = one_shared_entry(&redis, &up, &section, &pq).await;
    set_value(&redis, &key, &old_style_crash_value());

    let got = fetch(&b, &pq).await;
    assert_eq!((got.status.as_u16(), got.x_cache()), (200, "MISS"));
    assert_eq!(got.body, first.body);
    assert_eq!(up.count(&pq), 2, "answered by the upstream");
    assert_eq!(
        b.metric(r#"augur_l2_rejected_total{reason="mac"}"#).await,
        1.0
    );
    let alive = fetch(&b, &format!("/alive?{CACHED}")).await;
    assert_eq!(alive.status, 200, "the process is alive");
}

/// The Redis key a `written` entry for `pq` went to: the one key not in `before`.
async fn key_of(redis: &RedisServer, before: &[Vec<u8>]) -> Vec<u8> {
    written(redis, before.len() + 1).await;
    let mut now = keys(redis);
    now.retain(|k| !before.contains(k));
    now.remove(0)
}

/// How an attacker turns a (poisoned) entry into the value it stores under a Redis key.
type Forge<'a> = dyn Fn(&Entry, &[u8]) -> Vec<u8> + 'a;

/// A writer without the secret cannot make an instance serve its body: not with the old
/// unkeyed checksum, not with a MAC under another secret or under none, not by moving a valid
/// value to another key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_from_a_writer_without_the_secret_is_a_miss() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let (a, b) = two_instances(&redis, &up).await;
    let (seal, limits) = fleet_seal();
    let other = Seal::new(Some(b"not the fleet's secret, long enough"));
    let public = Seal::new(None);
    let forgeries: [(&str, &Forge<'_>); 4] = [
        ("another secret", &|e, k| e.seal(&other, k).to_vec()),
        ("no secret", &|e, k| e.seal(&public, k).to_vec()),
        ("version 2 checksum", &|e, k| {
            let sealed = e.seal(&public, k);
            let mut v = sealed[..sealed.len() - 32].to_vec();
            v[4] = 2;
            let sum = blake3::hash(&v);
            v.extend_from_slice(&sum.as_bytes()[..16]);
            v
        }),
        // A value the fleet sealed, for another key (the attacker's own URL).
        ("moved", &|e, _| {
            e.seal(&seal, format!("{PREFIX}elsewhere").as_bytes())
                .to_vec()
        }),
    ];
    for (i, (what, forge)) in forgeries.iter().enumerate() {
        let pq = format!("/victim/{i}?{CACHED}");
        let before = keys(&redis);
        let first = fetch(&a, &pq).await;
        let key = key_of(&redis, &before).await;
        let good: Vec<u8> = redis::cmd("GET")
            .arg(&key)
            .query(&mut redis.conn())
            .unwrap();
        let mut entry = Entry::open(&Bytes::from(good), &seal, &key, limits).unwrap();
        entry.body = StoredBody::Raw(Bytes::from_static(b"POISONED"));
        set_value(&redis, &key, &forge(&entry, &key));

        let got = fetch(&b, &pq).await;
        assert_eq!(got.x_cache(), "MISS", "{what}: served {:?}", got.body);
        assert_eq!(got.body, first.body, "{what}");
        assert_eq!(up.count(&pq), 2, "{what}");
    }
    assert_eq!(
        b.metric(r#"augur_l2_rejected_total{reason="mac"}"#).await,
        4.0
    );
}

/// Bytes Redis has sent to its clients so far (`INFO stats`).
fn output_bytes(redis: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query(&mut redis.conn())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_net_output_bytes in INFO stats")
}

/// Without a secret the tier is not authenticated, but a value that passes the (public) MAC
/// is still bounded: a forged header count is a miss, never a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_tier_still_bounds_values() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let pq = format!("/bounded?{CACHED}");
    let section = unauthenticated_section(&redis.url(), "");
    let (a, b, first, key) = one_shared_entry(&redis, &up, &section, &pq).await;
    // The crash value's payload (a header count of 30000) under a valid unkeyed MAC.
    let v2 = old_style_crash_value();
    let mut payload = v2[..v2.len() - 16].to_vec();
    payload[4] = 3;
    set_value(&redis, &key, &Seal::new(None).seal(&key, &payload));

    let got = fetch(&b, &pq).await;
    assert_eq!((got.status.as_u16(), got.x_cache()), (200, "MISS"));
    assert_eq!(got.body, first.body);
    assert_eq!(
        b.metric(r#"augur_l2_rejected_total{reason="bounds"}"#)
            .await,
        1.0
    );

    // A value over max_entry_size (1 MiB) is not read whole, and is a miss.
    let big = format!("/big?{CACHED}");
    let before = keys(&redis);
    fetch(&a, &big).await;
    let key = key_of(&redis, &before).await;
    set_value(&redis, &key, &vec![b'x'; 3 << 20]);
    let sent_before = output_bytes(&redis);
    let got = fetch(&b, &big).await;
    assert_eq!((got.status.as_u16(), got.x_cache()), (200, "MISS"));
    let sent = output_bytes(&redis) - sent_before;
    assert!(sent < 2 << 20, "Redis sent {sent} bytes for a 3 MiB value");
    assert_eq!(
        b.metric(r#"augur_l2_rejected_total{reason="bounds"}"#)
            .await,
        2.0
    );
    assert_eq!(fetch(&b, &format!("/alive?{CACHED}")).await.status, 200);
}

/// `PUBLISH <prefix>invalidate all` from anyone who can reach Redis no longer clears L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_invalidation_does_not_clear_l1() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let (a, b) = two_instances(&redis, &up).await;
    subscribed(&mut redis.conn(), 2).await;
    let (x, y) = (format!("/x?{CACHED}"), format!("/y?{CACHED}"));
    fetch(&b, &x).await;
    fetch(&b, &y).await;
    assert_eq!(entries(&b).await, 2);

    let _: u64 = redis::cmd("PUBLISH")
        .arg(format!("{PREFIX}invalidate"))
        .arg("all")
        .query(&mut redis.conn())
        .unwrap();
    // A real purge through A, published after the forged message on the same channel: once B
    // has applied it, B has seen the forged one too.
    let purged = admin_post(&a.purge_url(&format!("http://{HOST}{y}"))).await;
    assert_eq!(purged.status, 200, "{:?}", purged.body);
    eventually(
        Duration::from_secs(5),
        "B applies the real purge",
        || async { entries(&b).await < 2 },
    )
    .await;
    assert_eq!(entries(&b).await, 1, "the forged \"all\" cleared L1");
    assert_eq!(fetch(&b, &x).await.x_cache(), "HIT");
    assert_eq!(b.metric("augur_l2_invalidations_rejected_total").await, 1.0);
}

/// A hung Redis (SIGSTOP) silently ends pub/sub delivery: the heartbeat notices, L1 is
/// cleared, the loss is counted and `/readyz` says degraded; thawed, it resubscribes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_subscription_is_detected() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let heartbeat = "pubsub_heartbeat = \"300ms\"";
    let proxy = TestProxy::start(config(up.addr, &redis_section(&redis.url(), heartbeat))).await;
    l2_ready(&proxy).await;
    subscribed(&mut redis.conn(), 1).await;
    fetch(&proxy, &format!("/kept?{CACHED}")).await;
    assert_eq!(entries(&proxy).await, 1);

    redis.freeze(true);
    // Heartbeat (300 ms) plus connect_timeout (1 s), on a loaded machine.
    let detected = common::poll(Duration::from_secs(10), || async {
        proxy.metric("augur_l2_subscription_lost_total").await >= 1.0
    })
    .await;
    let ready = get(&proxy.admin_url("/readyz")).await.json();
    let cleared = entries(&proxy).await;
    redis.freeze(false);
    assert!(detected, "no loss detected within 10 s");
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(cleared, 0, "L1 cleared on detection");
    l2_ready(&proxy).await;
}

/// Review M4: an unsafe request's invalidation drops the key from this L1 at once and reaches
/// Redis in the background, so a hung Redis never holds up the response (it waited up to
/// `connect_timeout` per invalidated key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_requests_do_not_wait_for_a_hung_redis() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let section = redis_section(&redis.url(), "connect_timeout = \"3s\"");
    let proxy = TestProxy::start(config(up.addr, &section)).await;
    l2_ready(&proxy).await;
    let pq = format!("/m4?{CACHED}");
    fetch(&proxy, &pq).await;
    assert_eq!(fetch(&proxy, &pq).await.x_cache(), "HIT");

    redis.freeze(true);
    let started = std::time::Instant::now();
    let posted = common::post_with(&proxy.url(&pq), &[("host", HOST)]).await;
    let waited = started.elapsed();
    let after = fetch(&proxy, &pq).await;
    redis.freeze(false);
    assert_eq!(posted.status, 200);
    assert!(
        waited < Duration::from_millis(1500),
        "the POST waited {waited:?} for a hung Redis (connect_timeout is 3 s)"
    );
    assert_eq!(after.x_cache(), "MISS", "dropped from this L1 at once");
}

/// Write-behinds (skipped as busy, run) so far.
async fn write_outcomes(proxy: &TestProxy) -> (f64, f64) {
    let metric = |result: &str| format!("augur_l2_writes_total{{result=\"{result}\"}}");
    let mut ran = 0.0;
    for result in ["ok", "error", "timeout"] {
        ran += proxy.metric(&metric(result)).await;
    }
    (proxy.metric(&metric("busy")).await, ran)
}

/// L7: write-behind tasks are capped (`[redis] max_pending_writes`): while Redis hangs, a
/// burst of storable misses spawns at most that many SETs; the rest are skipped and counted,
/// and every response is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_is_capped_while_redis_hangs() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let section = format!(
        "\n[redis]\nurl = \"{}\"\nkey_prefix = \"{PREFIX}\"\ntimeout = \"1s\"\nbreaker_errors = 1000\nmax_pending_writes = 2\n{}\n",
        redis.url(),
        secret_line()
    );
    let proxy = TestProxy::start(config(up.addr, &section)).await;
    l2_ready(&proxy).await;
    redis.freeze(true);
    // Eight misses at once: their L2 lookups time out together, then each writes behind.
    let urls: Vec<String> = (0..8)
        .map(|i| proxy.url(&format!("/burst/{i}?{CACHED}")))
        .collect();
    let got = futures_util::future::join_all(urls.iter().map(|u| get(u))).await;
    // Every write ends one way: skipped as busy, or run and failed against the hung Redis.
    let settled = common::poll(Duration::from_secs(10), || async {
        let (busy, ran) = write_outcomes(&proxy).await;
        busy + ran >= 8.0
    })
    .await;
    let (busy, ran) = write_outcomes(&proxy).await;
    redis.freeze(false);
    assert!(got.iter().all(|g| g.status == 200));
    assert!(settled, "busy {busy} + ran {ran} writes, of 8");
    assert!(ran <= 2.0, "at most 2 SETs pending at once, {ran} ran");
    assert!(busy >= 4.0, "the rest skipped: {busy}");
}
