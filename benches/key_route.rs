//! Hot-path micro-benchmarks for `route ─► key`: both run once per cacheable request, so
//! their cost is paid on every hit. Run with `cargo bench --bench key_route`.

use std::hint::black_box;
use std::time::Duration;

use augur::config::{QueryKey, RouteConfig};
use augur::key::CacheKey;
use augur::route::Routes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

fn bench_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("key_derive");
    let empty = HeaderMap::new();

    g.bench_function("plain_path", |b| {
        b.iter(|| {
            CacheKey::derive(
                black_box(&Method::GET),
                black_box("example.com"),
                black_box("/json/1k.json"),
                black_box(&QueryKey::All),
                &[],
                black_box(&empty),
            )
        })
    });

    let exclude = QueryKey::Exclude(vec!["utm_source".to_string()]);
    g.bench_function("query_exclude", |b| {
        b.iter(|| {
            CacheKey::derive(
                black_box(&Method::GET),
                black_box("example.com"),
                black_box("/api/items?b=2&a=1&utm_source=x&c=%41"),
                black_box(&exclude),
                &[],
                black_box(&empty),
            )
        })
    });

    let names = [
        HeaderName::from_static("accept-encoding"),
        HeaderName::from_static("x-tenant"),
    ];
    let mut headers = HeaderMap::new();
    headers.insert(
        "accept-encoding",
        HeaderValue::from_static("gzip, deflate, br"),
    );
    headers.insert("x-tenant", HeaderValue::from_static("acme"));
    headers.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    headers.insert("accept", HeaderValue::from_static("application/json"));
    g.bench_function("query_exclude_2_headers", |b| {
        b.iter(|| {
            CacheKey::derive(
                black_box(&Method::GET),
                black_box("example.com"),
                black_box("/api/items?b=2&a=1&utm_source=x&c=%41"),
                black_box(&exclude),
                black_box(&names),
                black_box(&headers),
            )
        })
    });
    g.finish();
}

fn route(name: &str, host: &str, prefix: Option<&str>, pattern: Option<&str>) -> RouteConfig {
    RouteConfig {
        name: name.to_string(),
        hosts: vec![host.to_string()],
        path_prefix: prefix.map(str::to_string),
        path_pattern: pattern.map(str::to_string),
        methods: vec![Method::GET],
        upstream: http::Uri::from_static("http://127.0.0.1:9000"),
        upstream_host: None,
        ttl: None,
        query: QueryKey::All,
        key_headers: vec![],
        timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(5),
        max_connections: 64,
        cache_mode: augur::config::CacheMode::Respect,
        cache_set_cookie: false,
        grace: Duration::ZERO,
        prefetch: false,
        prefetch_forward_headers: vec![],
        strip_request_headers: vec![],
        forward_unkeyed_query: false,
        ignore_client_no_cache: false,
    }
}

fn bench_routes(c: &mut Criterion) {
    // Nine near-misses (right host, wrong path; right path, wrong host; wildcards), then
    // the route that matches, so `find` walks the whole table.
    let mut cfgs = Vec::new();
    for i in 0..3 {
        cfgs.push(route(
            &format!("p{i}"),
            "api.example.com",
            Some(&format!("/v{i}/")),
            None,
        ));
        cfgs.push(route(
            &format!("h{i}"),
            &format!("*.svc{i}.example.com"),
            Some("/api/"),
            None,
        ));
        cfgs.push(route(
            &format!("g{i}"),
            "api.example.com",
            None,
            Some(&format!("/g{i}/*/items")),
        ));
    }
    cfgs.push(route(
        "last",
        "*.example.com",
        Some("/api/"),
        Some("/api/**/*.json"),
    ));
    let routes = match Routes::new(&cfgs) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench setup: {e}");
            return;
        }
    };
    assert_eq!(
        routes
            .find("Api.Example.com:8080", "/api/v3/items/1.json", &Method::GET)
            .map(|r| r.idx),
        Some(9)
    );

    c.bench_function("routes_find_10_last", |b| {
        b.iter(|| {
            routes
                .find(
                    black_box("Api.Example.com:8080"),
                    black_box("/api/v3/items/1.json"),
                    black_box(&Method::GET),
                )
                .map(|r| r.idx)
        })
    });
}

criterion_group!(benches, bench_key, bench_routes);
criterion_main!(benches);
