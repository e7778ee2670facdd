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
//!              ├─ memory   fresh ─► HIT │ stale or vacant ─► join or lead the flight
//!              ├─ upstream only the leader fetches; others wait (coalesced, with a deadline)
//!              ├─ policy   storable? how fresh? (RFC 9111 + route TTL) ─► store or pass
//!              └─ entry    zstd-encode once; L1 insert
//!   respond  entry ─► response (Age, x-cache), pass-through streamed
//!   observe  prefetcher.observe(client, request)    never awaited on the request path
//! prefetch worker: markov.predict(state) ─► cache.lookup_or_fetch(next, fetch) in the background
//! admin    /metrics /healthz /readyz /purge /prefetch/transitions … on its own listener
//! ```
//!
//! Dependencies point one way: `main → server → {proxy, admin} → {route, key, cache, upstream,
//! prefetch, metrics}`; `config`, `metrics`, `body` and `error` are leaves. `cache` never names
//! `upstream`: it is handed the fetch as a closure.

pub mod admin;
pub mod body;
pub mod cache;
pub mod config;
pub mod demo;
pub mod error;
pub mod key;
pub mod metrics;
pub mod prefetch;
pub mod proxy;
pub mod route;
pub mod server;
pub mod upstream;
