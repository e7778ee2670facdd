//! `proxy.toml` ─► validated [`Config`]. A leaf: nothing else in the crate is named here.
//!
//! Loading happens in three steps, one file each:
//!
//! 1. `toml` deserializes the text into the private `Raw*` structs (`raw`). Human units
//!    (durations, byte sizes, addresses, methods, header names, the upstream URL) are parsed
//!    *during* deserialization (`units`), so `toml` attaches the byte span of the offending value.
//! 2. The raw structs are checked and turned into the public types, filling in defaults (`build`).
//! 3. `AUGUR_*` environment overrides are applied ([`Config::apply_env`]) and the cross-field
//!    limits are checked again (`env`).
//!
//! Every error is one line, `FILE:LINE:COL: FIELD.PATH: what is wrong (how to fix it)`. The
//! field path comes from an index built from a second, structure-only parse of the same text
//! (`span`): it maps byte spans to paths like `route[1].ttl` (route indices are 0-based) and back.
//!
//! This file holds the contract: the validated types with their defaults, and the entry points.

mod span;
mod units;
mod raw;
mod build;
mod env;
mod admin;

use ipnet::IpNet;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::{HeaderName, Method, Uri};

use raw::RawConfig;
use span::{Doc, SpanIndex};

pub use admin::{AdminConfig, AdminTokens, Scope};
pub use env::ENV_VARS;

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
    pub admin: AdminConfig,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// `None` = `/metrics` and the health endpoints are served on `admin_listen` only.
    pub metrics_listen: Option<SocketAddr>,
    /// 0 = one per core; 1 = a current-thread runtime.
    pub worker_threads: usize,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    pub max_request_body: u64,
    pub max_header_bytes: usize,
    pub http2: bool,
    pub log_level: String,
    pub log_format: LogFormat,
    /// How request paths are normalised before routing, keying and forwarding.
    pub paths: PathRules,
    /// Peers whose `X-Forwarded-For` / `-Proto` / `-Host` are kept (appended to); from any
    /// other peer Augur sets them itself. Empty = none.
    pub trusted_proxies: Vec<IpNet>,
    /// Open client connections; more are closed on accept.
    pub max_connections: usize,
    /// Open client connections per client IP; 0 = no per-IP cap.
    pub max_connections_per_ip: usize,
    /// Accept until the first request head is complete (HTTP/2 preface included).
    pub first_request_timeout: Duration,
    /// No request started for this long: the connection is closed gracefully.
    pub idle_timeout: Duration,
    pub http2_keep_alive_interval: Duration,
    pub http2_keep_alive_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
    /// Requests cancelled by the client before their head, per connection per 10 s.
    pub max_client_resets: u32,
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
    /// Total deadline of an upstream response body, head to last byte.
    pub body_timeout: Duration,
    /// Bytes buffered for the store at once, over all routes.
    pub max_inflight_bytes: u64,
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
    /// Whether `CDN-Cache-Control` (RFC 9213) governs like a targeted field; `false` for an
    /// origin that aims it at an outer CDN only.
    pub honour_cdn_cache_control: bool,
    /// Variants kept per URL when responses `Vary` (RFC 9111 §4.1); the least recently stored
    /// goes first.
    pub max_variants: usize,
    /// A 2xx/3xx answer to a method other than POST, PUT, PATCH and DELETE also invalidates
    /// (RFC 9111 §4.4 reads "unsafe"). Default `false`: unknown methods cannot purge.
    pub invalidate_unknown_methods: bool,
    /// Request headers that, like `Authorization`, carry a client's credentials (RFC 9111
    /// §3.5 applied to them); see [`DEFAULT_CREDENTIAL_HEADERS`].
    pub credential_headers: Vec<HeaderName>,
}

/// `cache.credential_headers` when the file sets none: the session cookie and the API-key
/// headers in common use. A request with one of them is treated like one with `Authorization`.
pub const DEFAULT_CREDENTIAL_HEADERS: [&str; 8] = [
    "cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-access-token",
    "x-session-token",
    "x-csrf-token",
    "x-amz-security-token",
];

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
    /// Keys the MAC over every value and invalidation message (`secret_file`, or
    /// `AUGUR_REDIS_SECRET`); `None` = values are bounds-checked but not authenticated.
    pub secret: Option<RedisSecret>,
    /// How often the invalidation subscription is PINGed; no answer within `connect_timeout`
    /// means it is lost.
    pub pubsub_heartbeat: Duration,
    /// Write-behind SETs in flight at once; past it a write is skipped (the entry stays in L1).
    pub max_pending_writes: usize,
    /// The largest decoded body a value from Redis may declare: `cache.max_entry_size`, copied
    /// here at load (no stored body is larger), not a key of its own.
    pub max_body_size: u64,
}

/// The `[redis]` secret. Never printed: `Debug` shows its length only.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSecret(Vec<u8>);

impl RedisSecret {
    /// Shorter secrets are refused: 16 bytes is the least that a guess cannot find.
    pub const MIN_LEN: usize = 16;

    /// The secret in `raw` without surrounding whitespace (a file's trailing newline), or why
    /// it is refused. The message never contains the secret.
    pub(crate) fn new(raw: &[u8]) -> Result<RedisSecret, String> {
        let s = raw.trim_ascii();
        if s.len() < Self::MIN_LEN {
            return Err(format!(
                "the secret is {} bytes, fewer than {} (generate one, e.g. `openssl rand -hex 32`)",
                s.len(),
                Self::MIN_LEN
            ));
        }
        Ok(RedisSecret(s.to_vec()))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for RedisSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisSecret({} bytes)", self.0.len())
    }
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
            secret: None,
            pubsub_heartbeat: Duration::from_secs(5),
            max_pending_writes: 256,
            max_body_size: CacheConfig::default().max_entry_size,
        }
    }

    /// What `augur check` prints and the proxy logs at start when values are not
    /// authenticated.
    pub fn unauthenticated_warning(&self) -> Option<&'static str> {
        match self.secret {
            Some(_) => None,
            None => Some(
                "[redis] has no secret (set redis.secret_file or AUGUR_REDIS_SECRET): L2 values and invalidation messages are bounds-checked but NOT authenticated; anyone who can write to this Redis can poison cached responses and clear every instance's cache",
            ),
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
    /// Periodic save of the model while running; zero = only on shutdown.
    pub save_interval: Duration,
    /// Memory the model may hold (approximate bytes); LRU states dropped beyond.
    pub max_model_bytes: u64,
    /// Longer host + path + query is not observed.
    pub max_url_bytes: u64,
    /// Bytes of queued observations; more are dropped (and counted).
    pub queue_bytes: u64,
    /// Prefetches allowed per request of one client (its own token bucket), in [0, 1].
    pub client_budget: f32,
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
            save_interval: Duration::from_secs(300),
            max_model_bytes: 64 << 20,
            max_url_bytes: 2 << 10,
            queue_bytes: 4 << 20,
            client_budget: 0.5,
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
    /// Request headers removed from cacheable requests before they are keyed or forwarded
    /// (on top of the override fields Augur always removes; see `normalise`).
    pub strip_request_headers: Vec<HeaderName>,
    /// Send query parameters the key leaves out to the upstream anyway. Default `false`:
    /// the upstream sees exactly the parameters the key holds.
    pub forward_unkeyed_query: bool,
    /// Serve stored fresh responses to requests with `Cache-Control: no-cache` / `max-age=0`
    /// (browser reloads) instead of revalidating each. Default `false` (RFC 9111 as is).
    pub ignore_client_no_cache: bool,
}

/// What to do with `%2F` / `%5C` in a path (Envoy's `path_with_escaped_slashes_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// Refuse the request (400): the safe default.
    #[default]
    Reject,
    /// Keep them encoded (upper-cased), as one segment: for APIs with encoded ids.
    Keep,
    /// Decode them to `/` before dot segments are removed and the request is routed.
    Decode,
}

/// How paths are normalised (`[server]` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    /// Merge runs of `/` into one.
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathRules {
    fn default() -> Self {
        PathRules {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
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
            metrics_listen: None,
            worker_threads: 0,
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            max_request_body: 10 * MIB,
            max_header_bytes: 64 * 1024,
            http2: true,
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
            paths: PathRules::default(),
            trusted_proxies: Vec::new(),
            max_connections: 10_000,
            max_connections_per_ip: 0,
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            http2_keep_alive_interval: Duration::from_secs(20),
            http2_keep_alive_timeout: Duration::from_secs(20),
            http2_max_concurrent_streams: 100,
            max_client_resets: 100,
        }
    }
}

impl Default for UpstreamDefaults {
    fn default() -> Self {
        UpstreamDefaults {
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(30),
            max_connections: 256,
            // Below common upstream keep-alive timeouts (Node and Apache 5 s, nginx 75 s), so
            // Augur drops an idle connection before the upstream closes it; the race that is
            // left is covered by the retry in `upstream` (review L12). Gunicorn (2 s) needs less.
            idle_timeout: Duration::from_secs(4),
            body_timeout: Duration::from_secs(300),
            max_inflight_bytes: 256 * MIB,
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
            honour_cdn_cache_control: true,
            max_variants: 8,
            invalidate_unknown_methods: false,
            credential_headers: DEFAULT_CREDENTIAL_HEADERS
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect(),
        }
    }
}

impl RouteConfig {
    /// Query parameters that are not in the key still go upstream.
    pub fn forwards_unkeyed_query(&self) -> bool {
        self.forward_unkeyed_query && self.query != QueryKey::All
    }

    /// The route's TTL, falling back to `[cache].default_ttl` when the route sets none.
    pub fn effective_ttl(&self, cache: &CacheConfig) -> Duration {
        self.ttl.unwrap_or(cache.default_ttl)
    }
}

const MIB: u64 = 1 << 20;

// ───────────────────────────── entry points ─────────────────────────────

impl Config {
    /// What is valid but unsafe as configured, for `augur check` (which still succeeds) and
    /// the log at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if let Some(w) = self
            .redis
            .as_ref()
            .and_then(|r| r.unauthenticated_warning())
        {
            out.push(w.to_owned());
        }
        for r in self.routes.iter().filter(|r| r.forwards_unkeyed_query()) {
            out.push(format!(
                "route {}: forward_unkeyed_query = true sends the upstream query parameters the \
                 cache key leaves out; an upstream that reflects one into a response poisons \
                 that URL for everyone",
                r.name
            ));
        }
        out
    }

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
        let config = build::build(&doc, raw)?;
        env::check_limits(&config).map_err(|v| {
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
}
