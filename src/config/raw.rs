//! The file format: the private serde mirror of `proxy.toml`, one struct per table.
//!
//! Step 1 of loading (see the parent module). Every struct has `deny_unknown_fields`, so a
//! misspelt key is an error at its own `line:col` instead of a silently ignored setting, and
//! every field is an `Option` so that `build` alone decides the defaults. Each key's doc line
//! gives its default and range: it is the reference an operator reads next to the README.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, Method, Uri};
use ipnet::IpNet;
use serde::Deserialize;

use super::units::{ByteSize, CookieName, Human, RedisUrl};
use super::{CacheMode, EscapedSlashes, LogFormat};

/// The whole `proxy.toml`. Every section is optional except at least one `[[route]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// Listener, limits and logging.
    #[serde(default)]
    pub(super) server: RawServer,
    /// Defaults for every route's upstream connection.
    #[serde(default)]
    pub(super) upstream: RawUpstream,
    /// The in-process response cache.
    #[serde(default)]
    pub(super) cache: RawCache,
    /// The shared second tier. Absent = none.
    pub(super) redis: Option<RawRedis>,
    /// Markov prefetching (active only for routes with `prefetch = true`).
    #[serde(default)]
    pub(super) prefetch: RawPrefetch,
    /// Who may call the admin API's protected endpoints.
    #[serde(default)]
    pub(super) admin: RawAdmin,
    /// Routes, matched in file order; the first match wins. At least one is required.
    #[serde(default)]
    pub(super) route: Vec<RawRoute>,
}

/// `[server]`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    /// Proxy listener, `IP:PORT`. Default `"127.0.0.1:8080"`; use `"0.0.0.0:8080"` in containers.
    pub(super) listen: Option<Human<SocketAddr>>,
    /// Admin listener (health, metrics, and the token-protected `/cache`, `/prefetch/*`,
    /// `/purge`), `IP:PORT`. Default `"127.0.0.1:9090"`.
    pub(super) admin_listen: Option<Human<SocketAddr>>,
    /// A second listener that serves only `/metrics`, `/healthz` and `/readyz`, `IP:PORT`.
    /// Default none (those stay on `admin_listen`, open without a token there too).
    pub(super) metrics_listen: Option<Human<SocketAddr>>,
    /// Runtime worker threads. Default 0 = one per core; 1 = single-threaded; at most 1024.
    pub(super) worker_threads: Option<usize>,
    /// Time allowed for a client to send the request head. Default `"10s"`.
    pub(super) header_read_timeout: Option<Human<Duration>>,
    /// On shutdown, how long in-flight requests may finish. Default `"30s"`.
    pub(super) shutdown_grace: Option<Human<Duration>>,
    /// Larger request bodies get `413 Content Too Large`. Default `"10MiB"`.
    pub(super) max_request_body: Option<Human<ByteSize>>,
    /// Larger request heads get `431`. Default `"64KiB"`, at least `"8KiB"`.
    pub(super) max_header_bytes: Option<Human<ByteSize>>,
    /// Also serve HTTP/2 cleartext with prior knowledge (h2c). Default `true`.
    pub(super) http2: Option<bool>,
    /// Merge runs of `/` in request paths before routing, keying and forwarding. Default `true`.
    pub(super) merge_slashes: Option<bool>,
    /// Encoded slashes (`%2F`, `%5C`) in paths: `"reject"` (400, default), `"keep"` (one
    /// segment, forwarded encoded) or `"decode"` (to `/`, then routed).
    pub(super) escaped_slashes: Option<Human<EscapedSlashes>>,
    /// Peers (CIDRs, e.g. `["10.0.0.0/8"]`) whose `X-Forwarded-For`/`-Proto`/`-Host` are
    /// kept; from others Augur sets them itself. Default none.
    pub(super) trusted_proxies: Option<Vec<Human<IpNet>>>,
    /// A `tracing` EnvFilter directive, e.g. `"info"` or `"info,augur=debug"`. Default `"info"`.
    /// `RUST_LOG`, when set, wins at runtime.
    pub(super) log_level: Option<String>,
    /// `"text"` (default) or `"json"`.
    pub(super) log_format: Option<Human<LogFormat>>,
    /// Open client connections; more are closed on accept. Default 10000, at least 1.
    pub(super) max_connections: Option<usize>,
    /// Open client connections per client IP; more are closed on accept. Default 0 = no
    /// per-IP cap (behind a load balancer every client shares its IP).
    pub(super) max_connections_per_ip: Option<usize>,
    /// Time from accept until the first request head is complete (covers the HTTP/2 preface
    /// and SETTINGS); past it the connection is closed. Default: `header_read_timeout`.
    pub(super) first_request_timeout: Option<Human<Duration>>,
    /// A connection on which no request starts for this long is closed gracefully (GOAWAY on
    /// HTTP/2; responses in flight finish). Default `"60s"`.
    pub(super) idle_timeout: Option<Human<Duration>>,
    /// HTTP/2 PING interval. Default `"20s"`.
    pub(super) http2_keep_alive_interval: Option<Human<Duration>>,
    /// An unanswered HTTP/2 PING closes the connection after this long. Default `"20s"`.
    pub(super) http2_keep_alive_timeout: Option<Human<Duration>>,
    /// Concurrent streams per HTTP/2 connection, 1..=1000. Default 100.
    pub(super) http2_max_concurrent_streams: Option<u32>,
    /// Requests a client may cancel (HTTP/2 RST_STREAM, or hang up) before their response
    /// head, per connection per 10 s; one more and the connection gets GOAWAY. Default 100,
    /// at least 1.
    pub(super) max_client_resets: Option<u32>,
}

/// `[admin]`: the admin API's bearer tokens. Without a token, `/cache`, `/prefetch/*` and
/// `POST /purge…` answer 403.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    /// Path of a file with one `read:<token>` or `purge:<token>` per line (16 to 256
    /// characters of `A-Za-z0-9-._~+/`, `#` comments). Default none. Read once at start-up.
    pub(super) token_file: Option<String>,
    /// With no `token_file` and a loopback `server.admin_listen` only: serve the protected
    /// endpoints without a token. Default `false`.
    pub(super) allow_unauthenticated_loopback: Option<bool>,
}

/// `[upstream]`: defaults for every route; each route may override the first three.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    /// TCP connect timeout. Default `"2s"`.
    pub(super) connect_timeout: Option<Human<Duration>>,
    /// Time until the upstream's response headers arrive. Default `"30s"`.
    pub(super) timeout: Option<Human<Duration>>,
    /// Concurrent connections per upstream. Default 256, at least 1.
    pub(super) max_connections: Option<usize>,
    /// How long a pooled keep-alive connection may stay idle; keep it below the upstream's
    /// own keep-alive timeout. Default `"4s"`.
    pub(super) idle_timeout: Option<Human<Duration>>,
    /// Total time an upstream response body may take, from its head to its last byte, whether
    /// buffered for the store or streamed to a client; past it the body is cut and its
    /// connection permit released. Default `"5m"`.
    pub(super) body_timeout: Option<Human<Duration>>,
    /// Bytes of response bodies being buffered for the store at once, over all routes; a miss
    /// that would go over streams through unstored. Default `"256MiB"`; at least
    /// `cache.max_entry_size`.
    pub(super) max_inflight_bytes: Option<Human<ByteSize>>,
}

/// `[cache]`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    /// Memory budget of the cache. Default `"256MiB"`, at least `"1MiB"`.
    pub(super) memory: Option<Human<ByteSize>>,
    /// Larger responses stream through unstored. Default `"8MiB"`; must be <= `memory`.
    pub(super) max_entry_size: Option<Human<ByteSize>>,
    /// zstd level for stored bodies, 1..=19. Default 3.
    pub(super) compression_level: Option<i32>,
    /// Bodies at or above this size are zstd-compressed when stored. Default `"1KiB"`.
    pub(super) compression_threshold: Option<Human<ByteSize>>,
    /// TTL for routes that set none. Default `"0s"` = store only responses with explicit
    /// freshness (`Cache-Control: max-age`, `Expires`).
    pub(super) default_ttl: Option<Human<Duration>>,
    /// How long concurrent misses for one key wait for the leader's response before fetching
    /// themselves. Default `"10s"`.
    pub(super) coalesce_timeout: Option<Human<Duration>>,
    /// Upper bound of a heuristic freshness lifetime (10% of the time since `Last-Modified`,
    /// used only when the origin sends no explicit freshness). Default `"24h"`; `"0s"` = never
    /// use heuristic freshness.
    pub(super) max_heuristic_ttl: Option<Human<Duration>>,
    /// A cache-control field aimed at Augur alone (RFC 9213 targeted field), taking precedence
    /// over `CDN-Cache-Control` and `Cache-Control`. Default `"Augur-Cache-Control"`; `""` = none.
    pub(super) targeted_field: Option<String>,
    /// Whether `CDN-Cache-Control` (RFC 9213) takes precedence over `Cache-Control` as it does
    /// for a CDN; `false` when the origin aims it at an outer CDN only. Default `true`.
    pub(super) honour_cdn_cache_control: Option<bool>,
    /// Variants stored per URL when responses carry `Vary` (one per combination of the
    /// request headers it names), 1..=1024. Default 8; the least recently stored is dropped
    /// first, so no client can fill the cache with variants of one URL.
    pub(super) max_variants: Option<usize>,
    /// Let a 2xx/3xx answer to a method other than POST, PUT, PATCH, DELETE invalidate the
    /// URL too. Default `false`.
    pub(super) invalidate_unknown_methods: Option<bool>,
    /// Request headers that carry a client's credentials, like `Authorization` (which always
    /// counts): a request with one the route does not name in `key_headers` is answered only
    /// by responses the origin marked shareable, and its own response is stored only with
    /// `public`, `s-maxage` or `must-revalidate` and explicit freshness (never a route `ttl`,
    /// `grace` or heuristic). Default `["Cookie", "X-Api-Key", "Api-Key", "X-Auth-Token",
    /// "X-Access-Token", "X-Session-Token", "X-CSRF-Token", "X-Amz-Security-Token"]`; the
    /// list replaces the default; `[]` = only `Authorization`.
    pub(super) credential_headers: Option<Vec<Human<HeaderName>>>,
}

/// `[redis]`: Redis (or Redis Cluster) as the second tier shared by a fleet.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    /// `redis://[USER:PASS@]HOST[:PORT][/DB]`, `rediss://…` (TLS) or `unix:///path/redis.sock`.
    /// Exactly one of `url` / `cluster`.
    pub(super) url: Option<Human<RedisUrl>>,
    /// Redis Cluster seed nodes, e.g. `["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]`.
    pub(super) cluster: Option<Vec<Human<RedisUrl>>>,
    /// Prefix of every key and of the invalidation channel. Default `"augur:"`.
    pub(super) key_prefix: Option<String>,
    /// Deadline of one operation on the request path. Default `"50ms"`.
    pub(super) timeout: Option<Human<Duration>>,
    /// Deadline of one connection attempt. Default `"1s"`.
    pub(super) connect_timeout: Option<Human<Duration>>,
    /// Larger encoded entries stay in L1 only. Default `"1MiB"`.
    pub(super) max_entry_size: Option<Human<ByteSize>>,
    /// Consecutive failures that open the circuit breaker. Default 5, at least 1.
    pub(super) breaker_errors: Option<u32>,
    /// How long the open breaker skips Redis before probing. Default `"1s"`.
    pub(super) breaker_cooldown: Option<Human<Duration>>,
    /// PEM file of the CA(s) that sign the Redis server's certificate, for `rediss://` with a
    /// private CA. Default: the system's trust store.
    pub(super) ca_file: Option<String>,
    /// File holding the secret (at least 16 bytes; surrounding whitespace ignored) that keys
    /// the MAC over values and invalidations. Default: none (`AUGUR_REDIS_SECRET` may set it;
    /// without either, values are not authenticated and `augur check` warns).
    pub(super) secret_file: Option<String>,
    /// Refused: a secret inline in the TOML ends up in repositories and logs (use
    /// `secret_file` or `AUGUR_REDIS_SECRET`). Its value is never read.
    pub(super) secret: Option<serde::de::IgnoredAny>,
    /// How often the invalidation subscription is PINGed. Default `"5s"`, above 0.
    pub(super) pubsub_heartbeat: Option<Human<Duration>>,
    /// Write-behind SETs in flight at once; past it a write is skipped and counted
    /// (`augur_l2_writes_total{result="busy"}`). Default 256, at least 1.
    pub(super) max_pending_writes: Option<usize>,
}

/// `[prefetch]`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrefetch {
    /// Request header that identifies a client, e.g. `"X-Client-Id"`. Default: `client_cookie`,
    /// else a hash of `Authorization` when present, else the peer IP.
    pub(super) client_header: Option<Human<HeaderName>>,
    /// Cookie whose value identifies a client (e.g. `"session"`), used when `client_header`
    /// is unset or absent. Default: none.
    pub(super) client_cookie: Option<Human<CookieName>>,
    /// A client's request sequence ends after this long without a request. Default `"5m"`.
    pub(super) idle_gap: Option<Human<Duration>>,
    /// Successors prefetched per request, 1..=8. Default 1.
    pub(super) top_k: Option<usize>,
    /// Minimum transition probability to prefetch, in (0, 1]. Default 0.3.
    pub(super) threshold: Option<f32>,
    /// Transitions whose prefetch precision falls below this stop being prefetched, in
    /// [0, 1]. Default 0.3.
    pub(super) precision_floor: Option<f32>,
    /// Prefetches with a known fate a transition needs before the floor applies. Default 3.
    pub(super) min_samples: Option<u32>,
    /// Prefetches allowed per client request, in [0, 1]. Default 0.1.
    pub(super) budget: Option<f32>,
    /// Concurrent prefetch requests to the upstreams, at least 1. Default 8.
    pub(super) max_concurrency: Option<usize>,
    /// A prefetched entry unused by a real request within this window counts as wasted.
    /// Default `"60s"`.
    pub(super) use_window: Option<Human<Duration>>,
    /// Half-life of the model's counts. Default `"1h"`.
    pub(super) half_life: Option<Human<Duration>>,
    /// Cap on model states (least recently used dropped). Default 100000.
    pub(super) max_states: Option<usize>,
    /// Successors kept per state. Default 4.
    pub(super) top_successors: Option<usize>,
    /// Observations queued for the background worker; beyond this they are dropped.
    /// Default 4096.
    pub(super) queue: Option<usize>,
    /// File the model is saved to (periodically and on shutdown) and loaded from at start.
    /// Written with mode 0600. Default: none.
    pub(super) state_file: Option<String>,
    /// How often the model is saved to `state_file` while running; `"0s"` = only on
    /// shutdown. Default `"5m"`.
    pub(super) save_interval: Option<Human<Duration>>,
    /// Memory the model may hold (interned keys, states, clients); the least recently used
    /// states are dropped beyond it. At least `"1MiB"`. Default `"64MiB"`.
    pub(super) max_model_bytes: Option<Human<ByteSize>>,
    /// Requests whose host + path + query is longer than this are not observed (counted in
    /// `augur_prefetch_skipped_long_url_total`), 64B..=64KiB. Default `"2KiB"`.
    pub(super) max_url_bytes: Option<Human<ByteSize>>,
    /// Bytes of observations queued for the worker (besides `queue`); beyond, they are dropped.
    /// At least `"64KiB"`. Default `"4MiB"`.
    pub(super) queue_bytes: Option<Human<ByteSize>>,
    /// Prefetches allowed per request of one client (its own token bucket, beside the global
    /// `budget`; burst `max(1, 4 × client_budget)`), in [0, 1]. Default 0.5.
    pub(super) client_budget: Option<f32>,
}

/// `[[route]]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    /// Required, unique, `[A-Za-z0-9_-]+`. Appears in logs and metrics.
    pub(super) name: String,
    /// Host names to match, e.g. `["api.example.com", "*.example.com"]` (`*.` only as a
    /// leading wildcard). Absent or empty = any host.
    pub(super) hosts: Option<Vec<String>>,
    /// Match paths starting with this, e.g. `"/users/"`. Must start with `/`.
    pub(super) path_prefix: Option<String>,
    /// Match paths against a glob: `*` = one segment, `**` = any number, e.g.
    /// `"/users/*/orders"`. At most one of `path_prefix` / `path`; neither = prefix `"/"`.
    pub(super) path: Option<String>,
    /// Methods to match, e.g. `["GET", "HEAD"]` (upper-cased). Absent = any method.
    pub(super) methods: Option<Vec<Human<Method>>>,
    /// Required. `http://HOST[:PORT][/BASE-PATH]`; https is not supported yet.
    pub(super) upstream: Human<Uri>,
    /// `Host` header sent upstream. Default: the upstream URL's authority.
    pub(super) upstream_host: Option<String>,
    /// How long responses stay fresh in the cache. Default `[cache].default_ttl`.
    pub(super) ttl: Option<Human<Duration>>,
    /// Only these query parameters take part in the cache key.
    pub(super) query_include: Option<Vec<String>>,
    /// All query parameters except these take part in the cache key. At most one of
    /// `query_include` / `query_exclude`; neither = every parameter counts.
    pub(super) query_exclude: Option<Vec<String>>,
    /// Request header names whose values are added to the cache key, e.g. `["Accept-Language"]`.
    pub(super) key_headers: Option<Vec<Human<HeaderName>>>,
    /// Overrides `[upstream].timeout`.
    pub(super) timeout: Option<Human<Duration>>,
    /// Overrides `[upstream].connect_timeout`.
    pub(super) connect_timeout: Option<Human<Duration>>,
    /// Overrides `[upstream].max_connections`.
    pub(super) max_connections: Option<usize>,
    /// How `ttl` combines with the origin's freshness: `"respect"` (default: the origin wins,
    /// `ttl` only when it says nothing), `"override"` (`ttl` wins), `"floor"` (at least `ttl`),
    /// `"cap"` (at most `ttl`). Anything but `"respect"` needs a non-zero `ttl` or
    /// `[cache].default_ttl`.
    pub(super) cache_mode: Option<Human<CacheMode>>,
    /// Store responses that carry `Set-Cookie`; the cookie is stripped from the stored copy
    /// and never served from the cache. Default `false` (such responses are not stored).
    pub(super) cache_set_cookie: Option<bool>,
    /// Serve stale responses up to this long past their lifetime, refreshed in the background
    /// or when the upstream fails, for origins that send neither `stale-while-revalidate` nor
    /// `stale-if-error`. Never for `must-revalidate`, `proxy-revalidate`, `no-cache`,
    /// `s-maxage`. Default `"0s"` (off).
    pub(super) grace: Option<Human<Duration>>,
    /// Let the prefetcher fetch this route's URLs ahead of the client. Default `false`.
    pub(super) prefetch: Option<bool>,
    /// Request headers a prefetch may copy from the client's request, e.g.
    /// `["Accept-Language"]`. Default none: prefetches never carry credentials.
    pub(super) prefetch_forward_headers: Option<Vec<Human<HeaderName>>>,
    /// Allow `prefetch_forward_headers` to name a credential (`Authorization`, `Cookie`,
    /// `Proxy-Authorization`, `X-Api-Key`, `X-Auth-Token`, `X-Csrf-Token`): prefetches anyone
    /// can train would carry a victim's credentials. Default `false` (a config error).
    pub(super) unsafe_prefetch_forward_credentials: Option<bool>,
    /// Request headers removed from GET/HEAD before keying and forwarding, e.g.
    /// `["X-Debug"]` (on top of `Forwarded`, `X-Original-URL` and the other override fields
    /// Augur always removes unless `key_headers` names them). Default none.
    pub(super) strip_request_headers: Option<Vec<Human<HeaderName>>>,
    /// Forward query parameters that `query_include` / `query_exclude` leave out of the key.
    /// Default `false`: they are dropped, so the upstream cannot answer for a parameter the
    /// key does not hold (cache poisoning). `augur check` warns when set.
    pub(super) forward_unkeyed_query: Option<bool>,
    /// Answer `Cache-Control: no-cache` / `max-age=0` requests (browser reloads) from a fresh
    /// stored response instead of going upstream. Default `false`.
    pub(super) ignore_client_no_cache: Option<bool>,
}
