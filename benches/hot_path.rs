//! Benches of the hot path's pure cores and of the whole in-process hit path.
//!
//! `cargo bench --bench hot_path` (CI only compiles them: `cargo bench --no-run`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use augur::cache::entry::{Compression, Entry, Limits, Seal, StoredBody};
use augur::cache::memory::Memory;
use augur::cache::policy;
use augur::cache::redis;
use augur::clock::Clock;
use augur::config::Config;
use augur::key::CacheKey;
use augur::metrics::Metrics;
use augur::proxy::Proxy;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};

fn json(size: usize) -> Bytes {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < size {
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"user{i}\",\"email\":\"u{i}@example.com\",\"active\":true}},"
        ));
        i += 1;
    }
    s.truncate(size);
    Bytes::from(s)
}

fn entry(size: usize) -> Entry {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=3600"),
    );
    headers.insert("etag", HeaderValue::from_static("\"65920080-400\""));
    headers.insert(
        "last-modified",
        HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"),
    );
    let c = Compression {
        level: 3,
        threshold: 1024,
    };
    Entry {
        status: StatusCode::OK,
        headers,
        body: StoredBody::encode(json(size), c).0,
        request_time: 0,
        response_time: 0,
        initial_age: 0,
        lifetime: 3_600_000,
        flags: augur::cache::entry::Flags::default(),
        stale_while_revalidate: 0,
        stale_if_error: 0,
    }
}

/// The L2 value MAC, its Redis key, and the read limits (the defaults).
fn seal() -> (Seal, &'static str, Limits) {
    let limits = Limits {
        max_value: 1 << 20,
        max_body: 8 << 20,
    };
    let seal = Seal::new(Some(b"a bench secret of thirty-two b."));
    (seal, "augur:0909090909090909", limits)
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("entry");
    let (seal, name, limits) = seal();
    for size in [1024usize, 16 * 1024] {
        let e = entry(size);
        let enc = e.seal(&seal, name.as_bytes());
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("encode/{size}"), |b| {
            b.iter(|| black_box(&e).seal(&seal, name.as_bytes()))
        });
        g.bench_function(format!("decode/{size}"), |b| {
            b.iter(|| Entry::open(black_box(&enc), &seal, name.as_bytes(), limits))
        });
        g.bench_function(format!("zstd_store/{size}"), |b| {
            let body = json(size);
            b.iter(|| {
                StoredBody::encode(
                    black_box(body.clone()),
                    Compression {
                        level: 3,
                        threshold: 1024,
                    },
                )
            })
        });
        g.bench_function(format!("body_for_client/{size}"), |b| {
            b.iter(|| black_box(&e.body).decoded())
        });
    }
    g.finish();
}

fn l1(c: &mut Criterion) {
    let m = Memory::new(64 << 20, 8 << 20, metrics::Counter::noop());
    let keys: Vec<CacheKey> = (0..10_000u32)
        .map(|i| {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&i.to_le_bytes());
            CacheKey(k)
        })
        .collect();
    let e = Arc::new(entry(1024));
    for k in &keys {
        m.insert(*k, e.clone());
    }
    let mut g = c.benchmark_group("l1");
    let mut i = 0usize;
    g.bench_function("get_hit", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            m.get(black_box(&keys[i]))
        })
    });
    g.bench_function("insert", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            m.insert(keys[i], e.clone())
        })
    });
    g.finish();
}

/// The L2 hit path without the network: what the leader does with the bytes a Redis GET
/// returned (decode + blake3 verify + freshness check) and the promotion into L1.
fn l2_hit(c: &mut Criterion) {
    let m = Memory::new(64 << 20, 8 << 20, metrics::Counter::noop());
    let key = CacheKey([9; 16]);
    let mut g = c.benchmark_group("l2_hit");
    let (seal, name, limits) = seal();
    for size in [1024usize, 16 * 1024] {
        let enc = entry(size).seal(&seal, name.as_bytes());
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("decode_verify_promote/{size}"), |b| {
            b.iter(|| {
                let e = redis::decode_usable(black_box(&enc), &seal, name, limits, 1_000).unwrap();
                m.insert(key, Arc::new(e));
            })
        });
    }
    g.finish();
}

fn policy_decide(c: &mut Criterion) {
    let req = HeaderMap::new();
    let mut resp = HeaderMap::new();
    resp.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=3600"),
    );
    resp.insert(
        "date",
        HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"),
    );
    c.bench_function("policy/decide", |b| {
        b.iter(|| {
            policy::decide(&policy::Input {
                req_headers: &req,
                credentials: false,
                status: StatusCode::OK,
                resp_headers: black_box(&resp),
                route_ttl_ms: 0,
                mode: augur::config::CacheMode::Respect,
                heuristic_max_ms: 86_400_000,
                grace_ms: 0,
                cache_set_cookie: false,
                targeted: &[],
                request_time: 1_704_067_200_000,
                response_time: 1_704_067_200_010,
            })
        })
    });
}

/// The whole hit path in-process: route, key, L1 lookup, response build, metrics; no sockets.
fn hit_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = Config::from_str(
        "[[route]]\nname = \"api\"\nupstream = \"http://127.0.0.1:9\"\n",
        "bench.toml",
    )
    .unwrap();
    let proxy = Proxy::new(&config, Clock::System, Arc::new(Metrics::new(&["api"]))).unwrap();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut g = c.benchmark_group("hit_path");
    for (size, path) in [(1024usize, "/json/1k.json"), (16 * 1024, "/json/16k.json")] {
        // Seed the store through the public key + cache API the proxy itself uses.
        let key = CacheKey::derive(
            &http::Method::GET,
            "127.0.0.1:28084",
            path,
            &config.routes[0].query,
            &config.routes[0].key_headers,
            &HeaderMap::new(),
        );
        let mut e = entry(size);
        e.response_time = Clock::System.now_ms();
        let e = Arc::new(e);
        rt.block_on(proxy.cache().lookup_or_fetch(key, &HeaderMap::new(), || {
            let e = e.clone();
            async move { augur::cache::Fetched::Stored(e) }
        }));
        for zstd in [false, true] {
            let name = format!("{size}/{}", if zstd { "zstd" } else { "identity" });
            g.bench_function(name, |b| {
                b.iter(|| {
                    let mut req = Request::get(path)
                        .header("host", "127.0.0.1:28084")
                        .header("user-agent", "wrk");
                    if zstd {
                        req = req.header("accept-encoding", "zstd");
                    }
                    let req = req.body(Empty::<Bytes>::new()).unwrap();
                    rt.block_on(async {
                        let resp = proxy.handle(req, peer).await;
                        assert_eq!(resp.headers()["x-cache"], "HIT");
                        resp.into_body().collect().await.unwrap().to_bytes()
                    })
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = codec, l1, l2_hit, policy_decide, hit_path
}
criterion_main!(benches);
