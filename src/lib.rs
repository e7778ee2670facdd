//! Augur: a caching reverse proxy for HTTP APIs.
//!
//! ```text
//! server   accept (already-bound listener; connection caps, first-request and idle deadlines)
//!          ─► hyper-util auto conn (HTTP/1.1 + h2c)
//! proxy    handle(req) ─► Exchange::new, built once:
//!   normalise  Connection-named fields out, path normalised (RFC 3986), unkeyed overrides and
//!              unkeyed query parameters out of cacheable requests      bad path ─► 400
//!   route      routes.find(host, path, method)         no route ─► 404, JSON error
//!   key        route.key(..): the one place a key is derived: method, host, path, query params
//!              sorted (route include/exclude), route key headers ─► blake3, 128 bits
//!   observe    prefetcher.observe(..) as a GET arrives, never awaited
//!   cache      cache.lookup_or_fetch(key, fetch)        L1 (quick_cache, byte-weighted)
//!                ├─ vary     responses that Vary: key ─► variant key
//!                ├─ memory   fresh ─► HIT │ stale-while-revalidate ─► STALE + refresh (refresh.rs)
//!                │           stale or vacant ─► lead or follow the flight (flight.rs)
//!                ├─ redis    ([redis]) the leader asks L2 ─► HIT (x-cache-tier: L2), promote
//!                ├─ upstream only the leader fetches (fetch.rs; conditionally when stale:
//!                │           304 ─► REVALIDATED, revalidate.rs; failing ─► STALE where allowed)
//!                ├─ policy   storable? how fresh? (RFC 9111/5861/9213 + route) ─► store or pass
//!                └─ entry    zstd-encode once; L1 insert; L2 write-behind (sealed, spawned)
//!   respond    entry ─► response (respond.rs: Age, 304, 206, zstd or identity)
//!   pass       everything else streamed both ways; unsafe methods invalidate (pass.rs, §4.4)
//!   finish     x-cache, metrics, log
//! prefetch worker: markov.predict(state) ─► cache.lookup_or_fetch(next, fetch) in the background
//! admin    /metrics /healthz /readyz (open) · /cache /prefetch/* /purge (bearer token)
//! ```
//!
//! Dependencies point one way: `main → server → {proxy, admin} → {normalise, route, key, cache,
//! upstream, prefetch, metrics}`; `config`, `clock`, `body` and `error` are leaves. `cache` never
//! names `upstream`: it is handed the fetch as a closure. `proxy/` has one file per phase over
//! one `Exchange`; `cache/` one file per mechanism.

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
