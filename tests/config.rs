//! `proxy.toml` loading, end to end: the bad fixtures' error positions, the shipped config,
//! defaults, and `AUGUR_*` overrides.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use augur::config::{Config, LogFormat, QueryKey, RedisTarget};

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bad_dir() -> PathBuf {
    manifest_dir().join("tests/fixtures/bad")
}

/// (fixture, "LINE:COL", field path, a fragment of the message)
const BAD: &[(&str, &str, &str, &str)] = &[
    (
        "syntax_error.toml",
        "2:25",
        "TOML syntax error",
        "invalid basic string",
    ),
    (
        "unknown_field.toml",
        "3:1",
        "server.lisen",
        "unknown field `lisen`, expected one of `listen`",
    ),
    (
        "wrong_type.toml",
        "2:18",
        "server.worker_threads",
        "invalid type: string \"four\", expected a whole number",
    ),
    (
        "bad_duration.toml",
        "8:7",
        "route[1].ttl",
        r#"invalid duration "5 parsecs" (expected e.g. "30s", "5m", "1h 30m")"#,
    ),
    (
        "bad_size.toml",
        "2:10",
        "cache.memory",
        r#"invalid size "lots" (expected e.g. "256MiB")"#,
    ),
    (
        "bad_socket_addr.toml",
        "2:16",
        "server.admin_listen",
        r#"invalid socket address "localhost:9090""#,
    ),
    (
        "bad_url.toml",
        "3:12",
        "route[0].upstream",
        "scheme must be http",
    ),
    (
        "https_upstream.toml",
        "3:12",
        "route[0].upstream",
        "https upstreams are not supported yet; terminate TLS in front of the upstream or use http",
    ),
    (
        "upstream_missing_host.toml",
        "3:12",
        "route[0].upstream",
        "missing host",
    ),
    (
        "bad_method.toml",
        "3:19",
        "route[0].methods[1]",
        r#"invalid HTTP method "GE T""#,
    ),
    (
        "bad_credential_header.toml",
        "2:33",
        "cache.credential_headers[1]",
        r#"invalid header name "X Api Key""#,
    ),
    (
        "bad_header_name.toml",
        "4:35",
        "route[0].key_headers[1]",
        r#"invalid header name "X Tenant""#,
    ),
    (
        "bad_cache_mode.toml",
        "4:14",
        "route[0].cache_mode",
        r#"invalid cache mode "sometimes" (expected "respect", "override", "floor" or "cap")"#,
    ),
    (
        "cache_mode_without_ttl.toml",
        "4:14",
        "route[0].cache_mode",
        "needs a TTL to apply",
    ),
    (
        "bad_targeted_field.toml",
        "2:18",
        "cache.targeted_field",
        r#"invalid header name "Augur Cache""#,
    ),
    (
        "bad_glob.toml",
        "4:8",
        "route[0].path",
        r#"must start with "/""#,
    ),
    (
        "bad_host.toml",
        "3:29",
        "route[0].hosts[1]",
        r#"invalid host "api.*.com""#,
    ),
    (
        "bad_route_name.toml",
        "2:8",
        "route[0].name",
        r#"invalid route name "users api""#,
    ),
    (
        "missing_route_name.toml",
        "3:1",
        "route[0]",
        "missing field `name`",
    ),
    (
        "path_and_prefix.toml",
        "5:8",
        "route[0].path",
        "both path_prefix and path are set",
    ),
    (
        "query_include_and_exclude.toml",
        "5:17",
        "route[0].query_exclude",
        "both query_include and query_exclude are set",
    ),
    (
        "duplicate_route_name.toml",
        "10:8",
        "route[2].name",
        r#"duplicate route name "demo", already used by route[0]"#,
    ),
    ("no_routes.toml", "1:1", "route", "no routes configured"),
    (
        "prefetch_client_cookie.toml",
        "2:17",
        "prefetch.client_cookie",
        "\"session id\" is not a cookie name",
    ),
    (
        "prefetch_threshold.toml",
        "2:13",
        "prefetch.threshold",
        "1.5 is out of range (must be in (0, 1]",
    ),
    (
        "prefetch_forward_header.toml",
        "5:29",
        "route[0].prefetch_forward_headers[0]",
        r#"invalid header name "Accept Language""#,
    ),
    (
        "prefetch_forward_credentials.toml",
        "5:48",
        "route[0].prefetch_forward_headers[1]",
        r#""cookie" is a credential"#,
    ),
    (
        "prefetch_max_model_bytes.toml",
        "2:19",
        "prefetch.max_model_bytes",
        "524288 bytes is out of range (must be at least 1048576 bytes",
    ),
    (
        "max_variants_zero.toml",
        "3:16",
        "cache.max_variants",
        "0 is out of range",
    ),
    (
        "compression_level.toml",
        "2:21",
        "cache.compression_level",
        "22 is out of range",
    ),
    (
        "max_entry_size_over_memory.toml",
        "3:18",
        "cache.max_entry_size",
        "max_entry_size 8MiB is larger than cache.memory 4MiB",
    ),
    (
        "max_entry_default_over_memory.toml",
        "2:10",
        "cache.memory",
        "max_entry_size 8MiB is larger than cache.memory 4MiB",
    ),
    (
        "memory_too_small.toml",
        "2:10",
        "cache.memory",
        "512KiB is too small (must be at least 1MiB)",
    ),
    (
        "max_inflight_under_entry_size.toml",
        "2:22",
        "upstream.max_inflight_bytes",
        "max_inflight_bytes 4MiB is smaller than cache.max_entry_size 8MiB",
    ),
    (
        "http2_streams_zero.toml",
        "2:32",
        "server.http2_max_concurrent_streams",
        "out of range (1..=1000 streams per connection",
    ),
    (
        "max_header_bytes_too_small.toml",
        "2:20",
        "server.max_header_bytes",
        "4KiB is too small (must be at least 8KiB)",
    ),
    (
        "redis_url_and_cluster.toml",
        "3:11",
        "redis.cluster",
        "both url and cluster are set",
    ),
    (
        "redis_bad_url.toml",
        "2:7",
        "redis.url",
        "scheme must be redis, rediss or unix",
    ),
    (
        "redis_no_target.toml",
        "5:1",
        "redis",
        "[redis] needs `url`",
    ),
    (
        "redis_cluster_unix.toml",
        "2:37",
        "redis.cluster[1]",
        "cluster nodes are reached over TCP",
    ),
    (
        "redis_breaker_errors_zero.toml",
        "3:18",
        "redis.breaker_errors",
        "must be at least 1",
    ),
    (
        "redis_max_pending_writes_zero.toml",
        "3:22",
        "redis.max_pending_writes",
        "must be at least 1",
    ),
    (
        "redis_ca_file_missing.toml",
        "3:11",
        "redis.ca_file",
        r#"cannot read "/nonexistent/augur/redis-ca.pem""#,
    ),
    (
        "redis_pubsub_heartbeat_zero.toml",
        "3:20",
        "redis.pubsub_heartbeat",
        "must be greater than 0s",
    ),
    (
        "redis_secret_file_missing.toml",
        "3:15",
        "redis.secret_file",
        r#"cannot read "/nonexistent/augur/redis-secret""#,
    ),
    (
        "redis_secret_inline.toml",
        "3:10",
        "redis.secret",
        "a secret is never written inline (put it in a file named by redis.secret_file",
    ),
    (
        "redis_timeout_zero.toml",
        "3:11",
        "redis.timeout",
        "must be greater than 0s",
    ),
    (
        "worker_threads.toml",
        "2:18",
        "server.worker_threads",
        "4096 is too many",
    ),
    (
        "admin_token_file_missing.toml",
        "2:14",
        "admin.token_file",
        "cannot read token file /nonexistent/augur/admin-tokens",
    ),
    (
        "admin_token_too_short.toml",
        "2:14",
        "admin.token_file",
        "admin-tokens-short.txt: line 2: the token must be 16 to 256 characters",
    ),
    (
        "admin_loopback_not_loopback.toml",
        "5:34",
        "admin.allow_unauthenticated_loopback",
        "needs a loopback server.admin_listen, not 0.0.0.0:9090",
    ),
];

#[test]
fn every_bad_fixture_fails_at_the_expected_position() {
    for &(file, line_col, field, fragment) in BAD {
        let path = bad_dir().join(file);
        let err = match Config::load(&path) {
            Ok(_) => panic!("{file}: loaded, but should fail"),
            Err(e) => e.to_string(),
        };
        let expected_prefix = format!("{}:{line_col}: {field}: ", path.display());
        assert!(
            err.starts_with(&expected_prefix),
            "{file}: got {err:?}, expected prefix {expected_prefix:?}"
        );
        assert!(
            err.contains(fragment),
            "{file}: got {err:?}, expected it to contain {fragment:?}"
        );
        assert!(!err.contains('\n'), "{file}: message spans lines: {err:?}");
    }
}

#[test]
fn every_bad_fixture_has_an_expectation() {
    let mut on_disk: Vec<String> = std::fs::read_dir(bad_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = BAD.iter().map(|b| b.0.to_owned()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}

#[test]
fn shipped_proxy_toml_loads() {
    let text = std::fs::read_to_string(manifest_dir().join("proxy.toml")).unwrap();
    let config = Config::from_str(&text, "proxy.toml").unwrap();
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.server.admin_listen.to_string(), "127.0.0.1:9090");
    let [demo] = config.routes.as_slice() else {
        panic!("expected one route")
    };
    assert_eq!(demo.name, "demo");
    assert_eq!(demo.upstream.to_string(), "http://127.0.0.1:8081/");
    assert_eq!(demo.ttl, Some(Duration::from_secs(30)));
    assert_eq!(demo.path_prefix.as_deref(), Some("/"));
    let utm = ["utm_source", "utm_medium", "utm_campaign"]
        .map(String::from)
        .to_vec();
    assert_eq!(demo.query, QueryKey::Exclude(utm));
}

#[test]
fn shipped_proxy_toml_loads_through_load() {
    // `load` also applies the process environment; the test environment sets no AUGUR_*.
    Config::load(&manifest_dir().join("proxy.toml")).unwrap();
}

/// Uncommenting every commented-out setting (and the example route) must still give a valid
/// config, so the examples in the shipped file cannot rot.
#[test]
fn shipped_proxy_toml_examples_are_valid() {
    let text = std::fs::read_to_string(manifest_dir().join("proxy.toml")).unwrap();
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with('[')
                    || rest
                        .split_once(" = ")
                        .is_some_and(|(k, _)| !k.contains(' ')) =>
            {
                rest
            }
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(
        uncommented.contains("\nname = \"users\""),
        "example route not uncommented"
    );
    let config = Config::from_str(&uncommented, "proxy.toml (uncommented)").unwrap();
    assert!(config.redis.is_some(), "[redis] example not uncommented");
    let users = &config.routes[1];
    assert_eq!(users.path_pattern.as_deref(), Some("/users/*/orders"));
    assert_eq!(users.path_prefix, None);
    assert_eq!(users.hosts, ["api.example.com", "*.example.com"]);
    assert_eq!(users.methods, [http::Method::GET, http::Method::HEAD]);
    assert_eq!(users.upstream.path(), "/v2");
    assert_eq!(users.upstream_host.as_deref(), Some("users.internal"));
    assert_eq!(
        users.query,
        QueryKey::Include(vec!["page".into(), "limit".into()])
    );
    assert_eq!(
        users.key_headers,
        [http::HeaderName::from_static("accept-language")]
    );
    assert_eq!(
        (users.timeout, users.connect_timeout, users.max_connections),
        (Duration::from_secs(5), Duration::from_secs(1), 64)
    );
}

const MINIMAL: &str = "[[route]]\nname = \"api\"\nupstream = \"http://127.0.0.1:3000\"\n";

#[test]
fn credential_prefetch_forward_headers_need_the_unsafe_opt_in() {
    let route = |extra: &str| {
        format!("{MINIMAL}prefetch = true\nprefetch_forward_headers = [\"Authorization\"]\n{extra}")
    };
    let err = Config::from_str(&route(""), "t.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("route[0].prefetch_forward_headers[0]"),
        "{err}"
    );
    let c = Config::from_str(
        &route("unsafe_prefetch_forward_credentials = true"),
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        c.routes[0].prefetch_forward_headers,
        [http::header::AUTHORIZATION]
    );
    let p = &c.prefetch;
    assert_eq!(
        (p.max_model_bytes, p.max_url_bytes, p.queue_bytes),
        (64 << 20, 2 << 10, 4 << 20)
    );
    assert_eq!(
        (p.client_budget, p.save_interval),
        (0.5, Duration::from_secs(300))
    );
}

#[test]
fn minimal_config_gets_all_defaults() {
    let c = Config::from_str(MINIMAL, "minimal.toml").unwrap();
    let s = &c.server;
    assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(s.admin_listen.to_string(), "127.0.0.1:9090");
    assert_eq!(s.worker_threads, 0);
    assert_eq!(s.header_read_timeout, Duration::from_secs(10));
    assert_eq!(s.shutdown_grace, Duration::from_secs(30));
    assert_eq!(s.max_request_body, 10 << 20);
    assert_eq!(s.max_header_bytes, 64 << 10);
    assert!(s.http2);
    assert_eq!(s.log_level, "info");
    assert_eq!(s.log_format, LogFormat::Text);

    let u = &c.upstream;
    assert_eq!(u.connect_timeout, Duration::from_secs(2));
    assert_eq!(u.timeout, Duration::from_secs(30));
    assert_eq!(u.max_connections, 256);
    assert_eq!(u.idle_timeout, Duration::from_secs(4));

    let k = &c.cache;
    assert_eq!(k.memory, 256 << 20);
    assert_eq!(k.max_entry_size, 8 << 20);
    assert_eq!(k.compression_level, 3);
    assert_eq!(k.compression_threshold, 1024);
    assert_eq!(k.max_variants, 8);
    assert!(k.honour_cdn_cache_control);
    assert_eq!(k.default_ttl, Duration::ZERO);
    assert_eq!(k.coalesce_timeout, Duration::from_secs(10));

    let [r] = c.routes.as_slice() else {
        panic!("expected one route")
    };
    assert_eq!(r.name, "api");
    assert!(r.hosts.is_empty());
    assert_eq!(r.path_prefix.as_deref(), Some("/"));
    assert_eq!(r.path_pattern, None);
    assert!(r.methods.is_empty());
    assert_eq!(
        r.upstream.authority().map(|a| a.as_str()),
        Some("127.0.0.1:3000")
    );
    assert_eq!(r.upstream_host, None);
    assert_eq!(r.ttl, None);
    assert_eq!(r.effective_ttl(&c.cache), Duration::ZERO);
    assert_eq!(r.query, QueryKey::All);
    assert!(r.key_headers.is_empty());
    assert_eq!(r.timeout, Duration::from_secs(30));
    assert_eq!(r.connect_timeout, Duration::from_secs(2));
    assert_eq!(r.max_connections, 256);
}

fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<Vec<_>>()
        .into_iter()
}

#[test]
fn env_overrides_apply() {
    let text = format!("{MINIMAL}\n[[route]]\nname = \"slow\"\nupstream = \"http://127.0.0.1:3001\"\ntimeout = \"2m\"\n");
    let mut c = Config::from_str(&text, "env.toml").unwrap();
    c.apply_env(env(&[
        ("AUGUR_LISTEN", "0.0.0.0:8080"),
        ("AUGUR_ADMIN_LISTEN", "[::]:9090"),
        ("AUGUR_WORKER_THREADS", "2"),
        ("AUGUR_LOG_LEVEL", "info,augur=debug"),
        ("AUGUR_LOG_FORMAT", "json"),
        ("AUGUR_CACHE_MEMORY", "1GiB"),
        ("AUGUR_CACHE_MAX_ENTRY_SIZE", "16 MiB"),
        ("AUGUR_CACHE_DEFAULT_TTL", "1m"),
        ("AUGUR_UPSTREAM_TIMEOUT", "5s"),
        ("AUGUR_UPSTREAM_CONNECT_TIMEOUT", "500ms"),
        (
            "AUGUR_SOMETHING_ELSE",
            "ignored: other tools share the prefix",
        ),
        ("PATH", "/usr/bin"),
    ]))
    .unwrap();
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(c.server.admin_listen.to_string(), "[::]:9090");
    assert_eq!(c.server.worker_threads, 2);
    assert_eq!(c.server.log_level, "info,augur=debug");
    assert_eq!(c.server.log_format, LogFormat::Json);
    assert_eq!(c.cache.memory, 1 << 30);
    assert_eq!(c.cache.max_entry_size, 16 << 20);
    assert_eq!(c.cache.default_ttl, Duration::from_secs(60));
    assert_eq!(c.routes[0].effective_ttl(&c.cache), Duration::from_secs(60));
    assert_eq!(c.upstream.timeout, Duration::from_secs(5));
    // A route that inherited the timeout follows the override; one that set its own keeps it.
    assert_eq!(c.routes[0].timeout, Duration::from_secs(5));
    assert_eq!(c.routes[1].timeout, Duration::from_secs(120));
    assert_eq!(c.routes[0].connect_timeout, Duration::from_millis(500));
}

#[test]
fn env_override_errors_name_the_variable() {
    let cases: &[(&str, &str, &str)] = &[
        ("AUGUR_CACHE_MEMORY", "lots", r#"AUGUR_CACHE_MEMORY: invalid size "lots" (expected e.g. "256MiB")"#),
        ("AUGUR_CACHE_DEFAULT_TTL", "5 parsecs", r#"AUGUR_CACHE_DEFAULT_TTL: invalid duration "5 parsecs" (expected e.g. "30s", "5m", "1h 30m")"#),
        ("AUGUR_LISTEN", "localhost:8080", r#"AUGUR_LISTEN: invalid socket address "localhost:8080""#),
        ("AUGUR_WORKER_THREADS", "many", r#"AUGUR_WORKER_THREADS: invalid number "many""#),
        ("AUGUR_LOG_FORMAT", "xml", r#"AUGUR_LOG_FORMAT: invalid log format "xml" (expected "text" or "json")"#),
        // Cross-field limits are re-checked after the overrides.
        ("AUGUR_WORKER_THREADS", "5000", "AUGUR_WORKER_THREADS: server.worker_threads: 5000 is too many"),
        ("AUGUR_CACHE_MEMORY", "4MiB", "AUGUR_CACHE_MEMORY: cache.max_entry_size: max_entry_size 8MiB is larger than cache.memory 4MiB"),
        ("AUGUR_CACHE_MEMORY", "512KiB", "AUGUR_CACHE_MEMORY: cache.memory: 512KiB is too small"),
        ("AUGUR_UPSTREAM_TIMEOUT", "0s", "AUGUR_UPSTREAM_TIMEOUT: upstream.timeout: must be greater than 0s"),
    ];
    for &(var, value, expected) in cases {
        let mut c = Config::from_str(MINIMAL, "minimal.toml").unwrap();
        let err = c.apply_env(env(&[(var, value)])).unwrap_err().to_string();
        assert!(
            err.starts_with(expected),
            "{var}={value}: got {err:?}, expected {expected:?}"
        );
    }
}

#[test]
fn redis_section_is_optional_with_defaults() {
    assert!(Config::from_str(MINIMAL, "minimal.toml")
        .unwrap()
        .redis
        .is_none());
    let text = format!("{MINIMAL}\n[redis]\nurl = \"redis://10.0.0.9:6379/2\"\n");
    let r = Config::from_str(&text, "r.toml").unwrap().redis.unwrap();
    assert_eq!(
        r.target,
        RedisTarget::Single("redis://10.0.0.9:6379/2".into())
    );
    assert_eq!(r.key_prefix, "augur:");
    assert_eq!(r.timeout, Duration::from_millis(50));
    assert_eq!(r.connect_timeout, Duration::from_secs(1));
    assert_eq!(r.max_entry_size, 1 << 20);
    assert_eq!(r.breaker_errors, 5);
    assert_eq!(r.breaker_cooldown, Duration::from_secs(1));

    let text = format!(
        "{MINIMAL}\n[redis]\ncluster = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]\nkey_prefix = \"shop:\"\ntimeout = \"20ms\"\nmax_entry_size = \"256KiB\"\n"
    );
    let r = Config::from_str(&text, "c.toml").unwrap().redis.unwrap();
    assert_eq!(
        r.target,
        RedisTarget::Cluster(vec![
            "redis://10.0.0.1:7000".into(),
            "redis://10.0.0.2:7000".into()
        ])
    );
    assert_eq!(
        (r.key_prefix.as_str(), r.timeout, r.max_entry_size),
        ("shop:", Duration::from_millis(20), 256 << 10)
    );
    let text = format!("{MINIMAL}\n[redis]\nurl = \"unix:///run/redis/redis.sock\"\n");
    assert!(Config::from_str(&text, "u.toml").unwrap().redis.is_some());
    let text = format!("{MINIMAL}\n[redis]\nurl = \"rediss://redis.internal:6380\"\n");
    let r = Config::from_str(&text, "tls.toml").unwrap().redis.unwrap();
    assert_eq!(r.ca_pem, None, "no ca_file: the system's trust store");
}

#[test]
fn redis_url_from_the_environment() {
    let mut c = Config::from_str(MINIMAL, "minimal.toml").unwrap();
    c.apply_env(env(&[("AUGUR_REDIS_URL", "redis://redis.internal:6379")]))
        .unwrap();
    let r = c.redis.unwrap();
    assert_eq!(
        r.target,
        RedisTarget::Single("redis://redis.internal:6379".into())
    );
    assert_eq!(r.key_prefix, "augur:");
    let mut c = Config::from_str(MINIMAL, "minimal.toml").unwrap();
    let err = c
        .apply_env(env(&[("AUGUR_REDIS_URL", "http://x")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(r#"AUGUR_REDIS_URL: invalid Redis URL "http://x""#),
        "{err}"
    );
}

#[test]
fn caching_keys_parse_with_their_defaults() {
    let text = r#"
[cache]
max_heuristic_ttl = "1h"
targeted_field = ""

[[route]]
name = "a"
upstream = "http://127.0.0.1:8081"

[[route]]
name = "b"
upstream = "http://127.0.0.1:8081"
ttl = "10s"
cache_mode = "Floor"
cache_set_cookie = true
grace = "30s"
"#;
    let c = Config::from_str(text, "t.toml").unwrap();
    assert_eq!(c.cache.max_heuristic_ttl, Duration::from_secs(3600));
    assert_eq!(c.cache.targeted_field, None);
    let (a, b) = (&c.routes[0], &c.routes[1]);
    assert_eq!(a.cache_mode, augur::config::CacheMode::Respect);
    assert!(!a.cache_set_cookie);
    assert_eq!(a.grace, Duration::ZERO);
    assert_eq!(b.cache_mode, augur::config::CacheMode::Floor);
    assert!(b.cache_set_cookie);
    assert_eq!(b.grace, Duration::from_secs(30));
    let d = Config::from_str(
        "[[route]]\nname = \"a\"\nupstream = \"http://h\"\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        d.cache.targeted_field.as_ref().unwrap().as_str(),
        "augur-cache-control"
    );
    assert_eq!(d.cache.max_heuristic_ttl, Duration::from_secs(24 * 3600));
    let names = |c: &Config| {
        c.cache
            .credential_headers
            .iter()
            .map(|h| h.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&d), augur::config::DEFAULT_CREDENTIAL_HEADERS);
    let own = Config::from_str(
        "[cache]\ncredential_headers = [\"X-Tenant-Secret\"]\n[[route]]\nname = \"a\"\nupstream = \"http://h\"\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        names(&own),
        ["x-tenant-secret"],
        "the list replaces the default"
    );
}

#[test]
fn redis_secret_from_a_file_or_the_environment_and_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    let with_file = |contents: &[u8]| {
        std::fs::write(&file, contents).unwrap();
        let text = format!(
            "{MINIMAL}\n[redis]\nurl = \"redis://10.0.0.9:6379\"\nsecret_file = \"{}\"\n",
            file.display()
        );
        Config::from_str(&text, "s.toml")
    };
    let r = with_file(b"0123456789abcdef0123\n").unwrap().redis.unwrap();
    assert_eq!(r.secret.as_ref().unwrap().expose(), b"0123456789abcdef0123");
    assert_eq!(r.unauthenticated_warning(), None);
    assert!(!format!("{r:?}").contains("0123456789"), "{r:?}");
    let err = with_file(b"shortsecret\n").unwrap_err().to_string();
    assert!(err.starts_with("s.toml:"), "{err}");
    assert!(err.contains("redis.secret_file: "), "{err}");
    assert!(err.contains("11 bytes, fewer than 16"), "{err}");
    assert!(!err.contains("shortsecret"), "{err}");

    // Without a secret: valid, with a warning for `augur check` and the log.
    let text = format!("{MINIMAL}\n[redis]\nurl = \"redis://10.0.0.9:6379\"\n");
    let mut c = Config::from_str(&text, "n.toml").unwrap();
    let warning = c.redis.as_ref().unwrap().unauthenticated_warning().unwrap();
    assert!(warning.contains("NOT authenticated"), "{warning}");
    let err = c
        .apply_env(env(&[("AUGUR_REDIS_SECRET", "tooshort")]))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("AUGUR_REDIS_SECRET: "), "{err}");
    assert!(!err.contains("tooshort"), "{err}");

    // The secret applies even when AUGUR_REDIS_URL, listed after it, creates the [redis].
    let mut c = Config::from_str(MINIMAL, "minimal.toml").unwrap();
    c.apply_env(env(&[
        ("AUGUR_REDIS_SECRET", "a secret from the environment"),
        ("AUGUR_REDIS_URL", "redis://redis.internal:6379"),
        ("AUGUR_CACHE_MAX_ENTRY_SIZE", "2MiB"),
    ]))
    .unwrap();
    let r = c.redis.unwrap();
    assert_eq!(r.secret.unwrap().expose(), b"a secret from the environment");
    assert_eq!(r.pubsub_heartbeat, Duration::from_secs(5));
    assert_eq!(r.max_pending_writes, 256);
    assert_eq!(
        r.max_body_size,
        2 * 1024 * 1024,
        "follows cache.max_entry_size"
    );
}

#[test]
fn admin_tokens_from_the_file_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(
        &file,
        "purge:0123456789abcdef0123\nread:fedcba9876543210fedc\n",
    )
    .unwrap();
    let c = Config::from_str(MINIMAL, "minimal.toml").unwrap();
    assert!(c.admin.tokens.is_empty(), "no tokens by default");
    assert!(!c.admin.allow_unauthenticated_loopback);
    assert_eq!(c.server.metrics_listen, None);

    let mut c = Config::from_str(MINIMAL, "minimal.toml").unwrap();
    let path = file.display().to_string();
    c.apply_env(env(&[
        ("AUGUR_ADMIN_TOKEN_FILE", &path),
        ("AUGUR_METRICS_LISTEN", "0.0.0.0:9091"),
    ]))
    .unwrap();
    assert_eq!(c.admin.tokens.len(), 2);
    assert_eq!(c.server.metrics_listen.unwrap().to_string(), "0.0.0.0:9091");
    assert!(
        !format!("{c:?}").contains("0123456789abcdef"),
        "Debug hides tokens"
    );

    let err = Config::from_str(MINIMAL, "minimal.toml")
        .unwrap()
        .apply_env(env(&[("AUGUR_ADMIN_TOKEN_FILE", "/nonexistent/tokens")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("AUGUR_ADMIN_TOKEN_FILE: cannot read token file /nonexistent/tokens"),
        "{err}"
    );

    // The loopback opt-out, then a non-loopback listener from the environment.
    let text = format!("[admin]\nallow_unauthenticated_loopback = true\n{MINIMAL}");
    let mut c = Config::from_str(&text, "loopback.toml").unwrap();
    let err = c
        .apply_env(env(&[("AUGUR_ADMIN_LISTEN", "0.0.0.0:9090")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "AUGUR_ADMIN_LISTEN: admin.allow_unauthenticated_loopback: needs a loopback"
        ),
        "{err}"
    );
    let text = format!(
        "[admin]\nallow_unauthenticated_loopback = true\ntoken_file = \"{path}\"\n{MINIMAL}"
    );
    let err = Config::from_str(&text, "both.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot be combined with admin.token_file"),
        "{err}"
    );
}
