//! `proxy.toml` ─► validated [`Config`]. A leaf: nothing else in the crate is named here.
//!
//! Loading happens in three steps:
//!
//! 1. `toml` deserializes the text into the private `Raw*` structs. Human units (durations,
//!    byte sizes, addresses, methods, header names, the upstream URL) are parsed *during*
//!    deserialization (`units`), so `toml` attaches the byte span of the offending value.
//! 2. The raw structs are checked and turned into the public types, filling in defaults.
//! 3. `AUGUR_*` environment overrides are applied ([`Config::apply_env`]) and the cross-field
//!    limits are checked again.
//!
//! Every error is one line, `FILE:LINE:COL: FIELD.PATH: what is wrong (how to fix it)`. The
//! field path comes from an index built from a second, structure-only parse of the same text
//! (`span`): it maps byte spans to paths like `route[1].ttl` (route indices are 0-based) and back.

mod span;
mod units;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderName, Method, Uri};
use serde::Deserialize;

use span::{Doc, SpanIndex};
use units::{fmt_size, parse_size, ByteSize, CookieName, Human, HumanUnit, RedisUrl};

// ───────────────────────────── validated types (the contract) ─────────────────────────────

/// The validated configuration. Every field is already checked; nothing downstream re-validates.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamDefaults,
    pub cache: CacheConfig,
    /// `None` = no `[redis]` section: no second tier, Augur runs on L1 alone.
    pub redis: Option<RedisConfig>,
    pub prefetch: PrefetchConfig,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// 0 = one per core; 1 = a current-thread runtime.
    pub worker_threads: usize,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    pub max_request_body: u64,
    pub max_header_bytes: usize,
    pub http2: bool,
    pub log_level: String,
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct UpstreamDefaults {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub memory: u64,
    pub max_entry_size: u64,
    pub compression_level: i32,
    pub compression_threshold: u64,
    pub default_ttl: Duration,
    pub coalesce_timeout: Duration,
    /// Upper bound of a heuristic lifetime (10% of the time since `Last-Modified`).
    pub max_heuristic_ttl: Duration,
    /// Augur's own targeted cache-control field (RFC 9213), read before `CDN-Cache-Control`
    /// and `Cache-Control`; `None` = only `CDN-Cache-Control`.
    pub targeted_field: Option<HeaderName>,
    /// Variants kept per URL when responses `Vary` (RFC 9111 §4.1); the least recently stored
    /// goes first.
    pub max_variants: usize,
}

/// How a route's TTL combines with the origin's own freshness (see README, "Caching rules").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// The origin's freshness wins; the route TTL applies only when the origin gives none.
    #[default]
    Respect,
    /// The route TTL replaces the origin's freshness lifetime.
    Override,
    /// At least the route TTL.
    Floor,
    /// At most the route TTL.
    Cap,
}

/// `[redis]`: the shared second tier (L2) of a fleet.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub target: RedisTarget,
    /// Prepended to every key and to the pub/sub channel (`<prefix>invalidate`).
    pub key_prefix: String,
    /// Deadline of one Redis operation on the request path (GET); past it the request goes on
    /// without L2.
    pub timeout: Duration,
    /// Deadline of one connection attempt (the background reconnect loop).
    pub connect_timeout: Duration,
    /// Encoded entries larger than this are kept in L1 only.
    pub max_entry_size: u64,
    /// Consecutive failed operations that open the circuit breaker (L2 is skipped).
    pub breaker_errors: u32,
    /// How long an open breaker skips L2 before one probe is let through.
    pub breaker_cooldown: Duration,
    /// PEM certificates that verify a `rediss://` server (read at load time); `None` = the
    /// system's trust store.
    pub ca_pem: Option<Vec<u8>>,
}

/// Where the second tier lives. URLs are checked by the `redis` crate's own parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://`, `rediss://` or `unix://`.
    Single(String),
    /// Seed nodes of a Redis Cluster; the rest of the topology is discovered.
    Cluster(Vec<String>),
}

impl RedisConfig {
    fn defaults(target: RedisTarget) -> RedisConfig {
        RedisConfig {
            target,
            key_prefix: "augur:".to_owned(),
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(1),
            max_entry_size: MIB,
            breaker_errors: 5,
            breaker_cooldown: Duration::from_secs(1),
            ca_pem: None,
        }
    }
}

/// `[prefetch]`: Markov prefetching. Only routes with `prefetch = true` are prefetched.
#[derive(Debug, Clone)]
pub struct PrefetchConfig {
    /// Client identity header; `None` = `client_cookie`, else a hash of `Authorization`, else
    /// the peer IP.
    pub client_header: Option<HeaderName>,
    /// Client identity cookie (by name, from the `Cookie` header), tried after `client_header`.
    pub client_cookie: Option<String>,
    /// A client's sequence ends after this long without a request.
    pub idle_gap: Duration,
    /// Successors predicted per request (top-k).
    pub top_k: usize,
    /// Minimum transition probability to prefetch, in (0, 1].
    pub threshold: f32,
    /// Transitions whose measured precision is below this stop being prefetched, in [0, 1].
    pub precision_floor: f32,
    /// Evidence (prefetches with a known fate) needed before the floor applies.
    pub min_samples: u32,
    /// Prefetches allowed per client request (a token bucket), in [0, 1].
    pub budget: f32,
    /// Concurrent prefetch requests to the upstreams.
    pub max_concurrency: usize,
    /// A prefetched entry not used by a real request within this window counts as wasted.
    pub use_window: Duration,
    /// Half-life of the model's counts.
    pub half_life: Duration,
    pub max_states: usize,
    pub top_successors: usize,
    /// Observations queued for the background worker; more are dropped (and counted).
    pub queue: usize,
    /// Model saved here on shutdown and loaded at start; `None` = not persisted.
    pub state_file: Option<std::path::PathBuf>,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig {
            client_header: None,
            client_cookie: None,
            idle_gap: Duration::from_secs(300),
            top_k: 1,
            threshold: 0.3,
            precision_floor: 0.3,
            min_samples: 3,
            budget: 0.1,
            max_concurrency: 8,
            use_window: Duration::from_secs(60),
            half_life: Duration::from_secs(3600),
            max_states: 100_000,
            top_successors: 4,
            queue: 4096,
            state_file: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    /// Lower-cased; empty = any host. A leading `*.` is a wildcard.
    pub hosts: Vec<String>,
    /// `Some("/")` when neither `path_prefix` nor `path` was given.
    pub path_prefix: Option<String>,
    /// The raw `path` glob (checked only for shape; compiled by the router).
    pub path_pattern: Option<String>,
    /// Empty = any method.
    pub methods: Vec<Method>,
    pub upstream: Uri,
    pub upstream_host: Option<String>,
    /// `None` = not set on the route: use `cache.default_ttl` (see [`RouteConfig::effective_ttl`]).
    /// Kept unresolved so that `AUGUR_CACHE_DEFAULT_TTL` reaches every route that did not set one.
    pub ttl: Option<Duration>,
    pub query: QueryKey,
    pub key_headers: Vec<HeaderName>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_connections: usize,
    pub cache_mode: CacheMode,
    /// Store responses carrying `Set-Cookie` (the cookie itself is never stored or served
    /// from the cache). Default `false`: such responses are not stored.
    pub cache_set_cookie: bool,
    /// Serve a stale response this long past its lifetime when the origin sends neither
    /// `stale-while-revalidate` nor `stale-if-error` (and allows stale use). Zero = off.
    pub grace: Duration,
    /// The prefetcher may fetch this route's URLs ahead of the client.
    pub prefetch: bool,
    /// Client request headers a prefetch may carry (default none: prefetches never carry
    /// the client's credentials).
    pub prefetch_forward_headers: Vec<HeaderName>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryKey {
    All,
    Include(Vec<String>),
    Exclude(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            worker_threads: 0,
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            max_request_body: 10 * MIB,
            max_header_bytes: 64 * 1024,
            http2: true,
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
        }
    }
}

impl Default for UpstreamDefaults {
    fn default() -> Self {
        UpstreamDefaults {
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(30),
            max_connections: 256,
            idle_timeout: Duration::from_secs(90),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory: 256 * MIB,
            max_entry_size: 8 * MIB,
            compression_level: 3,
            compression_threshold: 1024,
            default_ttl: Duration::ZERO,
            coalesce_timeout: Duration::from_secs(10),
            max_heuristic_ttl: Duration::from_secs(24 * 3600),
            targeted_field: Some(HeaderName::from_static("augur-cache-control")),
            max_variants: 8,
        }
    }
}

impl RouteConfig {
    /// The route's TTL, falling back to `[cache].default_ttl` when the route sets none.
    pub fn effective_ttl(&self, cache: &CacheConfig) -> Duration {
        self.ttl.unwrap_or(cache.default_ttl)
    }
}

const MIB: u64 = 1 << 20;
const MAX_WORKER_THREADS: usize = 1024;

// ───────────────────────────── raw TOML (the file format) ─────────────────────────────

/// The whole `proxy.toml`. Every section is optional except at least one `[[route]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Listener, limits and logging.
    #[serde(default)]
    server: RawServer,
    /// Defaults for every route's upstream connection.
    #[serde(default)]
    upstream: RawUpstream,
    /// The in-process response cache.
    #[serde(default)]
    cache: RawCache,
    /// The shared second tier. Absent = none.
    redis: Option<RawRedis>,
    /// Markov prefetching (active only for routes with `prefetch = true`).
    #[serde(default)]
    prefetch: RawPrefetch,
    /// Routes, matched in file order; the first match wins. At least one is required.
    #[serde(default)]
    route: Vec<RawRoute>,
}

/// `[server]`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    /// Proxy listener, `IP:PORT`. Default `"127.0.0.1:8080"`; use `"0.0.0.0:8080"` in containers.
    listen: Option<Human<SocketAddr>>,
    /// Admin listener (health, metrics), `IP:PORT`. Default `"127.0.0.1:9090"`.
    admin_listen: Option<Human<SocketAddr>>,
    /// Runtime worker threads. Default 0 = one per core; 1 = single-threaded; at most 1024.
    worker_threads: Option<usize>,
    /// Time allowed for a client to send the request head. Default `"10s"`.
    header_read_timeout: Option<Human<Duration>>,
    /// On shutdown, how long in-flight requests may finish. Default `"30s"`.
    shutdown_grace: Option<Human<Duration>>,
    /// Larger request bodies get `413 Content Too Large`. Default `"10MiB"`.
    max_request_body: Option<Human<ByteSize>>,
    /// Larger request heads get `431`. Default `"64KiB"`, at least `"8KiB"`.
    max_header_bytes: Option<Human<ByteSize>>,
    /// Also serve HTTP/2 cleartext with prior knowledge (h2c). Default `true`.
    http2: Option<bool>,
    /// A `tracing` EnvFilter directive, e.g. `"info"` or `"info,augur=debug"`. Default `"info"`.
    /// `RUST_LOG`, when set, wins at runtime.
    log_level: Option<String>,
    /// `"text"` (default) or `"json"`.
    log_format: Option<Human<LogFormat>>,
}

/// `[upstream]`: defaults for every route; each route may override the first three.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    /// TCP connect timeout. Default `"2s"`.
    connect_timeout: Option<Human<Duration>>,
    /// Time until the upstream's response headers arrive. Default `"30s"`.
    timeout: Option<Human<Duration>>,
    /// Concurrent connections per upstream. Default 256, at least 1.
    max_connections: Option<usize>,
    /// How long a pooled keep-alive connection may stay idle. Default `"90s"`.
    idle_timeout: Option<Human<Duration>>,
}

/// `[cache]`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    /// Memory budget of the cache. Default `"256MiB"`, at least `"1MiB"`.
    memory: Option<Human<ByteSize>>,
    /// Larger responses stream through unstored. Default `"8MiB"`; must be <= `memory`.
    max_entry_size: Option<Human<ByteSize>>,
    /// zstd level for stored bodies, 1..=19. Default 3.
    compression_level: Option<i32>,
    /// Bodies at or above this size are zstd-compressed when stored. Default `"1KiB"`.
    compression_threshold: Option<Human<ByteSize>>,
    /// TTL for routes that set none. Default `"0s"` = store only responses with explicit
    /// freshness (`Cache-Control: max-age`, `Expires`).
    default_ttl: Option<Human<Duration>>,
    /// How long concurrent misses for one key wait for the leader's response before fetching
    /// themselves. Default `"10s"`.
    coalesce_timeout: Option<Human<Duration>>,
    /// Upper bound of a heuristic freshness lifetime (10% of the time since `Last-Modified`,
    /// used only when the origin sends no explicit freshness). Default `"24h"`; `"0s"` = never
    /// use heuristic freshness.
    max_heuristic_ttl: Option<Human<Duration>>,
    /// A cache-control field aimed at Augur alone (RFC 9213 targeted field), taking precedence
    /// over `CDN-Cache-Control` and `Cache-Control`. Default `"Augur-Cache-Control"`; `""` = none.
    targeted_field: Option<String>,
    /// Variants stored per URL when responses carry `Vary` (one per combination of the
    /// request headers it names), 1..=1024. Default 8; the least recently stored is dropped
    /// first, so no client can fill the cache with variants of one URL.
    max_variants: Option<usize>,
}

/// `[redis]`: Redis (or Redis Cluster) as the second tier shared by a fleet.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    /// `redis://[USER:PASS@]HOST[:PORT][/DB]`, `rediss://…` (TLS) or `unix:///path/redis.sock`.
    /// Exactly one of `url` / `cluster`.
    url: Option<Human<RedisUrl>>,
    /// Redis Cluster seed nodes, e.g. `["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]`.
    cluster: Option<Vec<Human<RedisUrl>>>,
    /// Prefix of every key and of the invalidation channel. Default `"augur:"`.
    key_prefix: Option<String>,
    /// Deadline of one operation on the request path. Default `"50ms"`.
    timeout: Option<Human<Duration>>,
    /// Deadline of one connection attempt. Default `"1s"`.
    connect_timeout: Option<Human<Duration>>,
    /// Larger encoded entries stay in L1 only. Default `"1MiB"`.
    max_entry_size: Option<Human<ByteSize>>,
    /// Consecutive failures that open the circuit breaker. Default 5, at least 1.
    breaker_errors: Option<u32>,
    /// How long the open breaker skips Redis before probing. Default `"1s"`.
    breaker_cooldown: Option<Human<Duration>>,
    /// PEM file of the CA(s) that sign the Redis server's certificate, for `rediss://` with a
    /// private CA. Default: the system's trust store.
    ca_file: Option<String>,
}

/// `[prefetch]`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPrefetch {
    /// Request header that identifies a client, e.g. `"X-Client-Id"`. Default: `client_cookie`,
    /// else a hash of `Authorization` when present, else the peer IP.
    client_header: Option<Human<HeaderName>>,
    /// Cookie whose value identifies a client (e.g. `"session"`), used when `client_header`
    /// is unset or absent. Default: none.
    client_cookie: Option<Human<CookieName>>,
    /// A client's request sequence ends after this long without a request. Default `"5m"`.
    idle_gap: Option<Human<Duration>>,
    /// Successors prefetched per request, 1..=8. Default 1.
    top_k: Option<usize>,
    /// Minimum transition probability to prefetch, in (0, 1]. Default 0.3.
    threshold: Option<f32>,
    /// Transitions whose prefetch precision falls below this stop being prefetched, in
    /// [0, 1]. Default 0.3.
    precision_floor: Option<f32>,
    /// Prefetches with a known fate a transition needs before the floor applies. Default 3.
    min_samples: Option<u32>,
    /// Prefetches allowed per client request, in [0, 1]. Default 0.1.
    budget: Option<f32>,
    /// Concurrent prefetch requests to the upstreams, at least 1. Default 8.
    max_concurrency: Option<usize>,
    /// A prefetched entry unused by a real request within this window counts as wasted.
    /// Default `"60s"`.
    use_window: Option<Human<Duration>>,
    /// Half-life of the model's counts. Default `"1h"`.
    half_life: Option<Human<Duration>>,
    /// Cap on model states (least recently used dropped). Default 100000.
    max_states: Option<usize>,
    /// Successors kept per state. Default 4.
    top_successors: Option<usize>,
    /// Observations queued for the background worker; beyond this they are dropped.
    /// Default 4096.
    queue: Option<usize>,
    /// File the model is saved to on shutdown and loaded from at start. Default: none.
    state_file: Option<String>,
}

/// `[[route]]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    /// Required, unique, `[A-Za-z0-9_-]+`. Appears in logs and metrics.
    name: String,
    /// Host names to match, e.g. `["api.example.com", "*.example.com"]` (`*.` only as a
    /// leading wildcard). Absent or empty = any host.
    hosts: Option<Vec<String>>,
    /// Match paths starting with this, e.g. `"/users/"`. Must start with `/`.
    path_prefix: Option<String>,
    /// Match paths against a glob: `*` = one segment, `**` = any number, e.g.
    /// `"/users/*/orders"`. At most one of `path_prefix` / `path`; neither = prefix `"/"`.
    path: Option<String>,
    /// Methods to match, e.g. `["GET", "HEAD"]` (upper-cased). Absent = any method.
    methods: Option<Vec<Human<Method>>>,
    /// Required. `http://HOST[:PORT][/BASE-PATH]`; https is not supported yet.
    upstream: Human<Uri>,
    /// `Host` header sent upstream. Default: the upstream URL's authority.
    upstream_host: Option<String>,
    /// How long responses stay fresh in the cache. Default `[cache].default_ttl`.
    ttl: Option<Human<Duration>>,
    /// Only these query parameters take part in the cache key.
    query_include: Option<Vec<String>>,
    /// All query parameters except these take part in the cache key. At most one of
    /// `query_include` / `query_exclude`; neither = every parameter counts.
    query_exclude: Option<Vec<String>>,
    /// Request header names whose values are added to the cache key, e.g. `["Accept-Language"]`.
    key_headers: Option<Vec<Human<HeaderName>>>,
    /// Overrides `[upstream].timeout`.
    timeout: Option<Human<Duration>>,
    /// Overrides `[upstream].connect_timeout`.
    connect_timeout: Option<Human<Duration>>,
    /// Overrides `[upstream].max_connections`.
    max_connections: Option<usize>,
    /// How `ttl` combines with the origin's freshness: `"respect"` (default: the origin wins,
    /// `ttl` only when it says nothing), `"override"` (`ttl` wins), `"floor"` (at least `ttl`),
    /// `"cap"` (at most `ttl`). Anything but `"respect"` needs a non-zero `ttl` or
    /// `[cache].default_ttl`.
    cache_mode: Option<Human<CacheMode>>,
    /// Store responses that carry `Set-Cookie`; the cookie is stripped from the stored copy
    /// and never served from the cache. Default `false` (such responses are not stored).
    cache_set_cookie: Option<bool>,
    /// Serve stale responses up to this long past their lifetime, refreshed in the background
    /// or when the upstream fails, for origins that send neither `stale-while-revalidate` nor
    /// `stale-if-error`. Never for `must-revalidate`, `proxy-revalidate`, `no-cache`,
    /// `s-maxage`. Default `"0s"` (off).
    grace: Option<Human<Duration>>,
    /// Let the prefetcher fetch this route's URLs ahead of the client. Default `false`.
    prefetch: Option<bool>,
    /// Request headers a prefetch may copy from the client's request, e.g.
    /// `["Accept-Language"]`. Default none: prefetches never carry credentials.
    prefetch_forward_headers: Option<Vec<Human<HeaderName>>>,
}

// ───────────────────────────── loading and validation ─────────────────────────────

/// A broken limit found by [`check_limits`]: the field at fault and the other field involved.
struct Violation {
    path: &'static str,
    related: Option<&'static str>,
    msg: String,
}

/// Limits that must hold after the file *and* after environment overrides.
fn check_limits(c: &Config) -> Result<(), Violation> {
    let v = |path, related, msg: String| Err(Violation { path, related, msg });
    let zero = |path: &'static str, d: Duration| match d.is_zero() {
        true => v(path, None, "must be greater than 0s".to_owned()),
        false => Ok(()),
    };
    if c.server.worker_threads > MAX_WORKER_THREADS {
        let msg = format!(
            "{} is too many (use at most {MAX_WORKER_THREADS}, or 0 for one per core)",
            c.server.worker_threads
        );
        return v("server.worker_threads", None, msg);
    }
    if c.server.max_header_bytes < 8 * 1024 {
        let msg = format!(
            "{} is too small (must be at least 8KiB)",
            fmt_size(c.server.max_header_bytes as u64)
        );
        return v("server.max_header_bytes", None, msg);
    }
    zero("server.header_read_timeout", c.server.header_read_timeout)?;
    zero("upstream.connect_timeout", c.upstream.connect_timeout)?;
    zero("upstream.timeout", c.upstream.timeout)?;
    if c.upstream.max_connections == 0 {
        return v(
            "upstream.max_connections",
            None,
            "must be at least 1".to_owned(),
        );
    }
    if c.cache.memory < MIB {
        let msg = format!(
            "{} is too small (must be at least 1MiB)",
            fmt_size(c.cache.memory)
        );
        return v("cache.memory", None, msg);
    }
    if c.cache.max_entry_size > c.cache.memory {
        let msg = format!(
            "max_entry_size {} is larger than cache.memory {} (lower max_entry_size or raise memory)",
            fmt_size(c.cache.max_entry_size),
            fmt_size(c.cache.memory)
        );
        return v("cache.max_entry_size", Some("cache.memory"), msg);
    }
    if let Some(r) = &c.redis {
        zero("redis.timeout", r.timeout)?;
        zero("redis.connect_timeout", r.connect_timeout)?;
        zero("redis.breaker_cooldown", r.breaker_cooldown)?;
        if r.breaker_errors == 0 {
            return v(
                "redis.breaker_errors",
                None,
                "must be at least 1".to_owned(),
            );
        }
        if r.max_entry_size == 0 {
            return v(
                "redis.max_entry_size",
                None,
                "must be greater than 0 (remove [redis] to run without a second tier)".to_owned(),
            );
        }
    }
    if !(1..=1024).contains(&c.cache.max_variants) {
        let msg = format!(
            "{} is out of range (1..=1024 variants per URL; 8 is a good default)",
            c.cache.max_variants
        );
        return v("cache.max_variants", None, msg);
    }
    if !(1..=19).contains(&c.cache.compression_level) {
        let msg = format!(
            "{} is out of range (zstd levels are 1..=19; 3 is a good default)",
            c.cache.compression_level
        );
        return v("cache.compression_level", None, msg);
    }
    Ok(())
}

impl Config {
    /// Reads `path`, parses it ([`Config::from_str`]) and applies `AUGUR_*` variables from the
    /// process environment ([`Config::apply_env`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{name}: cannot read config file: {e}")))?;
        let mut config = Config::from_str(&text, &name)?;
        config.apply_env(std::env::vars())?;
        Ok(config)
    }

    /// Parses and validates TOML `text`; `file_name` only prefixes error messages.
    /// Does not look at the environment.
    pub fn from_str(text: &str, file_name: &str) -> Result<Config, ConfigError> {
        let index = SpanIndex::build(text);
        let valid_toml = index.is_some();
        let index = index.unwrap_or(SpanIndex {
            entries: Vec::new(),
        });
        let doc = Doc {
            file: file_name,
            text,
            index,
            valid_toml,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| doc.toml_err(&e))?;
        let config = build(&doc, raw)?;
        check_limits(&config).map_err(|v| {
            // A limit broken by a default: point at the other field involved, which is present.
            match (doc.index.offset_exact(v.path), v.related) {
                (None, Some(related)) if doc.index.offset_exact(related).is_some() => {
                    doc.err(related, &v.msg)
                }
                _ => doc.err(v.path, &v.msg),
            }
        })?;
        Ok(config)
    }

    /// Applies `AUGUR_*` overrides (see [`ENV_VARS`]) on top of the file, then re-checks the
    /// cross-field limits. Unknown `AUGUR_*` variables are ignored on purpose: other tools in
    /// the same container use the prefix too, so a typo in a variable name is NOT reported.
    ///
    /// `AUGUR_UPSTREAM_TIMEOUT` / `AUGUR_UPSTREAM_CONNECT_TIMEOUT` also update every route
    /// whose value equals the file's `[upstream]` default (i.e. that inherited it).
    pub fn apply_env(
        &mut self,
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        let mut applied: Vec<(&'static str, &'static str)> = Vec::new();
        for (key, value) in vars {
            let Some(&(name, field)) = ENV_VARS.iter().find(|(n, _)| *n == key) else {
                continue;
            };
            self.set_env(name, &value)
                .map_err(|msg| ConfigError(format!("{name}: {msg}")))?;
            applied.push((name, field));
        }
        check_limits(self).map_err(|v| {
            let var_for = |f: &str| {
                applied
                    .iter()
                    .rev()
                    .find(|(_, af)| *af == f)
                    .map(|(n, _)| *n)
            };
            let var = var_for(v.path)
                .or_else(|| v.related.and_then(var_for))
                .unwrap_or("environment overrides");
            ConfigError(format!("{var}: {}: {}", v.path, v.msg))
        })
    }

    fn set_env(&mut self, name: &str, value: &str) -> Result<(), String> {
        match name {
            "AUGUR_LISTEN" => self.server.listen = SocketAddr::parse(value)?,
            "AUGUR_ADMIN_LISTEN" => self.server.admin_listen = SocketAddr::parse(value)?,
            "AUGUR_WORKER_THREADS" => {
                self.server.worker_threads = value.trim().parse().map_err(|_| {
                    format!("invalid number {value:?} (expected 0..={MAX_WORKER_THREADS}; 0 = one per core)")
                })?;
            }
            "AUGUR_LOG_LEVEL" => self.server.log_level = log_level(value)?,
            "AUGUR_LOG_FORMAT" => self.server.log_format = LogFormat::parse(value)?,
            "AUGUR_CACHE_MEMORY" => self.cache.memory = parse_size(value)?,
            "AUGUR_CACHE_MAX_ENTRY_SIZE" => self.cache.max_entry_size = parse_size(value)?,
            "AUGUR_CACHE_DEFAULT_TTL" => self.cache.default_ttl = Duration::parse(value)?,
            "AUGUR_REDIS_URL" => {
                // Replaces the file's url or cluster; adds a [redis] with defaults if none.
                let target = RedisTarget::Single(RedisUrl::parse(value)?.0);
                match &mut self.redis {
                    Some(r) => r.target = target,
                    None => self.redis = Some(RedisConfig::defaults(target)),
                }
            }
            "AUGUR_UPSTREAM_TIMEOUT" => {
                let (old, new) = (self.upstream.timeout, Duration::parse(value)?);
                self.upstream.timeout = new;
                for r in self.routes.iter_mut().filter(|r| r.timeout == old) {
                    r.timeout = new;
                }
            }
            "AUGUR_UPSTREAM_CONNECT_TIMEOUT" => {
                let (old, new) = (self.upstream.connect_timeout, Duration::parse(value)?);
                self.upstream.connect_timeout = new;
                for r in self.routes.iter_mut().filter(|r| r.connect_timeout == old) {
                    r.connect_timeout = new;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The environment overrides and the field each one sets. Anything else starting with
/// `AUGUR_` is ignored (see [`Config::apply_env`]).
pub const ENV_VARS: &[(&str, &str)] = &[
    ("AUGUR_LISTEN", "server.listen"),
    ("AUGUR_ADMIN_LISTEN", "server.admin_listen"),
    ("AUGUR_WORKER_THREADS", "server.worker_threads"),
    ("AUGUR_LOG_LEVEL", "server.log_level"),
    ("AUGUR_LOG_FORMAT", "server.log_format"),
    ("AUGUR_CACHE_MEMORY", "cache.memory"),
    ("AUGUR_CACHE_MAX_ENTRY_SIZE", "cache.max_entry_size"),
    ("AUGUR_CACHE_DEFAULT_TTL", "cache.default_ttl"),
    ("AUGUR_REDIS_URL", "redis.url"),
    ("AUGUR_UPSTREAM_TIMEOUT", "upstream.timeout"),
    ("AUGUR_UPSTREAM_CONNECT_TIMEOUT", "upstream.connect_timeout"),
];

/// The directive itself is checked by `tracing` at startup; here only that there is one.
fn log_level(s: &str) -> Result<String, String> {
    match s.trim() {
        "" => Err(r#"empty log level (expected an EnvFilter directive such as "info" or "info,augur=debug")"#.to_owned()),
        t => Ok(t.to_owned()),
    }
}

fn build(doc: &Doc, raw: RawConfig) -> Result<Config, ConfigError> {
    let (s, sd) = (raw.server, ServerConfig::default());
    let server = ServerConfig {
        listen: s.listen.map_or(sd.listen, |h| h.0),
        admin_listen: s.admin_listen.map_or(sd.admin_listen, |h| h.0),
        worker_threads: s.worker_threads.unwrap_or(sd.worker_threads),
        header_read_timeout: s
            .header_read_timeout
            .map_or(sd.header_read_timeout, |h| h.0),
        shutdown_grace: s.shutdown_grace.map_or(sd.shutdown_grace, |h| h.0),
        max_request_body: s.max_request_body.map_or(sd.max_request_body, |h| h.0 .0),
        max_header_bytes: match s.max_header_bytes {
            Some(h) => usize::try_from(h.0 .0).unwrap_or(usize::MAX),
            None => sd.max_header_bytes,
        },
        http2: s.http2.unwrap_or(sd.http2),
        log_level: match s.log_level {
            Some(l) => log_level(&l).map_err(|m| doc.err("server.log_level", m))?,
            None => sd.log_level,
        },
        log_format: s.log_format.map_or(sd.log_format, |h| h.0),
    };
    let (u, ud) = (raw.upstream, UpstreamDefaults::default());
    let upstream = UpstreamDefaults {
        connect_timeout: u.connect_timeout.map_or(ud.connect_timeout, |h| h.0),
        timeout: u.timeout.map_or(ud.timeout, |h| h.0),
        max_connections: u.max_connections.unwrap_or(ud.max_connections),
        idle_timeout: u.idle_timeout.map_or(ud.idle_timeout, |h| h.0),
    };
    let (c, cd) = (raw.cache, CacheConfig::default());
    let cache = CacheConfig {
        memory: c.memory.map_or(cd.memory, |h| h.0 .0),
        max_entry_size: c.max_entry_size.map_or(cd.max_entry_size, |h| h.0 .0),
        compression_level: c.compression_level.unwrap_or(cd.compression_level),
        compression_threshold: c
            .compression_threshold
            .map_or(cd.compression_threshold, |h| h.0 .0),
        default_ttl: c.default_ttl.map_or(cd.default_ttl, |h| h.0),
        coalesce_timeout: c.coalesce_timeout.map_or(cd.coalesce_timeout, |h| h.0),
        max_heuristic_ttl: c.max_heuristic_ttl.map_or(cd.max_heuristic_ttl, |h| h.0),
        max_variants: c.max_variants.unwrap_or(cd.max_variants),
        targeted_field: match c.targeted_field {
            None => cd.targeted_field,
            Some(t) if t.trim().is_empty() => None,
            Some(t) => Some(HeaderName::from_bytes(t.trim().as_bytes()).map_err(|_| {
                doc.err(
                    "cache.targeted_field",
                    format!(r#"invalid header name {t:?} (expected e.g. "Augur-Cache-Control", or "" for none)"#),
                )
            })?),
        },
    };
    let prefetch = build_prefetch(doc, raw.prefetch)?;
    if raw.route.is_empty() {
        return Err(doc.err(
            "route",
            "no routes configured (add at least one [[route]] table with `name` and `upstream`)",
        ));
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut routes = Vec::with_capacity(raw.route.len());
    for (i, r) in raw.route.into_iter().enumerate() {
        if let Some(first) = names.get(&r.name) {
            let msg = format!(
                "duplicate route name {:?}, already used by route[{first}] (names must be unique)",
                r.name
            );
            return Err(doc.err(&format!("route[{i}].name"), msg));
        }
        names.insert(r.name.clone(), i);
        routes.push(build_route(doc, i, r, &upstream, &cache)?);
    }
    let redis = match raw.redis {
        Some(r) => Some(build_redis(doc, r)?),
        None => None,
    };
    Ok(Config {
        server,
        upstream,
        cache,
        redis,
        prefetch,
        routes,
    })
}

fn build_redis(doc: &Doc, r: RawRedis) -> Result<RedisConfig, ConfigError> {
    let target = match (r.url, r.cluster) {
        (Some(_), Some(_)) => {
            return Err(doc.err(
                "redis.cluster",
                "both url and cluster are set (use url for one Redis, cluster for Redis Cluster seed nodes)",
            ));
        }
        (Some(url), None) => RedisTarget::Single(url.0 .0),
        (None, Some(nodes)) if nodes.is_empty() => {
            return Err(doc.err(
                "redis.cluster",
                r#"empty list (name at least one node, e.g. ["redis://10.0.0.1:6379"])"#,
            ));
        }
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
            RedisTarget::Cluster(urls)
        }
        (None, None) => {
            return Err(doc.err(
                "redis",
                r#"[redis] needs `url` (e.g. "redis://127.0.0.1:6379") or `cluster` (a list of node URLs); remove the section to run without Redis"#,
            ));
        }
    };
    let ca_pem = match r.ca_file {
        Some(path) => {
            let pem = std::fs::read(&path).map_err(|e| {
                doc.err(
                    "redis.ca_file",
                    format!("cannot read {path:?}: {e} (a PEM file of CA certificates)"),
                )
            })?;
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(doc.err(
                    "redis.ca_file",
                    format!(
                        "{path:?} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"
                    ),
                ));
            }
            Some(pem)
        }
        None => None,
    };
    let d = RedisConfig::defaults(target);
    Ok(RedisConfig {
        key_prefix: r.key_prefix.unwrap_or(d.key_prefix),
        timeout: r.timeout.map_or(d.timeout, |h| h.0),
        connect_timeout: r.connect_timeout.map_or(d.connect_timeout, |h| h.0),
        max_entry_size: r.max_entry_size.map_or(d.max_entry_size, |h| h.0 .0),
        breaker_errors: r.breaker_errors.unwrap_or(d.breaker_errors),
        breaker_cooldown: r.breaker_cooldown.map_or(d.breaker_cooldown, |h| h.0),
        ca_pem,
        target: d.target,
    })
}

fn build_prefetch(doc: &Doc, p: RawPrefetch) -> Result<PrefetchConfig, ConfigError> {
    let d = PrefetchConfig::default();
    let unit = |name: &str, v: Option<f32>, def: f32, zero_ok: bool| match v {
        None => Ok(def),
        Some(x) if x.is_finite() && x <= 1.0 && (x > 0.0 || (zero_ok && x == 0.0)) => Ok(x),
        Some(x) => {
            let range = if zero_ok { "[0, 1]" } else { "(0, 1]" };
            Err(doc.err(
                &format!("prefetch.{name}"),
                format!("{x} is out of range (must be in {range}, e.g. 0.3)"),
            ))
        }
    };
    let count = |name: &str, v: Option<usize>, def: usize, max: usize| match v {
        None => Ok(def),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(doc.err(
            &format!("prefetch.{name}"),
            format!("{n} is out of range (must be 1..={max})"),
        )),
    };
    let c = PrefetchConfig {
        client_header: p.client_header.map(|h| h.0),
        client_cookie: p.client_cookie.map(|c| c.0 .0),
        idle_gap: p.idle_gap.map_or(d.idle_gap, |h| h.0),
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
        use_window: p.use_window.map_or(d.use_window, |h| h.0),
        half_life: p.half_life.map_or(d.half_life, |h| h.0),
        max_states: count("max_states", p.max_states, d.max_states, 100_000_000)?,
        top_successors: count("top_successors", p.top_successors, d.top_successors, 64)?,
        queue: count("queue", p.queue, d.queue, 1 << 20)?,
        state_file: p.state_file.map(std::path::PathBuf::from),
    };
    for (name, v) in [
        ("idle_gap", c.idle_gap),
        ("use_window", c.use_window),
        ("half_life", c.half_life),
    ] {
        if v.is_zero() {
            return Err(doc.err(&format!("prefetch.{name}"), "must be greater than 0s"));
        }
    }
    Ok(c)
}

fn build_route(
    doc: &Doc,
    i: usize,
    r: RawRoute,
    up: &UpstreamDefaults,
    cache: &CacheConfig,
) -> Result<RouteConfig, ConfigError> {
    let field = |f: &str| format!("route[{i}].{f}");
    let valid_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if r.name.is_empty() || !r.name.chars().all(valid_name) {
        let msg = format!(
            "invalid route name {:?} (use letters, digits, '_' and '-', e.g. \"users-api\")",
            r.name
        );
        return Err(doc.err(&field("name"), msg));
    }
    let mut hosts = Vec::new();
    for (j, h) in r.hosts.unwrap_or_default().into_iter().enumerate() {
        let rest = h.strip_prefix("*.").unwrap_or(&h);
        let ok_char =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '[' | ']');
        if rest.is_empty() || !rest.chars().all(ok_char) {
            let msg = format!(
                r#"invalid host {h:?} (expected a host name such as "api.example.com"; a wildcard is allowed only as a leading "*.")"#
            );
            return Err(doc.err(&format!("{}[{j}]", field("hosts")), msg));
        }
        hosts.push(h.to_ascii_lowercase());
    }
    let path_pattern = match r.path {
        Some(_) if r.path_prefix.is_some() => {
            return Err(doc.err(&field("path"), "both path_prefix and path are set (use one: path_prefix for a prefix, path for a glob)"));
        }
        Some(p) if !p.starts_with('/') => {
            return Err(doc.err(
                &field("path"),
                format!(r#"invalid path glob {p:?} (must start with "/", e.g. "/users/*/orders")"#),
            ));
        }
        p => p,
    };
    let path_prefix = match r.path_prefix {
        Some(p) if !p.starts_with('/') => {
            return Err(doc.err(
                &field("path_prefix"),
                format!(r#"invalid path prefix {p:?} (must start with "/", e.g. "/users/")"#),
            ));
        }
        None if path_pattern.is_none() => Some("/".to_owned()),
        p => p,
    };
    let methods = match r.methods {
        Some(m) if m.is_empty() => {
            return Err(doc.err(
                &field("methods"),
                "empty list matches no request (remove the field to allow any method)",
            ));
        }
        m => m.unwrap_or_default().into_iter().map(|h| h.0).collect(),
    };
    if let Some(h) = &r.upstream_host {
        if h.parse::<Authority>().is_err() || h.contains('@') {
            let msg = format!(
                r#"invalid upstream_host {h:?} (expected a host with optional port, e.g. "api.internal" or "api.internal:8080")"#
            );
            return Err(doc.err(&field("upstream_host"), msg));
        }
    }
    let query = match (r.query_include, r.query_exclude) {
        (Some(_), Some(_)) => {
            return Err(doc.err(
                &field("query_exclude"),
                "both query_include and query_exclude are set (use one)",
            ));
        }
        (Some(inc), None) => QueryKey::Include(inc),
        (None, Some(exc)) => QueryKey::Exclude(exc),
        (None, None) => QueryKey::All,
    };
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
        key_headers: r
            .key_headers
            .unwrap_or_default()
            .into_iter()
            .map(|h| h.0)
            .collect(),
        timeout: r.timeout.map_or(up.timeout, |h| h.0),
        connect_timeout: r.connect_timeout.map_or(up.connect_timeout, |h| h.0),
        max_connections: r.max_connections.unwrap_or(up.max_connections),
        cache_mode: r.cache_mode.map_or(CacheMode::Respect, |h| h.0),
        cache_set_cookie: r.cache_set_cookie.unwrap_or(false),
        grace: r.grace.map_or(Duration::ZERO, |h| h.0),
        prefetch: r.prefetch.unwrap_or(false),
        prefetch_forward_headers: r
            .prefetch_forward_headers
            .unwrap_or_default()
            .into_iter()
            .map(|h| h.0)
            .collect(),
    };
    if route.cache_mode != CacheMode::Respect && route.effective_ttl(cache).is_zero() {
        return Err(doc.err(
            &field("cache_mode"),
            "needs a TTL to apply (set `ttl` on the route or `[cache].default_ttl`, or use \"respect\")",
        ));
    }
    for (name, d) in [
        ("timeout", route.timeout),
        ("connect_timeout", route.connect_timeout),
    ] {
        if d.is_zero() {
            return Err(doc.err(&field(name), "must be greater than 0s"));
        }
    }
    if route.max_connections == 0 {
        return Err(doc.err(&field("max_connections"), "must be at least 1"));
    }
    Ok(route)
}
