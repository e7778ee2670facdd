//! Step 2 of loading: the raw structs ([`super::raw`]) become the validated types, with the
//! defaults filled in and every per-field rule checked.
//!
//! Each step takes the [`Doc`] so that whatever it rejects is reported at the offending
//! value's `line:col` with its TOML path. The checks run in file order (server, cache,
//! prefetch, routes, redis) and stop at the first problem, so one run names one error.

use std::collections::HashMap;
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderName, Method};

use super::admin::{AdminConfig, AdminTokens};
use super::raw::{
    RawAdmin, RawCache, RawConfig, RawPrefetch, RawRedis, RawRoute, RawServer, RawUpstream,
};
use super::span::Doc;
use super::units::{log_level, Human, RedisUrl, ValueOr};
use super::PathRules;
use super::{
    CacheConfig, CacheMode, Config, ConfigError, PrefetchConfig, QueryKey, RedisConfig,
    RedisSecret, RedisTarget, RouteConfig, ServerConfig, UpstreamDefaults,
};

pub(super) fn build(doc: &Doc, raw: RawConfig) -> Result<Config, ConfigError> {
    let server = build_server(doc, raw.server)?;
    let upstream = build_upstream(raw.upstream);
    let cache = build_cache(doc, raw.cache)?;
    let prefetch = build_prefetch(doc, raw.prefetch)?;
    let admin = build_admin(doc, raw.admin)?;
    let routes = build_routes(doc, raw.route, &upstream, &cache)?;
    let redis = match raw.redis {
        Some(r) => Some(build_redis(doc, r, cache.max_entry_size)?),
        None => None,
    };
    Ok(Config {
        server,
        upstream,
        cache,
        redis,
        prefetch,
        admin,
        routes,
    })
}

fn build_server(doc: &Doc, s: RawServer) -> Result<ServerConfig, ConfigError> {
    let d = ServerConfig::default();
    let header_read_timeout = s.header_read_timeout.value_or(d.header_read_timeout);
    Ok(ServerConfig {
        listen: s.listen.value_or(d.listen),
        admin_listen: s.admin_listen.value_or(d.admin_listen),
        metrics_listen: s.metrics_listen.map(|h| h.0),
        worker_threads: s.worker_threads.unwrap_or(d.worker_threads),
        header_read_timeout,
        shutdown_grace: s.shutdown_grace.value_or(d.shutdown_grace),
        max_request_body: s.max_request_body.value_or(d.max_request_body),
        max_header_bytes: match s.max_header_bytes {
            Some(h) => usize::try_from(h.0 .0).unwrap_or(usize::MAX),
            None => d.max_header_bytes,
        },
        http2: s.http2.unwrap_or(d.http2),
        log_level: match s.log_level {
            Some(l) => log_level(&l).map_err(|m| doc.err("server.log_level", m))?,
            None => d.log_level,
        },
        log_format: s.log_format.value_or(d.log_format),
        paths: PathRules {
            merge_slashes: s.merge_slashes.unwrap_or(d.paths.merge_slashes),
            escaped_slashes: s.escaped_slashes.value_or(d.paths.escaped_slashes),
        },
        trusted_proxies: s
            .trusted_proxies
            .unwrap_or_default()
            .into_iter()
            .map(|h| h.0)
            .collect(),
        max_connections: s.max_connections.unwrap_or(d.max_connections),
        max_connections_per_ip: s.max_connections_per_ip.unwrap_or(d.max_connections_per_ip),
        // Unset: as long as a client has for the head of any later request.
        first_request_timeout: s.first_request_timeout.value_or(header_read_timeout),
        idle_timeout: s.idle_timeout.value_or(d.idle_timeout),
        http2_keep_alive_interval: s
            .http2_keep_alive_interval
            .value_or(d.http2_keep_alive_interval),
        http2_keep_alive_timeout: s
            .http2_keep_alive_timeout
            .value_or(d.http2_keep_alive_timeout),
        http2_max_concurrent_streams: s
            .http2_max_concurrent_streams
            .unwrap_or(d.http2_max_concurrent_streams),
        max_client_resets: s.max_client_resets.unwrap_or(d.max_client_resets),
    })
}

/// The token file is read here, so a missing or malformed one stops the load at its key.
fn build_admin(doc: &Doc, a: RawAdmin) -> Result<AdminConfig, ConfigError> {
    let (token_file, tokens) = match a.token_file {
        None => (None, AdminTokens::default()),
        Some(f) if f.trim().is_empty() => {
            return Err(doc.err(
                "admin.token_file",
                "is empty (give the path of a file of `purge:<token>` lines, or remove the key)",
            ))
        }
        Some(f) => {
            let path = std::path::PathBuf::from(f.trim());
            let tokens = AdminTokens::read(&path).map_err(|m| doc.err("admin.token_file", m))?;
            (Some(path), tokens)
        }
    };
    Ok(AdminConfig {
        token_file,
        tokens,
        allow_unauthenticated_loopback: a.allow_unauthenticated_loopback.unwrap_or(false),
    })
}

fn build_upstream(u: RawUpstream) -> UpstreamDefaults {
    let d = UpstreamDefaults::default();
    UpstreamDefaults {
        connect_timeout: u.connect_timeout.value_or(d.connect_timeout),
        timeout: u.timeout.value_or(d.timeout),
        max_connections: u.max_connections.unwrap_or(d.max_connections),
        idle_timeout: u.idle_timeout.value_or(d.idle_timeout),
        body_timeout: u.body_timeout.value_or(d.body_timeout),
        max_inflight_bytes: u.max_inflight_bytes.value_or(d.max_inflight_bytes),
    }
}

fn build_cache(doc: &Doc, c: RawCache) -> Result<CacheConfig, ConfigError> {
    let d = CacheConfig::default();
    Ok(CacheConfig {
        memory: c.memory.value_or(d.memory),
        max_entry_size: c.max_entry_size.value_or(d.max_entry_size),
        compression_level: c.compression_level.unwrap_or(d.compression_level),
        compression_threshold: c.compression_threshold.value_or(d.compression_threshold),
        default_ttl: c.default_ttl.value_or(d.default_ttl),
        coalesce_timeout: c.coalesce_timeout.value_or(d.coalesce_timeout),
        max_heuristic_ttl: c.max_heuristic_ttl.value_or(d.max_heuristic_ttl),
        max_variants: c.max_variants.unwrap_or(d.max_variants),
        honour_cdn_cache_control: c
            .honour_cdn_cache_control
            .unwrap_or(d.honour_cdn_cache_control),
        invalidate_unknown_methods: c
            .invalidate_unknown_methods
            .unwrap_or(d.invalidate_unknown_methods),
        credential_headers: match c.credential_headers {
            None => d.credential_headers,
            some => header_names(some),
        },
        targeted_field: match c.targeted_field {
            None => d.targeted_field,
            Some(t) if t.trim().is_empty() => None,
            Some(t) => Some(HeaderName::from_bytes(t.trim().as_bytes()).map_err(|_| {
                doc.err(
                    "cache.targeted_field",
                    format!(r#"invalid header name {t:?} (expected e.g. "Augur-Cache-Control", or "" for none)"#),
                )
            })?),
        },
    })
}

/// The `[[route]]` tables, in file order, with unique names.
fn build_routes(
    doc: &Doc,
    raw: Vec<RawRoute>,
    up: &UpstreamDefaults,
    cache: &CacheConfig,
) -> Result<Vec<RouteConfig>, ConfigError> {
    if raw.is_empty() {
        return Err(doc.err(
            "route",
            "no routes configured (add at least one [[route]] table with `name` and `upstream`)",
        ));
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut routes = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        if let Some(first) = names.get(&r.name) {
            let msg = format!(
                "duplicate route name {:?}, already used by route[{first}] (names must be unique)",
                r.name
            );
            return Err(doc.err(&format!("route[{i}].name"), msg));
        }
        names.insert(r.name.clone(), i);
        routes.push(build_route(doc, i, r, up, cache)?);
    }
    Ok(routes)
}

fn build_redis(doc: &Doc, r: RawRedis, max_body_size: u64) -> Result<RedisConfig, ConfigError> {
    let target = redis_target(doc, r.url, r.cluster)?;
    let ca_pem = match r.ca_file {
        Some(path) => Some(read_ca_file(doc, &path)?),
        None => None,
    };
    if r.secret.is_some() {
        return Err(doc.err(
            "redis.secret",
            "a secret is never written inline (put it in a file named by redis.secret_file, or in AUGUR_REDIS_SECRET)",
        ));
    }
    let secret = match r.secret_file {
        Some(path) => Some(read_secret_file(doc, &path)?),
        None => None,
    };
    let d = RedisConfig::defaults(target);
    Ok(RedisConfig {
        key_prefix: r.key_prefix.unwrap_or(d.key_prefix),
        timeout: r.timeout.value_or(d.timeout),
        connect_timeout: r.connect_timeout.value_or(d.connect_timeout),
        max_entry_size: r.max_entry_size.value_or(d.max_entry_size),
        breaker_errors: r.breaker_errors.unwrap_or(d.breaker_errors),
        breaker_cooldown: r.breaker_cooldown.value_or(d.breaker_cooldown),
        ca_pem,
        secret,
        pubsub_heartbeat: r.pubsub_heartbeat.value_or(d.pubsub_heartbeat),
        max_pending_writes: r.max_pending_writes.unwrap_or(d.max_pending_writes),
        max_body_size,
        target: d.target,
    })
}

/// `redis.secret_file`, read at load time. Errors name the file, never its contents.
fn read_secret_file(doc: &Doc, path: &str) -> Result<RedisSecret, ConfigError> {
    let raw = std::fs::read(path).map_err(|e| {
        doc.err(
            "redis.secret_file",
            format!("cannot read {path:?}: {e} (a file holding at least 16 bytes of secret)"),
        )
    })?;
    RedisSecret::new(&raw).map_err(|m| doc.err("redis.secret_file", format!("{path:?}: {m}")))
}

/// Exactly one of `url` / `cluster`; cluster nodes over TCP only.
fn redis_target(
    doc: &Doc,
    url: Option<Human<RedisUrl>>,
    cluster: Option<Vec<Human<super::units::RedisUrl>>>,
) -> Result<RedisTarget, ConfigError> {
    match (url, cluster) {
        (Some(_), Some(_)) => Err(doc.err(
            "redis.cluster",
            "both url and cluster are set (use url for one Redis, cluster for Redis Cluster seed nodes)",
        )),
        (Some(url), None) => Ok(RedisTarget::Single(url.0 .0)),
        (None, Some(nodes)) if nodes.is_empty() => Err(doc.err(
            "redis.cluster",
            r#"empty list (name at least one node, e.g. ["redis://10.0.0.1:6379"])"#,
        )),
        (None, Some(nodes)) => {
            let mut urls = Vec::with_capacity(nodes.len());
            for (i, n) in nodes.into_iter().enumerate() {
                if n.0 .0.starts_with("unix:") || n.0 .0.starts_with("redis+unix:") {
                    return Err(doc.err(
                        &format!("redis.cluster[{i}]"),
                        "cluster nodes are reached over TCP (use redis:// or rediss://)",
                    ));
                }
                urls.push(n.0 .0);
            }
            Ok(RedisTarget::Cluster(urls))
        }
        (None, None) => Err(doc.err(
            "redis",
            r#"[redis] needs `url` (e.g. "redis://127.0.0.1:6379") or `cluster` (a list of node URLs); remove the section to run without Redis"#,
        )),
    }
}

/// `redis.ca_file`, read at load time so that a missing or wrong file fails before binding.
fn read_ca_file(doc: &Doc, path: &str) -> Result<Vec<u8>, ConfigError> {
    let pem = std::fs::read(path).map_err(|e| {
        doc.err(
            "redis.ca_file",
            format!("cannot read {path:?}: {e} (a PEM file of CA certificates)"),
        )
    })?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(doc.err(
            "redis.ca_file",
            format!("{path:?} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"),
        ));
    }
    Ok(pem)
}

/// `[prefetch]`: every field with its default and range, then the byte limits, then the
/// durations that must not be zero (in that order, so the first error reported is unchanged).
fn build_prefetch(doc: &Doc, p: RawPrefetch) -> Result<PrefetchConfig, ConfigError> {
    let c = prefetch_fields(doc, p)?;
    check_prefetch_bytes(doc, &c)?;
    check_prefetch_durations(doc, &c)?;
    Ok(c)
}

/// The fields in declaration order, with the fractions and counts range-checked.
fn prefetch_fields(doc: &Doc, p: RawPrefetch) -> Result<PrefetchConfig, ConfigError> {
    let d = PrefetchConfig::default();
    let unit = |name, v, def, zero_ok| prefetch_unit(doc, name, v, def, zero_ok);
    let count = |name, v, def, max| prefetch_count(doc, name, v, def, max);
    Ok(PrefetchConfig {
        client_header: p.client_header.map(|h| h.0),
        client_cookie: p.client_cookie.map(|c| c.0 .0),
        idle_gap: p.idle_gap.value_or(d.idle_gap),
        top_k: count("top_k", p.top_k, d.top_k, 8)?,
        threshold: unit("threshold", p.threshold, d.threshold, false)?,
        precision_floor: unit(
            "precision_floor",
            p.precision_floor,
            d.precision_floor,
            true,
        )?,
        min_samples: p.min_samples.unwrap_or(d.min_samples),
        budget: unit("budget", p.budget, d.budget, true)?,
        max_concurrency: count(
            "max_concurrency",
            p.max_concurrency,
            d.max_concurrency,
            4096,
        )?,
        use_window: p.use_window.value_or(d.use_window),
        half_life: p.half_life.value_or(d.half_life),
        max_states: count("max_states", p.max_states, d.max_states, 100_000_000)?,
        top_successors: count("top_successors", p.top_successors, d.top_successors, 64)?,
        queue: count("queue", p.queue, d.queue, 1 << 20)?,
        state_file: p.state_file.map(std::path::PathBuf::from),
        save_interval: p.save_interval.value_or(d.save_interval),
        max_model_bytes: p.max_model_bytes.value_or(d.max_model_bytes),
        max_url_bytes: p.max_url_bytes.value_or(d.max_url_bytes),
        queue_bytes: p.queue_bytes.value_or(d.queue_bytes),
        client_budget: unit("client_budget", p.client_budget, d.client_budget, true)?,
    })
}

/// `prefetch.<name>`, a fraction in (0, 1], or [0, 1] with `zero_ok`; `def` when absent.
fn prefetch_unit(
    doc: &Doc,
    name: &str,
    v: Option<f32>,
    def: f32,
    zero_ok: bool,
) -> Result<f32, ConfigError> {
    match v {
        None => Ok(def),
        Some(x) if x.is_finite() && x <= 1.0 && (x > 0.0 || (zero_ok && x == 0.0)) => Ok(x),
        Some(x) => {
            let range = if zero_ok { "[0, 1]" } else { "(0, 1]" };
            Err(doc.err(
                &format!("prefetch.{name}"),
                format!("{x} is out of range (must be in {range}, e.g. 0.3)"),
            ))
        }
    }
}

/// `prefetch.<name>`, a count in 1..=`max`; `def` when absent.
fn prefetch_count(
    doc: &Doc,
    name: &str,
    v: Option<usize>,
    def: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    match v {
        None => Ok(def),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(doc.err(
            &format!("prefetch.{name}"),
            format!("{n} is out of range (must be 1..={max})"),
        )),
    }
}

/// The memory limits: each within its range (an upper bound of `u64::MAX` is "at least").
fn check_prefetch_bytes(doc: &Doc, c: &PrefetchConfig) -> Result<(), ConfigError> {
    for (name, v, min, max, e_g) in [
        (
            "max_model_bytes",
            c.max_model_bytes,
            1 << 20,
            u64::MAX,
            "\"64MiB\"",
        ),
        ("max_url_bytes", c.max_url_bytes, 64, 64 << 10, "\"2KiB\""),
        ("queue_bytes", c.queue_bytes, 64 << 10, u64::MAX, "\"4MiB\""),
    ] {
        if !(min..=max).contains(&v) {
            let range = if max == u64::MAX {
                format!("at least {min} bytes")
            } else {
                format!("{min}..={max} bytes")
            };
            return Err(doc.err(
                &format!("prefetch.{name}"),
                format!("{v} bytes is out of range (must be {range}, e.g. {e_g})"),
            ));
        }
    }
    Ok(())
}

/// The model's clocks: zero is never meant (a zero `use_window` would waste every prefetch, a
/// zero `idle_gap` would learn almost no transition), so it is refused rather than guessed at.
fn check_prefetch_durations(doc: &Doc, c: &PrefetchConfig) -> Result<(), ConfigError> {
    for (name, v) in [
        ("idle_gap", c.idle_gap),
        ("use_window", c.use_window),
        ("half_life", c.half_life),
    ] {
        if v.is_zero() {
            return Err(doc.err(&format!("prefetch.{name}"), "must be greater than 0s"));
        }
    }
    Ok(())
}

// ─────────────────────────────── one [[route]], step by step ───────────────────────────────

/// An error about `route[i].<f>`.
fn route_err(doc: &Doc, i: usize, f: &str, msg: impl std::fmt::Display) -> ConfigError {
    doc.err(&format!("route[{i}].{f}"), msg)
}

/// Route `i`: each field checked in file order, then the rules that involve several fields.
fn build_route(
    doc: &Doc,
    i: usize,
    r: RawRoute,
    up: &UpstreamDefaults,
    cache: &CacheConfig,
) -> Result<RouteConfig, ConfigError> {
    check_route_name(doc, i, &r.name)?;
    let hosts = route_hosts(doc, i, r.hosts.unwrap_or_default())?;
    let (path_prefix, path_pattern) = route_paths(doc, i, r.path_prefix, r.path)?;
    let methods = route_methods(doc, i, r.methods)?;
    if let Some(h) = &r.upstream_host {
        check_upstream_host(doc, i, h)?;
    }
    let query = route_query(doc, i, r.query_include, r.query_exclude)?;
    if !r.unsafe_prefetch_forward_credentials.unwrap_or(false) {
        check_prefetch_forward(
            doc,
            i,
            r.prefetch_forward_headers.as_deref(),
            &cache.credential_headers,
        )?;
    }
    let route = RouteConfig {
        name: r.name,
        hosts,
        path_prefix,
        path_pattern,
        methods,
        upstream: r.upstream.0,
        upstream_host: r.upstream_host,
        ttl: r.ttl.map(|h| h.0),
        query,
        key_headers: header_names(r.key_headers),
        timeout: r.timeout.value_or(up.timeout),
        connect_timeout: r.connect_timeout.value_or(up.connect_timeout),
        max_connections: r.max_connections.unwrap_or(up.max_connections),
        cache_mode: r.cache_mode.value_or(CacheMode::Respect),
        cache_set_cookie: r.cache_set_cookie.unwrap_or(false),
        grace: r.grace.value_or(Duration::ZERO),
        prefetch: r.prefetch.unwrap_or(false),
        prefetch_forward_headers: header_names(r.prefetch_forward_headers),
        strip_request_headers: header_names(r.strip_request_headers),
        forward_unkeyed_query: r.forward_unkeyed_query.unwrap_or(false),
        ignore_client_no_cache: r.ignore_client_no_cache.unwrap_or(false),
    };
    check_route_limits(doc, i, &route, cache)?;
    Ok(route)
}

fn check_route_name(doc: &Doc, i: usize, name: &str) -> Result<(), ConfigError> {
    let valid_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if name.is_empty() || !name.chars().all(valid_name) {
        let msg = format!(
            "invalid route name {name:?} (use letters, digits, '_' and '-', e.g. \"users-api\")"
        );
        return Err(route_err(doc, i, "name", msg));
    }
    Ok(())
}

/// Host names, lower-cased; a wildcard only as a leading `*.`.
fn route_hosts(doc: &Doc, i: usize, raw: Vec<String>) -> Result<Vec<String>, ConfigError> {
    let mut hosts = Vec::with_capacity(raw.len());
    for (j, h) in raw.into_iter().enumerate() {
        let rest = h.strip_prefix("*.").unwrap_or(&h);
        let ok_char =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '[' | ']');
        if rest.is_empty() || !rest.chars().all(ok_char) {
            let msg = format!(
                r#"invalid host {h:?} (expected a host name such as "api.example.com"; a wildcard is allowed only as a leading "*.")"#
            );
            return Err(route_err(doc, i, &format!("hosts[{j}]"), msg));
        }
        hosts.push(h.to_ascii_lowercase());
    }
    Ok(hosts)
}

/// `(path_prefix, path_pattern)`: at most one of the two, each starting with `/`; neither
/// means the prefix `/`.
fn route_paths(
    doc: &Doc,
    i: usize,
    prefix: Option<String>,
    pattern: Option<String>,
) -> Result<(Option<String>, Option<String>), ConfigError> {
    let pattern = match pattern {
        Some(_) if prefix.is_some() => {
            return Err(route_err(doc, i, "path", "both path_prefix and path are set (use one: path_prefix for a prefix, path for a glob)"));
        }
        Some(p) if !p.starts_with('/') => {
            return Err(route_err(
                doc,
                i,
                "path",
                format!(r#"invalid path glob {p:?} (must start with "/", e.g. "/users/*/orders")"#),
            ));
        }
        p => p,
    };
    let prefix = match prefix {
        Some(p) if !p.starts_with('/') => {
            return Err(route_err(
                doc,
                i,
                "path_prefix",
                format!(r#"invalid path prefix {p:?} (must start with "/", e.g. "/users/")"#),
            ));
        }
        None if pattern.is_none() => Some("/".to_owned()),
        p => p,
    };
    Ok((prefix, pattern))
}

/// Absent = any method; an empty list would match nothing, so it is refused.
fn route_methods(
    doc: &Doc,
    i: usize,
    methods: Option<Vec<Human<Method>>>,
) -> Result<Vec<Method>, ConfigError> {
    match methods {
        Some(m) if m.is_empty() => Err(route_err(
            doc,
            i,
            "methods",
            "empty list matches no request (remove the field to allow any method)",
        )),
        m => Ok(m.unwrap_or_default().into_iter().map(|h| h.0).collect()),
    }
}

fn check_upstream_host(doc: &Doc, i: usize, h: &str) -> Result<(), ConfigError> {
    if h.parse::<Authority>().is_err() || h.contains('@') {
        let msg = format!(
            r#"invalid upstream_host {h:?} (expected a host with optional port, e.g. "api.internal" or "api.internal:8080")"#
        );
        return Err(route_err(doc, i, "upstream_host", msg));
    }
    Ok(())
}

fn route_query(
    doc: &Doc,
    i: usize,
    include: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
) -> Result<QueryKey, ConfigError> {
    match (include, exclude) {
        (Some(_), Some(_)) => Err(route_err(
            doc,
            i,
            "query_exclude",
            "both query_include and query_exclude are set (use one)",
        )),
        (Some(inc), None) => Ok(QueryKey::Include(inc)),
        (None, Some(exc)) => Ok(QueryKey::Exclude(exc)),
        (None, None) => Ok(QueryKey::All),
    }
}

/// Request headers that carry a client's credentials whatever `[cache] credential_headers`
/// says. A prefetch is triggered by whoever trained the model, so forwarding a credential would
/// send a victim's credentials to a URL an attacker chose (and store the answer under a key
/// without them).
const ALWAYS_CREDENTIALS: &[&str] = &["authorization", "proxy-authorization"];

/// `prefetch_forward_headers` names no credential (`Authorization`, `Proxy-Authorization`,
/// `[cache] credential_headers`) unless the route opts in explicitly.
fn check_prefetch_forward(
    doc: &Doc,
    i: usize,
    names: Option<&[Human<HeaderName>]>,
    credentials: &[HeaderName],
) -> Result<(), ConfigError> {
    for (j, h) in names.unwrap_or_default().iter().enumerate() {
        if ALWAYS_CREDENTIALS.contains(&h.0.as_str()) || credentials.contains(&h.0) {
            let msg = format!(
                "{:?} is a credential: a prefetch anyone can train would carry it to URLs they \
                 choose (remove it, or set unsafe_prefetch_forward_credentials = true)",
                h.0.as_str()
            );
            return Err(route_err(
                doc,
                i,
                &format!("prefetch_forward_headers[{j}]"),
                msg,
            ));
        }
    }
    Ok(())
}

fn header_names(names: Option<Vec<Human<HeaderName>>>) -> Vec<HeaderName> {
    names.unwrap_or_default().into_iter().map(|h| h.0).collect()
}

/// The rules that need the assembled route: a TTL for any mode but `respect`, and usable
/// upstream limits after the `[upstream]` defaults are applied.
fn check_route_limits(
    doc: &Doc,
    i: usize,
    route: &RouteConfig,
    cache: &CacheConfig,
) -> Result<(), ConfigError> {
    if route.cache_mode != CacheMode::Respect && route.effective_ttl(cache).is_zero() {
        return Err(route_err(
            doc,
            i,
            "cache_mode",
            "needs a TTL to apply (set `ttl` on the route or `[cache].default_ttl`, or use \"respect\")",
        ));
    }
    for (name, d) in [
        ("timeout", route.timeout),
        ("connect_timeout", route.connect_timeout),
    ] {
        if d.is_zero() {
            return Err(route_err(doc, i, name, "must be greater than 0s"));
        }
    }
    if route.max_connections == 0 {
        return Err(route_err(doc, i, "max_connections", "must be at least 1"));
    }
    Ok(())
}
