//! L2: Redis (or Redis Cluster) as the tier a fleet shares, asked only by the coalescing leader
//! after an L1 miss, and written behind after a storable upstream response.
//!
//! Redis is an optimisation, never a dependency: every operation on the request path has a
//! deadline (`[redis].timeout`), a circuit breaker skips Redis after `breaker_errors`
//! consecutive failures and lets one probe through after `breaker_cooldown`, and the connection
//! is made (and, for a single node, remade by the `redis` crate's connection manager) in the
//! background, so Augur starts and serves from L1 while Redis is down.
//!
//! Redis is also untrusted input: anyone who can write to it wrote what a GET returns. Values are
//! [`Entry::seal`]'s versioned form under `<prefix><hex key>`, sealed with a keyed MAC
//! (`[redis] secret_file` / `AUGUR_REDIS_SECRET`) over the Redis key and the value. A GET reads
//! at most `max_entry_size` bytes (`GETRANGE`, so a huge value is never pulled into memory),
//! and a value that is too large, fails the MAC, declares more than the limits allow, does not
//! decode, or is no longer fresh is a miss (overwritten by the refetch's write-behind), counted
//! in `augur_l2_rejected_total{reason}`: never served, never an error for the client, never a
//! panic.
//!
//! Invalidation: a purge deletes the key in Redis and publishes it, sealed to the channel, on
//! `<prefix>invalidate`; every instance (this one included) drops it from its L1 on receipt, and
//! ignores (and counts) a message without a valid MAC. The subscription is PINGed every
//! `pubsub_heartbeat`: a silent connection (a NAT that dropped the flow, a hung Redis) is
//! detected within the heartbeat plus `connect_timeout`. A lost subscription may have missed
//! messages, so L1 is cleared when the loss is detected and again on resubscribing, and
//! `/readyz` reports degraded in between.

mod breaker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::{Mutex, RwLock};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisResult, TlsCertificates};

use super::entry::{CodecError, Entry, Limits, Seal, MAX_HEADERS};
use crate::config::{RedisConfig, RedisTarget};
use crate::key::CacheKey;
use crate::metrics::L2Metrics;
use breaker::{Backoff, Breaker};

/// What an invalidation message asks every instance to drop from its L1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    Key(CacheKey),
    All,
}

impl Invalidation {
    /// The message, sealed to `channel`.
    fn encode(self, seal: &Seal, channel: &str) -> Bytes {
        let text = match self {
            Invalidation::Key(k) => format!("key:{}", k.to_hex()),
            Invalidation::All => "all".to_owned(),
        };
        seal.seal(channel.as_bytes(), text.as_bytes())
    }

    /// `None` for anything but a message sealed to `channel` with this instance's key.
    fn decode(message: &[u8], seal: &Seal, channel: &str) -> Option<Invalidation> {
        let payload = seal
            .open(channel.as_bytes(), &Bytes::copy_from_slice(message))
            .ok()?;
        let text = std::str::from_utf8(&payload).ok()?;
        if text == "all" {
            return Some(Invalidation::All);
        }
        CacheKey::from_hex(text.strip_prefix("key:")?).map(Invalidation::Key)
    }
}

/// Why a value read from L2 is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Failed to decode or verify: corrupt, foreign, or written by another version.
    Corrupt(CodecError),
    /// Valid but past its freshness lifetime and every stale window at `now`.
    Stale,
}

/// The L2 hit path's pure part: bound, verify against `name` (the Redis key), decode, and check
/// that at `now` the entry is fresh or within a window where a stale copy may still serve (the
/// caller's `policy::usable` decides which, for its request).
pub fn decode_usable(
    data: &Bytes,
    seal: &Seal,
    name: &str,
    limits: Limits,
    now: u64,
) -> Result<Entry, Refused> {
    let entry = Entry::open(data, seal, name.as_bytes(), limits).map_err(Refused::Corrupt)?;
    if entry.keep_ms(now) == 0 {
        return Err(Refused::Stale);
    }
    Ok(entry)
}

/// A connection to one Redis or to a cluster; both are cheap clones of a multiplexed handle.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }
}

/// What `/readyz` reports about L2.
#[derive(Debug, Clone)]
pub struct L2Health {
    pub connected: bool,
    pub breaker: &'static str,
    /// Subscribed to invalidations, and the subscription answers its heartbeat.
    pub subscribed: bool,
    /// The last error, while not connected, the breaker is not closed, or not subscribed.
    pub reason: Option<String>,
}

impl L2Health {
    pub fn degraded(&self) -> bool {
        !self.connected || self.breaker != "closed" || !self.subscribed
    }
}

/// The second tier.
pub struct L2 {
    target: RedisTarget,
    prefix: String,
    channel: String,
    timeout: Duration,
    connect_timeout: Duration,
    heartbeat: Duration,
    limits: Limits,
    seal: Seal,
    ca_pem: Option<Vec<u8>>,
    conn: RwLock<Option<Conn>>,
    breaker: Breaker,
    last_error: Mutex<Option<String>>,
    subscribed: AtomicBool,
    /// Why there is no subscription (while `subscribed` is false).
    sub_error: Mutex<Option<String>>,
    metrics: L2Metrics,
    /// Write-behind SETs in flight (`max_pending_writes`): a hung Redis holds each for up to
    /// `timeout`, and without a cap the spawned tasks grow with the miss rate.
    writes: Arc<Semaphore>,
}

impl L2 {
    pub fn new(cfg: &RedisConfig, metrics: L2Metrics) -> L2 {
        metrics.connected.set(0.0);
        metrics.breaker_state.set(0.0);
        if let Some(warning) = cfg.unauthenticated_warning() {
            tracing::warn!("{warning}");
        }
        L2 {
            target: cfg.target.clone(),
            prefix: cfg.key_prefix.clone(),
            channel: format!("{}invalidate", cfg.key_prefix),
            timeout: cfg.timeout,
            connect_timeout: cfg.connect_timeout,
            heartbeat: cfg.pubsub_heartbeat,
            limits: Limits {
                max_value: cfg.max_entry_size,
                max_body: cfg.max_body_size,
            },
            seal: Seal::new(cfg.secret.as_ref().map(|s| s.expose())),
            ca_pem: cfg.ca_pem.clone(),
            conn: RwLock::new(None),
            breaker: Breaker::new(cfg.breaker_errors, cfg.breaker_cooldown),
            last_error: Mutex::new(Some("connecting".to_owned())),
            subscribed: AtomicBool::new(false),
            sub_error: Mutex::new(Some("subscribing to invalidations".to_owned())),
            metrics,
            writes: Arc::new(Semaphore::new(
                cfg.max_pending_writes.clamp(1, Semaphore::MAX_PERMITS),
            )),
        }
    }

    /// Connect and subscribe in the background (reconnecting with backoff). Needs a Tokio
    /// runtime; without one (a bench building the proxy outside it) L2 stays unconnected.
    pub fn start(self: &Arc<Self>, on_invalidate: Arc<dyn Fn(Invalidation) + Send + Sync>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no async runtime: the Redis tier stays disconnected");
            return;
        };
        rt.spawn(self.clone().connect_loop());
        rt.spawn(self.clone().subscribe_loop(on_invalidate));
    }

    /// The Redis key of a cache key.
    pub fn redis_key(&self, key: &CacheKey) -> String {
        format!("{}{}", self.prefix, key.to_hex())
    }

    /// Look `key` up: a fresh, verified entry, or `None` (miss, error, timeout, skipped).
    /// Never waits past the deadline.
    pub async fn get(&self, key: &CacheKey, now: impl FnOnce() -> u64) -> Option<Entry> {
        let m = &self.metrics;
        let Some(conn) = self.usable() else {
            m.get_skipped.increment(1);
            return None;
        };
        let started = Instant::now();
        let name = self.redis_key(key);
        // GETRANGE, not GET: at most one byte past the limit comes over the wire, however
        // large a value someone stored (Redis allows 512 MiB). A missing key reads as empty.
        let mut cmd = redis::cmd("GETRANGE");
        cmd.arg(&name).arg(0).arg(self.limits.max_value);
        let got = tokio::time::timeout(self.timeout, conn.query::<Vec<u8>>(&cmd)).await;
        m.get_duration.record(started.elapsed().as_secs_f64());
        let data = match got {
            Ok(Ok(v)) if !v.is_empty() => Bytes::from(v),
            Ok(Ok(_)) => {
                self.breaker.success(m);
                m.get_miss.increment(1);
                return None;
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                m.get_error.increment(1);
                return None;
            }
            Err(_) => {
                self.failed("GET timed out");
                m.get_timeout.increment(1);
                return None;
            }
        };
        self.breaker.success(m);
        match decode_usable(&data, &self.seal, &name, self.limits, now()) {
            Ok(entry) => {
                m.get_hit.increment(1);
                Some(entry)
            }
            Err(Refused::Stale) => {
                m.get_miss.increment(1);
                None
            }
            Err(Refused::Corrupt(e)) => {
                // A MAC failure is expected after an upgrade or a secret rotation (and is
                // what a forger gets): counted, logged quietly so it cannot flood the log.
                if e == CodecError::Mac {
                    tracing::debug!(key = %key, error = %e, "L2 value refused; refetching");
                } else {
                    tracing::warn!(key = %key, error = %e, "L2 value refused; refetching");
                }
                m.get_corrupt.increment(1);
                m.rejected(e.reason()).increment(1);
                None
            }
        }
    }

    /// Write `entry` behind, in its own task: the client never waits for Redis. `ttl_ms`
    /// covers the entry's remaining freshness (and whatever stale window the caller adds).
    pub fn put(self: &Arc<Self>, key: CacheKey, entry: Arc<Entry>, ttl_ms: u64) {
        if ttl_ms == 0 {
            return;
        }
        let m = &self.metrics;
        // Never write what a reader refuses, and know it before encoding anything (security
        // review L7: an 8 MiB body was copied and hashed only to be dropped).
        if entry.headers.len() > MAX_HEADERS || entry.sealed_len() > self.limits.max_value {
            m.set_too_large.increment(1);
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // At most `max_pending_writes` tasks: past it the write is skipped (the entry stays
        // in L1, and the next miss elsewhere in the fleet writes it).
        let Ok(permit) = self.writes.clone().try_acquire_owned() else {
            m.set_busy.increment(1);
            return;
        };
        // Asked last: a half-open breaker lets exactly one operation probe, and this one will.
        let Some(conn) = self.usable() else {
            m.set_skipped.increment(1);
            return;
        };
        let this = self.clone();
        rt.spawn(async move {
            let _permit = permit;
            let m = &this.metrics;
            let name = this.redis_key(&key);
            let value = entry.seal(&this.seal, name.as_bytes());
            // Built in place: `.clone()` of a built command would copy the encoded entry again.
            let mut cmd = redis::cmd("SET");
            cmd.arg(name).arg(value.as_ref()).arg("PX").arg(ttl_ms);
            let started = Instant::now();
            let done = tokio::time::timeout(this.timeout, conn.query::<()>(&cmd)).await;
            m.set_duration.record(started.elapsed().as_secs_f64());
            match done {
                Ok(Ok(())) => {
                    this.breaker.success(m);
                    m.set_ok.increment(1);
                }
                Ok(Err(e)) => {
                    this.failed(&e.to_string());
                    m.set_error.increment(1);
                }
                Err(_) => {
                    this.failed("SET timed out");
                    m.set_timeout.increment(1);
                }
            }
        });
    }

    /// Delete `key` in Redis and tell every instance to drop it from L1. `Ok(true)` when
    /// Redis held it. Waits (up to the connect timeout per step): a purge is worth it.
    pub async fn invalidate(&self, key: &CacheKey) -> Result<bool, String> {
        let conn = self.connected()?;
        self.invalidate_on(&conn, key).await
    }

    /// [`L2::invalidate`] for a purge the request path started (RFC 9111 §4.4), run in the
    /// background: it respects the circuit breaker (skipped while it is open) and feeds it, like
    /// every other operation the request path makes.
    pub async fn invalidate_in_background(&self, key: &CacheKey) -> Result<bool, String> {
        let conn = self
            .usable()
            .ok_or_else(|| "Redis not connected or circuit breaker open".to_owned())?;
        match self.invalidate_on(&conn, key).await {
            Ok(held) => {
                self.breaker.success(&self.metrics);
                Ok(held)
            }
            Err(e) => {
                self.failed(&e);
                Err(e)
            }
        }
    }

    async fn invalidate_on(&self, conn: &Conn, key: &CacheKey) -> Result<bool, String> {
        let del = redis::cmd("UNLINK").arg(self.redis_key(key)).clone();
        let removed: u64 = self.admin_op(conn, &del).await?;
        self.publish(conn, Invalidation::Key(*key)).await?;
        Ok(removed > 0)
    }

    /// Delete every key under the prefix and tell every instance to clear its L1.
    /// Returns how many keys were deleted.
    pub async fn invalidate_all(&self) -> Result<u64, String> {
        let conn = self.connected()?;
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let keys: Vec<Vec<u8>> = match &conn {
            Conn::Single(c) => {
                let mut c = c.clone();
                let mut keys = Vec::new();
                let mut cursor: u64 = 0;
                loop {
                    let scan = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .clone();
                    let step = tokio::time::timeout(
                        self.connect_timeout,
                        scan.query_async::<(u64, Vec<Vec<u8>>)>(&mut c),
                    )
                    .await;
                    let (next, batch) = match step {
                        Ok(Ok(r)) => r,
                        Ok(Err(e)) => return Err(e.to_string()),
                        Err(_) => return Err("SCAN timed out".to_owned()),
                    };
                    keys.extend(batch);
                    if next == 0 {
                        break keys;
                    }
                    cursor = next;
                }
            }
            Conn::Cluster(c) => {
                // KEYS on every master, results combined: a purge of everything is rare, and
                // a cursor per node is what SCAN would need.
                use redis::cluster_routing::{
                    MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo,
                };
                let cmd = redis::cmd("KEYS").arg(&pattern).clone();
                let routing = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::CombineArrays),
                ));
                let value = tokio::time::timeout(
                    self.connect_timeout,
                    c.clone().route_command(cmd, routing),
                )
                .await
                .map_err(|_| "KEYS timed out".to_owned())?
                .map_err(|e| e.to_string())?;
                Vec::<Vec<u8>>::from_redis_value(value).map_err(|e| e.to_string())?
            }
        };
        let mut removed = 0;
        // One key per UNLINK: in a cluster, keys live in different slots.
        for key in &keys {
            let del = redis::cmd("UNLINK").arg(key.as_slice()).clone();
            removed += self.admin_op::<u64>(&conn, &del).await?;
        }
        self.publish(&conn, Invalidation::All).await?;
        Ok(removed)
    }

    pub fn health(&self) -> L2Health {
        let connected = self.conn.read().is_some();
        let breaker = self.breaker.state_name();
        let subscribed = self.subscribed.load(Ordering::Relaxed);
        let reason = match (connected, breaker, subscribed) {
            (true, "closed", true) => None,
            (true, "closed", false) => self.sub_error.lock().clone(),
            _ => self.last_error.lock().clone(),
        };
        L2Health {
            connected,
            breaker,
            subscribed,
            reason,
        }
    }

    /// The connection, if there is one and the breaker lets this operation through.
    fn usable(&self) -> Option<Conn> {
        let conn = self.conn.read().clone()?;
        self.breaker.allow(&self.metrics).then_some(conn)
    }

    fn connected(&self) -> Result<Conn, String> {
        self.conn
            .read()
            .clone()
            .ok_or_else(|| "Redis is not connected".to_owned())
    }

    fn failed(&self, error: &str) {
        if self.breaker.failure(&self.metrics) {
            tracing::warn!(error, "Redis failing: circuit breaker open, skipping L2");
        }
        *self.last_error.lock() = Some(error.to_owned());
    }

    async fn admin_op<T: FromRedisValue>(&self, conn: &Conn, cmd: &Cmd) -> Result<T, String> {
        match tokio::time::timeout(self.connect_timeout, conn.query::<T>(cmd)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("Redis timed out".to_owned()),
        }
    }

    async fn publish(&self, conn: &Conn, what: Invalidation) -> Result<(), String> {
        let cmd = redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(what.encode(&self.seal, &self.channel).as_ref())
            .clone();
        self.admin_op::<u64>(conn, &cmd).await.map(|_| ())
    }

    /// `rediss://` with `ca_file` trusts that CA; otherwise the system's roots.
    fn certs(&self) -> Option<TlsCertificates> {
        self.ca_pem.as_ref().map(|pem| TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        })
    }

    fn client(&self, url: &str) -> RedisResult<redis::Client> {
        match self.certs() {
            Some(certs) if url.starts_with("rediss:") => redis::Client::build_with_tls(url, certs),
            _ => redis::Client::open(url),
        }
    }

    async fn connect(&self) -> RedisResult<Conn> {
        match &self.target {
            RedisTarget::Single(url) => {
                let client = self.client(url)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.connect_timeout.max(self.timeout)))
                    .set_max_delay(Duration::from_secs(2));
                Ok(Conn::Single(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            RedisTarget::Cluster(nodes) => {
                let mut builder = ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(self.connect_timeout)
                    .response_timeout(self.connect_timeout.max(self.timeout))
                    .retries(1);
                if let Some(certs) = self.certs() {
                    builder = builder.certs(certs);
                }
                let client = builder.build()?;
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// Until connected: try, wait (100 ms doubling to 5 s), try again. A single node's
    /// connection manager reconnects by itself afterwards; a cluster connection refreshes its
    /// slots and reconnects to nodes by itself.
    async fn connect_loop(self: Arc<Self>) {
        let mut backoff = Backoff::new();
        loop {
            let error = match tokio::time::timeout(self.connect_timeout, self.connect()).await {
                Ok(Ok(conn)) => {
                    *self.conn.write() = Some(conn.clone());
                    *self.last_error.lock() = None;
                    self.metrics.connected.set(1.0);
                    tracing::info!("connected to Redis (L2)");
                    return self.probe_loop(conn).await;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "connect timed out".to_owned(),
            };
            if backoff.attempts == 0 {
                tracing::warn!(error, "Redis unavailable; serving from L1 and retrying");
            }
            *self.last_error.lock() = Some(error);
            tokio::time::sleep(backoff.next()).await;
        }
    }

    /// While the breaker is open, probe with PING after each cooldown, so an idle instance
    /// notices (and `/readyz` reports) that Redis is back without waiting for traffic.
    async fn probe_loop(&self, conn: Conn) {
        loop {
            tokio::time::sleep(self.breaker.cooldown).await;
            if self.breaker.state_name() == "closed" || !self.breaker.allow(&self.metrics) {
                continue;
            }
            let ping = redis::cmd("PING");
            match tokio::time::timeout(self.timeout, conn.query::<String>(&ping)).await {
                Ok(Ok(_)) => self.breaker.success(&self.metrics),
                Ok(Err(e)) => self.failed(&e.to_string()),
                Err(_) => self.failed("PING timed out"),
            }
        }
    }

    async fn open_pubsub(&self) -> RedisResult<redis::aio::PubSub> {
        let nodes: Vec<&str> = match &self.target {
            RedisTarget::Single(url) => vec![url.as_str()],
            // Cluster pub/sub is broadcast over the cluster bus: any one node will do.
            RedisTarget::Cluster(nodes) => nodes.iter().map(String::as_str).collect(),
        };
        let mut last = None;
        for node in nodes {
            let attempt = async {
                let mut ps = self.client(node)?.get_async_pubsub().await?;
                ps.subscribe(&self.channel).await?;
                Ok::<_, redis::RedisError>(ps)
            };
            match tokio::time::timeout(self.connect_timeout, attempt).await {
                Ok(Ok(ps)) => return Ok(ps),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "subscribe timed out",
                    )))
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            redis::RedisError::from(std::io::Error::other("no Redis node to subscribe to"))
        }))
    }

    /// Keep a subscription to the invalidation channel and apply what arrives to L1.
    async fn subscribe_loop(self: Arc<Self>, apply: Arc<dyn Fn(Invalidation) + Send + Sync>) {
        let mut backoff = Backoff::new();
        let mut lost = false;
        loop {
            match self.open_pubsub().await {
                Ok(ps) => {
                    if lost {
                        // Messages sent while unsubscribed are gone: forget what may be purged.
                        tracing::info!("resubscribed to invalidations; clearing L1");
                        apply(Invalidation::All);
                    }
                    self.subscribed.store(true, Ordering::Relaxed);
                    backoff = Backoff::new();
                    let why = self.listen(ps, apply.as_ref()).await;
                    tracing::warn!(
                        reason = why,
                        "lost the Redis invalidation subscription; clearing L1 and resubscribing"
                    );
                    self.metrics.subscription_lost.increment(1);
                    *self.sub_error.lock() = Some(format!("invalidation subscription lost: {why}"));
                    self.subscribed.store(false, Ordering::Relaxed);
                    // Purges may have gone missing while it was dying: forget now, so that
                    // what L1 serves during the outage is no older than its detection.
                    apply(Invalidation::All);
                }
                Err(e) => {
                    if backoff.attempts == 0 {
                        tracing::debug!(error = %e, "cannot subscribe to invalidations yet");
                    }
                    if lost {
                        *self.sub_error.lock() = Some(format!("cannot resubscribe: {e}"));
                    }
                }
            }
            lost = true;
            tokio::time::sleep(backoff.next()).await;
        }
    }

    /// Apply messages until the subscription ends or misses a heartbeat; returns why it ended.
    async fn listen(
        &self,
        ps: redis::aio::PubSub,
        apply: &(dyn Fn(Invalidation) + Send + Sync),
    ) -> String {
        let (mut sink, mut messages) = ps.split();
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await; // the first tick is immediate: just subscribed
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else {
                        return "connection closed".to_owned();
                    };
                    match Invalidation::decode(msg.get_payload_bytes(), &self.seal, &self.channel) {
                        Some(what) => {
                            self.metrics.invalidations.increment(1);
                            apply(what);
                        }
                        None => {
                            self.metrics.invalidations_rejected.increment(1);
                            tracing::debug!("ignored an invalidation message without a valid MAC");
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    // No traffic is not proof of life: a dropped flow delivers nothing, silently.
                    let ping = sink.ping::<redis::Value>();
                    match tokio::time::timeout(self.connect_timeout, ping).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return format!("heartbeat PING failed: {e}"),
                        Err(_) => return "no answer to the heartbeat PING".to_owned(),
                    }
                }
            }
        }
    }
}

/// Escape glob metacharacters so a prefix matches only itself in `SCAN MATCH` / `KEYS`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn invalidation_messages_round_trip() {
        let k = CacheKey([7; 16]);
        let seal = Seal::new(Some(b"sixteen bytes at least, yes"));
        let ch = "augur:invalidate";
        for what in [Invalidation::Key(k), Invalidation::All] {
            let msg = what.encode(&seal, ch);
            assert_eq!(Invalidation::decode(&msg, &seal, ch), Some(what));
            assert_eq!(Invalidation::decode(&msg, &seal, "other:invalidate"), None);
            let other = Seal::new(Some(b"another secret of enough length"));
            assert_eq!(Invalidation::decode(&msg, &other, ch), None);
        }
        // Unsealed, as anyone could PUBLISH them.
        assert_eq!(Invalidation::decode(b"all", &seal, ch), None);
        assert_eq!(Invalidation::decode(b"all", &Seal::new(None), ch), None);
        let garbage = seal.seal(ch.as_bytes(), b"key:zz");
        assert_eq!(Invalidation::decode(&garbage, &seal, ch), None);
        assert_eq!(Invalidation::decode(b"\xff", &seal, ch), None);
    }

    /// L7: an entry too large for L2 is refused before anything is encoded or spawned: it
    /// is counted at once, whatever state L2 is in (here: never connected).
    #[tokio::test]
    async fn an_entry_too_large_for_l2_is_refused_before_any_work() {
        let text = "[redis]\nurl = \"redis://127.0.0.1:1\"\nmax_entry_size = \"1KiB\"\n\
                    [[route]]\nname = \"api\"\nupstream = \"http://127.0.0.1:1\"\n";
        let config = crate::config::Config::from_str(text, "test.toml").unwrap();
        let metrics = Metrics::new(&[]);
        let l2 = Arc::new(L2::new(config.redis.as_ref().unwrap(), metrics.l2()));
        let entry = Entry {
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: super::super::entry::StoredBody::Raw(Bytes::from(vec![b'x'; 4096])),
            request_time: 0,
            response_time: 0,
            initial_age: 0,
            lifetime: 60_000,
            flags: Default::default(),
            stale_while_revalidate: 0,
            stale_if_error: 0,
        };
        l2.put(CacheKey([1; 16]), Arc::new(entry), 60_000);
        // No await since `put`: only what it did synchronously is counted.
        let text = metrics.render();
        assert!(
            text.contains(r#"augur_l2_writes_total{result="too_large"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn prefix_is_escaped_for_scan() {
        assert_eq!(glob_escape("augur:"), "augur:");
        assert_eq!(glob_escape("a*[b]?"), r"a\*\[b\]\?");
    }
}
