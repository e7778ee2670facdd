//! Augur: a caching reverse proxy for HTTP APIs.
//!
//! ```text
//! server   accept (already-bound listener) ─► hyper-util auto conn (HTTP/1.1 + h2c)
//! proxy    handle(req):
//!   route    routes.find(host, path, method)        no route ─► 404, JSON error
//!   key      CacheKey::derive(..)                    method, host, normalised path,
//!                                                    query params sorted (route include/exclude),
//!                                                    route key headers ─► blake3, 128 bits
//!   cache    cache.lookup_or_fetch(key, fetch)       L1 (quick_cache, byte-weighted)
//!              ├─ vary     responses that Vary: key ─► variant key (request's selecting headers)
//!              ├─ memory   fresh ─► HIT │ stale-while-revalidate ─► STALE + background refresh
//!              │           stale or vacant ─► join or lead the flight
//!              ├─ redis    ([redis]) the leader asks L2 ─► HIT (x-cache-tier: L2), promote to L1
//!              ├─ upstream only the leader fetches (conditionally when stale: 304 ─► REVALIDATED;
//!              │           5xx/unreachable within stale-if-error ─► STALE); others wait
//!              ├─ policy   storable? how fresh? (RFC 9111/5861/9213 + route mode) ─► store or pass
//!              └─ entry    zstd-encode once; L1 insert; L2 write-behind (spawned)
//!   respond  entry ─► response (Age, x-cache, 304 for a matching client validator, 206 for
//!            one byte range), pass-through streamed; unsafe methods invalidate (§4.4)
//!   observe  prefetcher.observe(client, request) as a GET arrives, before the cache is asked;
//!            prefetcher.served(key, hit/miss) once answered   never awaited on the request path
//! prefetch worker: markov.predict(state) ─► cache.lookup_or_fetch(next, fetch) in the background
//! admin    /metrics /healthz /readyz /purge /prefetch/transitions … on its own listener
//! ```
//!
//! Dependencies point one way: `main → server → {proxy, admin} → {route, key, cache, upstream,
//! prefetch, metrics}`; `config`, `metrics`, `body` and `error` are leaves. `cache` never names
//! `upstream`: it is handed the fetch as a closure.

// In request order: accept, route, key, the request path, the cache, the upstream, then
// what watches and steers it. `config`, `clock`, `metrics`, `body` and `error` are leaves.
pub mod server;
pub mod normalise;
pub mod route;
pub mod key;
pub mod proxy;
pub mod range;
pub mod cache;
pub mod upstream;
pub mod body;
pub mod prefetch;
pub mod admin;
pub mod metrics;
pub mod error;
pub mod config;
pub mod clock;
