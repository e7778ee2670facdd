//! Step 3 of loading: the `AUGUR_*` environment overrides, and the cross-field limits that
//! must hold both after the file and after the overrides.
//!
//! The limits live here rather than in `build` because they run twice: once on the file
//! (blamed on a `line:col`, see [`Config::from_str`]) and again after the environment, where
//! a broken limit is blamed on the variable that broke it.

use std::net::SocketAddr;
use std::time::Duration;

use super::admin::AdminTokens;
use super::units::{fmt_size, log_level, parse_size, HumanUnit, RedisUrl};
use super::{Config, ConfigError, LogFormat, RedisConfig, RedisSecret, RedisTarget, MIB};

/// `server.worker_threads` above this is refused (file and `AUGUR_WORKER_THREADS`).
const MAX_WORKER_THREADS: usize = 1024;

/// The environment overrides and the field each one sets. Anything else starting with
/// `AUGUR_` is ignored (see [`Config::apply_env`]).
pub const ENV_VARS: &[(&str, &str)] = &[
    ("AUGUR_LISTEN", "server.listen"),
    ("AUGUR_ADMIN_LISTEN", "server.admin_listen"),
    ("AUGUR_METRICS_LISTEN", "server.metrics_listen"),
    ("AUGUR_ADMIN_TOKEN_FILE", "admin.token_file"),
    ("AUGUR_WORKER_THREADS", "server.worker_threads"),
    ("AUGUR_LOG_LEVEL", "server.log_level"),
    ("AUGUR_LOG_FORMAT", "server.log_format"),
    ("AUGUR_CACHE_MEMORY", "cache.memory"),
    ("AUGUR_CACHE_MAX_ENTRY_SIZE", "cache.max_entry_size"),
    ("AUGUR_CACHE_DEFAULT_TTL", "cache.default_ttl"),
    ("AUGUR_REDIS_URL", "redis.url"),
    ("AUGUR_REDIS_SECRET", "redis.secret_file"),
    ("AUGUR_UPSTREAM_TIMEOUT", "upstream.timeout"),
    ("AUGUR_UPSTREAM_CONNECT_TIMEOUT", "upstream.connect_timeout"),
];

/// A broken limit found by [`check_limits`]: the field at fault and the other field involved.
pub(super) struct Violation {
    pub(super) path: &'static str,
    pub(super) related: Option<&'static str>,
    pub(super) msg: String,
}

/// Limits that must hold after the file *and* after environment overrides.
pub(super) fn check_limits(c: &Config) -> Result<(), Violation> {
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
    check_connection_limits(c)?;
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
    if c.upstream.max_inflight_bytes < c.cache.max_entry_size {
        let msg = format!(
            "max_inflight_bytes {} is smaller than cache.max_entry_size {} (no entry of the largest size could ever be stored; raise max_inflight_bytes)",
            fmt_size(c.upstream.max_inflight_bytes),
            fmt_size(c.cache.max_entry_size)
        );
        return v(
            "upstream.max_inflight_bytes",
            Some("cache.max_entry_size"),
            msg,
        );
    }
    if let Some(r) = &c.redis {
        check_redis(r)?;
    }
    check_admin(c)?;
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

/// The opt-out of admin authentication holds only where no other host can connect.
fn check_admin(c: &Config) -> Result<(), Violation> {
    if !c.admin.allow_unauthenticated_loopback {
        return Ok(());
    }
    let (related, msg) = if !c.admin.tokens.is_empty() {
        let msg = "cannot be combined with admin.token_file (remove one: with tokens, every protected call needs one)";
        ("admin.token_file", msg.to_owned())
    } else if !c.server.admin_listen.ip().is_loopback() {
        let msg = format!(
            "needs a loopback server.admin_listen, not {} (bind it to 127.0.0.1 or [::1], or set admin.token_file instead)",
            c.server.admin_listen
        );
        ("server.admin_listen", msg)
    } else {
        return Ok(());
    };
    Err(Violation {
        path: "admin.allow_unauthenticated_loopback",
        related: Some(related),
        msg,
    })
}

/// The client connection limits (`[server]`) and the upstream body deadline: each must be
/// set, since zero would turn off the protection it exists for.
fn check_connection_limits(c: &Config) -> Result<(), Violation> {
    let v = |path, msg: &str| {
        Err(Violation {
            path,
            related: None,
            msg: msg.to_owned(),
        })
    };
    let s = &c.server;
    for (path, d) in [
        ("server.first_request_timeout", s.first_request_timeout),
        ("server.idle_timeout", s.idle_timeout),
        (
            "server.http2_keep_alive_interval",
            s.http2_keep_alive_interval,
        ),
        (
            "server.http2_keep_alive_timeout",
            s.http2_keep_alive_timeout,
        ),
        ("upstream.body_timeout", c.upstream.body_timeout),
    ] {
        if d.is_zero() {
            return v(path, "must be greater than 0s");
        }
    }
    if s.max_connections == 0 {
        return v("server.max_connections", "must be at least 1");
    }
    if !(1..=1000).contains(&s.http2_max_concurrent_streams) {
        return v(
            "server.http2_max_concurrent_streams",
            "out of range (1..=1000 streams per connection; 100 is a good default)",
        );
    }
    if s.max_client_resets == 0 {
        return v("server.max_client_resets", "must be at least 1");
    }
    Ok(())
}

/// The `[redis]` limits, checked in [`check_limits`] only when there is a second tier.
fn check_redis(r: &RedisConfig) -> Result<(), Violation> {
    let v = |path, msg: &str| {
        Err(Violation {
            path,
            related: None,
            msg: msg.to_owned(),
        })
    };
    for (path, d) in [
        ("redis.timeout", r.timeout),
        ("redis.connect_timeout", r.connect_timeout),
        ("redis.breaker_cooldown", r.breaker_cooldown),
        ("redis.pubsub_heartbeat", r.pubsub_heartbeat),
    ] {
        if d.is_zero() {
            return v(path, "must be greater than 0s");
        }
    }
    if r.breaker_errors == 0 {
        return v("redis.breaker_errors", "must be at least 1");
    }
    if r.max_pending_writes == 0 {
        return v(
            "redis.max_pending_writes",
            "must be at least 1 (remove [redis] to run without a second tier)",
        );
    }
    if r.max_entry_size == 0 {
        return v(
            "redis.max_entry_size",
            "must be greater than 0 (remove [redis] to run without a second tier)",
        );
    }
    Ok(())
}

impl Config {
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
        // The secret last: AUGUR_REDIS_URL may be what creates the [redis] it goes into.
        let mut vars: Vec<(String, String)> = vars.collect();
        vars.sort_by_key(|(k, _)| k == "AUGUR_REDIS_SECRET");
        for (key, value) in vars {
            let Some(&(name, field)) = ENV_VARS.iter().find(|(n, _)| *n == key) else {
                continue;
            };
            self.set_env(name, &value)
                .map_err(|msg| ConfigError(format!("{name}: {msg}")))?;
            applied.push((name, field));
        }
        // Derived from the cache's limit, which an override may have changed.
        let max_body_size = self.cache.max_entry_size;
        if let Some(r) = &mut self.redis {
            r.max_body_size = max_body_size;
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
            "AUGUR_METRICS_LISTEN" => {
                self.server.metrics_listen = Some(SocketAddr::parse(value)?);
            }
            "AUGUR_ADMIN_TOKEN_FILE" => {
                let path = std::path::PathBuf::from(value.trim());
                self.admin.tokens = AdminTokens::read(&path)?;
                self.admin.token_file = Some(path);
            }
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
            // Ignored without a [redis] (nothing to authenticate). Never echoed.
            "AUGUR_REDIS_SECRET" => {
                let secret = RedisSecret::new(value.as_bytes())?;
                if let Some(r) = &mut self.redis {
                    r.secret = Some(secret);
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
