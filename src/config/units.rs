//! Human units in `proxy.toml` and `AUGUR_*` values: durations, byte sizes, addresses,
//! methods, header names, the upstream URL. Parsed while deserializing so that `toml` reports
//! a bad value at its own span.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use http::uri::Scheme;
use http::{HeaderName, Method, Uri};
use ipnet::IpNet;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::{CacheMode, EscapedSlashes, LogFormat};

/// A value written in a human form (`"30s"`, `"8MiB"`, `"127.0.0.1:8080"`) and parsed while
/// deserializing, so that `toml` reports a bad value at its own position.
pub(super) struct Human<T>(pub(super) T);

/// How to parse one human-unit type. `parse` errors read `invalid X "v" (expected e.g. ...)`;
/// the same text is used for environment overrides.
pub(super) trait HumanUnit: Sized {
    /// Completes serde's "invalid type: ..., expected {EXPECTING}".
    const EXPECTING: &'static str;
    fn parse(s: &str) -> Result<Self, String>;
    /// TOML integers; `None` = integers are the wrong type.
    fn from_int(_n: i64) -> Option<Result<Self, String>> {
        None
    }
}

impl<'de, T: HumanUnit> Deserialize<'de> for Human<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<T: HumanUnit> Visitor<'_> for V<T> {
            type Value = Human<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(T::EXPECTING)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                T::parse(s).map(Human).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                match T::from_int(n) {
                    Some(r) => r.map(Human).map_err(E::custom),
                    None => Err(E::invalid_type(de::Unexpected::Signed(n), &self)),
                }
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A key that may be absent from the file: its parsed value, or the default. The one way
/// `build` fills in defaults, so the unwrapping of `Human` (and of `ByteSize` to bytes) is
/// written once instead of at every key.
pub(super) trait ValueOr<T> {
    fn value_or(self, default: T) -> T;
}

impl<T> ValueOr<T> for Option<Human<T>> {
    fn value_or(self, default: T) -> T {
        self.map_or(default, |h| h.0)
    }
}

impl ValueOr<u64> for Option<Human<ByteSize>> {
    fn value_or(self, default: u64) -> u64 {
        self.map_or(default, |h| h.0 .0)
    }
}

impl HumanUnit for Duration {
    const EXPECTING: &'static str = r#"a duration string such as "30s""#;
    fn parse(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map_err(|_| format!(r#"invalid duration {s:?} (expected e.g. "30s", "5m", "1h 30m")"#))
    }
    fn from_int(n: i64) -> Option<Result<Self, String>> {
        Some(Err(format!(
            r#"invalid duration {n} (a duration needs a unit and quotes, e.g. "{n}s")"#
        )))
    }
}

/// A byte count. Decimal units (KB, MB, GB) are powers of 1000, binary units (KiB, MiB, GiB)
/// powers of 1024, so that "what the operator wrote" is exactly what is enforced.
pub(super) struct ByteSize(pub(super) u64);

impl HumanUnit for ByteSize {
    const EXPECTING: &'static str = r#"a size such as "256MiB" or a byte count"#;
    fn parse(s: &str) -> Result<Self, String> {
        parse_size(s).map(ByteSize)
    }
    fn from_int(n: i64) -> Option<Result<Self, String>> {
        Some(
            u64::try_from(n)
                .map(ByteSize)
                .map_err(|_| format!("invalid size {n} (a size cannot be negative)")),
        )
    }
}

/// Parses `"256MiB"`, `"8 MB"`, `"1048576"`: an integer, optional spaces, an optional
/// case-insensitive unit (B, KB, MB, GB, KiB, MiB, GiB).
pub(super) fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!(r#"invalid size {s:?} (expected e.g. "256MiB")"#);
    let t = s.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?} (too large)"))
}

/// Formats a byte count the way an operator would write it, for messages.
pub(super) fn fmt_size(n: u64) -> String {
    match n {
        0 => "0 bytes".to_owned(),
        n if n % (1 << 30) == 0 => format!("{}GiB", n >> 30),
        n if n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// `server.log_level` and `AUGUR_LOG_LEVEL`. The directive itself is checked by `tracing` at
/// startup; here only that there is one.
pub(super) fn log_level(s: &str) -> Result<String, String> {
    match s.trim() {
        "" => Err(r#"empty log level (expected an EnvFilter directive such as "info" or "info,augur=debug")"#.to_owned()),
        t => Ok(t.to_owned()),
    }
}

impl HumanUnit for SocketAddr {
    const EXPECTING: &'static str = r#"an address such as "127.0.0.1:8080""#;
    fn parse(s: &str) -> Result<Self, String> {
        s.trim().parse().map_err(|_| {
            format!(r#"invalid socket address {s:?} (expected IP:PORT, e.g. "127.0.0.1:8080" or "[::]:8080"; host names are not resolved)"#)
        })
    }
}

impl HumanUnit for LogFormat {
    const EXPECTING: &'static str = r#""text" or "json""#;
    fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                r#"invalid log format {s:?} (expected "text" or "json")"#
            )),
        }
    }
}

impl HumanUnit for CacheMode {
    const EXPECTING: &'static str = r#""respect", "override", "floor" or "cap""#;
    fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "respect" => Ok(CacheMode::Respect),
            "override" => Ok(CacheMode::Override),
            "floor" => Ok(CacheMode::Floor),
            "cap" => Ok(CacheMode::Cap),
            _ => Err(format!(
                r#"invalid cache mode {s:?} (expected "respect", "override", "floor" or "cap")"#
            )),
        }
    }
}

impl HumanUnit for EscapedSlashes {
    const EXPECTING: &'static str = r#""reject", "keep" or "decode""#;
    fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "reject" => Ok(EscapedSlashes::Reject),
            "keep" => Ok(EscapedSlashes::Keep),
            "decode" => Ok(EscapedSlashes::Decode),
            _ => Err(format!(
                r#"invalid escaped_slashes {s:?} (expected "reject", "keep" or "decode")"#
            )),
        }
    }
}

impl HumanUnit for IpNet {
    const EXPECTING: &'static str = r#"an address or CIDR such as "10.0.0.0/8""#;
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| {
                format!(
                    r#"invalid address or CIDR {s:?} (expected e.g. "10.0.0.0/8" or "192.0.2.7")"#
                )
            })
    }
}

impl HumanUnit for Method {
    const EXPECTING: &'static str = r#"an HTTP method such as "GET""#;
    fn parse(s: &str) -> Result<Self, String> {
        let bad =
            || format!(r#"invalid HTTP method {s:?} (expected a token such as "GET" or "HEAD")"#);
        if s.is_empty() {
            return Err(bad());
        }
        Method::from_bytes(s.to_ascii_uppercase().as_bytes()).map_err(|_| bad())
    }
}

impl HumanUnit for HeaderName {
    const EXPECTING: &'static str = r#"a header name such as "Accept-Language""#;
    fn parse(s: &str) -> Result<Self, String> {
        HeaderName::from_bytes(s.as_bytes()).map_err(|_| {
            format!(r#"invalid header name {s:?} (expected a token such as "Accept-Language", no spaces or colons)"#)
        })
    }
}

/// A cookie name (RFC 6265: an RFC 9110 token).
pub(super) struct CookieName(pub(super) String);

impl HumanUnit for CookieName {
    const EXPECTING: &'static str = r#"a cookie name such as "session""#;
    fn parse(s: &str) -> Result<Self, String> {
        let token = !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if token {
            Ok(CookieName(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~ only)"
            ))
        }
    }
}

/// As an upstream URL: `http://HOST[:PORT][/BASE-PATH]`.
impl HumanUnit for Uri {
    const EXPECTING: &'static str = r#"a URL such as "http://127.0.0.1:8081""#;
    fn parse(s: &str) -> Result<Self, String> {
        let hint = "(expected http://HOST[:PORT][/BASE-PATH], e.g. \"http://127.0.0.1:8081\")";
        let https = || {
            "https upstreams are not supported yet; terminate TLS in front of the upstream or use http".to_owned()
        };
        let no_host = || format!("invalid upstream URL {s:?}: missing host {hint}");
        let uri: Uri = s.parse().map_err(|e| match s.split_once("://") {
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => https(),
            Some((_, rest)) if rest.is_empty() || rest.starts_with(['/', ':']) => no_host(),
            _ => format!("invalid upstream URL {s:?}: {e} {hint}"),
        })?;
        match uri.scheme() {
            Some(sc) if *sc == Scheme::HTTP => {}
            Some(sc) if *sc == Scheme::HTTPS => return Err(https()),
            _ => {
                return Err(format!(
                    "invalid upstream URL {s:?}: scheme must be http {hint}"
                ))
            }
        }
        match uri.authority() {
            Some(a) if !a.host().is_empty() && !a.as_str().contains('@') => {}
            _ => return Err(no_host()),
        }
        if uri.query().is_some() {
            return Err(format!(
                "invalid upstream URL {s:?}: a query string is not allowed {hint}"
            ));
        }
        Ok(uri)
    }
}

/// A Redis URL: `redis://`, `rediss://` (TLS) or `unix://`, checked by the `redis` crate's
/// own parser so that what passes here is what the client will accept.
pub(super) struct RedisUrl(pub(super) String);

impl HumanUnit for RedisUrl {
    const EXPECTING: &'static str = r#"a Redis URL such as "redis://127.0.0.1:6379""#;
    fn parse(s: &str) -> Result<Self, String> {
        let hint = r#"(expected redis://HOST[:PORT][/DB], rediss://HOST[:PORT] or unix:///path/to/redis.sock)"#;
        let t = s.trim();
        // Errors end up in logs and CI output: never echo the password.
        let s = &redact_password(t);
        let scheme = t.split_once("://").map(|(sc, _)| sc.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("redis" | "unix" | "redis+unix") => {}
            Some("rediss") if REDIS_TLS => {}
            Some("rediss") => {
                return Err(format!(
                    "invalid Redis URL {s:?}: rediss:// (TLS) is not supported by this build (use redis:// on a private network, or a local TLS tunnel such as stunnel)"
                ))
            }
            _ => {
                return Err(format!(
                    "invalid Redis URL {s:?}: scheme must be redis, rediss or unix {hint}"
                ))
            }
        }
        redis::IntoConnectionInfo::into_connection_info(t)
            .map_err(|e| format!("invalid Redis URL {s:?}: {e} {hint}"))?;
        Ok(RedisUrl(t.to_owned()))
    }
}

/// `url` with the password of its userinfo (`user:password@`, or a lone `secret@`) replaced by
/// `***`, for error messages.
///
/// Everything up to the *last* `@` counts as userinfo: a password with an unencoded `/`, `?`
/// or `#` would otherwise end the authority early and be printed. An `@` later in a path or
/// query over-redacts, which is the safe way to be wrong.
pub(super) fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let user = match rest[..at].split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{scheme}://{user}{}", &rest[at..])
}

/// Whether this build speaks TLS to Redis (rustls).
const REDIS_TLS: bool = true;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn redis_passwords_are_never_echoed() {
        assert_eq!(
            redact_password("redis://app:s3cret@h:6379/0"),
            "redis://app:***@h:6379/0"
        );
        assert_eq!(redact_password("rediss://s3cret@h"), "rediss://***@h");
        assert_eq!(redact_password("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact_password("unix:///run/r.sock"), "unix:///run/r.sock");
        let err = RedisUrl::parse("redis://app:s3cret@h:notaport")
            .err()
            .unwrap();
        assert!(!err.contains("s3cret"), "{err}");
        let err = RedisUrl::parse("http://app:s3cret@h").err().unwrap();
        assert!(!err.contains("s3cret"), "{err}");
        // Review L2: an unencoded `/`, `?` or `#` in the password ended the authority early.
        for (url, redacted) in [
            (
                "redis://app:s3c/ret@redis.internal:6379/0",
                "redis://app:***@redis.internal:6379/0",
            ),
            ("redis://app:s3c?ret@h:6379", "redis://app:***@h:6379"),
            ("redis://app:s3c#ret@h:6379", "redis://app:***@h:6379"),
            ("redis://s3c/r?e#t@h", "redis://***@h"),
            ("redis://app:p@ss/w@h/0", "redis://app:***@h/0"),
        ] {
            assert_eq!(redact_password(url), redacted);
            let err = RedisUrl::parse(url).err().unwrap_or_default();
            assert!(!err.contains("s3c") && !err.contains("ss/w"), "{err}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("8 MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("64kib").unwrap(), 64 << 10);
        assert_eq!(parse_size("1KB").unwrap(), 1000);
        assert_eq!(parse_size("2 mb").unwrap(), 2_000_000);
        assert_eq!(parse_size("3GB").unwrap(), 3_000_000_000);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("12B").unwrap(), 12);
        assert_eq!(parse_size(" 0 ").unwrap(), 0);
        for bad in [
            "",
            "lots",
            "MiB",
            "1.5MiB",
            "-1",
            "10 TB",
            "5 M",
            "99999999999999999999GiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(
            parse_size("lots").unwrap_err(),
            r#"invalid size "lots" (expected e.g. "256MiB")"#
        );
        assert!(parse_size("99999999999GiB")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn sizes_format_back() {
        assert_eq!(fmt_size(8 << 20), "8MiB");
        assert_eq!(fmt_size(1 << 30), "1GiB");
        assert_eq!(fmt_size(4096), "4KiB");
        assert_eq!(fmt_size(1000), "1000 bytes");
    }

    #[test]
    fn durations() {
        assert_eq!(Duration::parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(
            Duration::parse("1h 30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            Duration::parse("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(Duration::parse("0s").unwrap(), Duration::ZERO);
        assert_eq!(
            Duration::parse("5 parsecs").unwrap_err(),
            r#"invalid duration "5 parsecs" (expected e.g. "30s", "5m", "1h 30m")"#
        );
    }

    #[test]
    fn methods_and_headers_normalise() {
        assert_eq!(Method::parse("get").unwrap(), Method::GET);
        assert!(Method::parse("GE T").is_err());
        assert_eq!(
            HeaderName::parse("Accept-Language").unwrap().as_str(),
            "accept-language"
        );
        assert!(HeaderName::parse("Accept Language").is_err());
    }

    #[test]
    fn upstream_urls() {
        assert!(Uri::parse("http://127.0.0.1:8081").is_ok());
        assert_eq!(Uri::parse("http://api:80/base").unwrap().path(), "/base");
        assert!(Uri::parse("https://x")
            .unwrap_err()
            .starts_with("https upstreams are not supported yet"));
        assert!(Uri::parse("127.0.0.1:8081")
            .unwrap_err()
            .contains("scheme must be http"));
        assert!(Uri::parse("/just/a/path").is_err());
        assert!(Uri::parse("http://x/?a=1").is_err());
    }
}
