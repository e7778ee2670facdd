//! Route table. Request path: `request ─► route ─► key ─► cache ─► upstream`.
//!
//! Routes come from `[[route]]` entries in the config. [`Routes::new`] compiles them once
//! at start-up (host matchers, glob patterns), so that [`Routes::find`], which runs on every
//! request, only does cheap comparisons and never allocates. Pure: no I/O, no global state.
//!
//! Matching is "first match wins" in config order, like most proxy configs: it lets an
//! operator put a narrow route (`/api/v1/stream`, no caching) before a broad one (`/api`).

use globset::{Candidate, GlobBuilder, GlobMatcher};
use http::{HeaderMap, Method};

use crate::config::RouteConfig;
use crate::key::CacheKey;

/// A route's config could not be compiled. Reported at start-up, never per request.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("route {name}: invalid path pattern {pattern:?}: {reason}")]
    Pattern {
        name: String,
        pattern: String,
        reason: String,
    },
}

/// One host entry of a route, pre-normalised so matching is a plain case-insensitive
/// byte compare.
#[derive(Debug, Clone)]
enum HostMatcher {
    /// `example.com`: that host only.
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: any subdomain at any depth, but not the
    /// apex (`example.com` must be listed explicitly if wanted, so a wildcard never
    /// silently captures the bare domain).
    Suffix(String),
}

impl HostMatcher {
    fn new(host: &str) -> HostMatcher {
        // Normalise the same way as request hosts (case, trailing dot) so that a config
        // written as `Example.com.` still matches.
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match host.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') => HostMatcher::Suffix(suffix.to_string()),
            _ => HostMatcher::Exact(host),
        }
    }

    /// `host` is already stripped of port and trailing dot, in any case.
    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatcher::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatcher::Suffix(s) => {
                let (host, s) = (host.as_bytes(), s.as_bytes());
                host.len() > s.len() && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }
}

/// A compiled route. `idx` is its position in the config (stable, usable as an index in
/// per-route tables such as upstream pools and metrics).
#[derive(Debug, Clone)]
pub struct Route {
    pub idx: usize,
    pub cfg: RouteConfig,
    hosts: Vec<HostMatcher>,
    pattern: Option<GlobMatcher>,
}

impl Route {
    /// The cache key of `method` `host` `pq` on this route: its query rules (include /
    /// exclude) and the request headers it keys on. The one place a key is derived, so a
    /// lookup, a purge, an invalidation and a prefetch of the same URL agree byte for byte.
    pub fn key(&self, method: &Method, host: &str, pq: &str, headers: &HeaderMap) -> CacheKey {
        CacheKey::derive(
            method,
            host,
            pq,
            &self.cfg.query,
            &self.cfg.key_headers,
            headers,
        )
    }

    fn compile(idx: usize, cfg: &RouteConfig) -> Result<Route, RouteError> {
        let pattern = match &cfg.path_pattern {
            None => None,
            Some(p) => {
                // literal_separator: `*` stays within one path segment and `**` spans
                // segments, matching what operators expect from path globs.
                let glob = GlobBuilder::new(p)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| RouteError::Pattern {
                        name: cfg.name.clone(),
                        pattern: p.clone(),
                        reason: e.kind().to_string(),
                    })?;
                Some(glob.compile_matcher())
            }
        };
        Ok(Route {
            idx,
            cfg: cfg.clone(),
            hosts: cfg.hosts.iter().map(|h| HostMatcher::new(h)).collect(),
            pattern,
        })
    }

    /// `host` is already stripped of port and trailing dot. Cheapest checks first; the
    /// glob [`Candidate`] (globset's pre-split view of the path) is built at most once per
    /// lookup, shared by all pattern routes, and only if one is reached.
    fn matches<'p>(
        &self,
        host: &str,
        path: &'p str,
        method: &Method,
        candidate: &mut Option<Candidate<'p>>,
    ) -> bool {
        self.method_matches(method)
            && (self.hosts.is_empty() || self.hosts.iter().any(|h| h.matches(host)))
            && self
                .cfg
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
            && self.pattern.as_ref().is_none_or(|g| {
                g.is_match_candidate(candidate.get_or_insert_with(|| Candidate::new(path)))
            })
    }

    /// Empty = any method. A route that allows GET also allows HEAD: HEAD is GET without
    /// the body (RFC 9110 §9.3.2), is keyed as GET and answered from the stored GET, so a
    /// GET-only route must not turn HEADs into "no route" errors.
    fn method_matches(&self, method: &Method) -> bool {
        let m = &self.cfg.methods;
        m.is_empty() || m.contains(method) || (method == Method::HEAD && m.contains(&Method::GET))
    }
}

/// All routes, in config order.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    /// Compiles the routes. Fails on the first invalid path pattern, naming the route.
    pub fn new(cfgs: &[RouteConfig]) -> Result<Routes, RouteError> {
        let routes = cfgs
            .iter()
            .enumerate()
            .map(|(idx, cfg)| Route::compile(idx, cfg))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Routes { routes })
    }

    /// First route in config order whose host, path and method all match.
    ///
    /// `host` may carry a port (ignored: the route decides where to go, not which local
    /// port was hit), a trailing dot and any case. `path` is the raw request path, without
    /// the query, matched as sent (no percent-decoding, so a prefix cannot be dodged or
    /// forged through an alternative encoding the upstream would see differently).
    pub fn find(&self, host: &str, path: &str, method: &Method) -> Option<&Route> {
        let host = normalise_host(host);
        let mut candidate = None;
        self.routes
            .iter()
            .find(|r| r.matches(host, path, method, &mut candidate))
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

/// Strips a port (`host:8080`, `[::1]:8080`) and a trailing dot, without allocating.
fn normalise_host(host: &str) -> &str {
    let host = if host.starts_with('[') {
        // IPv6 literal: the port, if any, follows the closing bracket.
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    host.strip_suffix('.').unwrap_or(host)
}

#[cfg(test)]
#[allow(clippy::panic)] // a failed test setup should fail the test loudly
mod tests {
    use super::*;
    use crate::config::QueryKey;
    use std::time::Duration;

    fn cfg(name: &str) -> RouteConfig {
        RouteConfig {
            name: name.to_string(),
            hosts: vec![],
            path_prefix: None,
            path_pattern: None,
            methods: vec![],
            upstream: http::Uri::from_static("http://127.0.0.1:9000"),
            upstream_host: None,
            ttl: None,
            query: QueryKey::All,
            key_headers: vec![],
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_connections: 64,
            cache_mode: crate::config::CacheMode::Respect,
            cache_set_cookie: false,
            grace: Duration::ZERO,
            prefetch: false,
            prefetch_forward_headers: vec![],
            strip_request_headers: vec![],
            forward_unkeyed_query: false,
            ignore_client_no_cache: false,
        }
    }

    fn hosts(name: &str, hs: &[&str]) -> RouteConfig {
        RouteConfig {
            hosts: hs.iter().map(|h| h.to_string()).collect(),
            ..cfg(name)
        }
    }

    fn prefix(name: &str, p: &str) -> RouteConfig {
        RouteConfig {
            path_prefix: Some(p.to_string()),
            ..cfg(name)
        }
    }

    fn pattern(name: &str, p: &str) -> RouteConfig {
        RouteConfig {
            path_pattern: Some(p.to_string()),
            ..cfg(name)
        }
    }

    fn routes(cfgs: Vec<RouteConfig>) -> Routes {
        match Routes::new(&cfgs) {
            Ok(r) => r,
            Err(e) => panic!("compile failed: {e}"),
        }
    }

    fn find<'a>(r: &'a Routes, host: &str, path: &str) -> Option<&'a str> {
        r.find(host, path, &Method::GET)
            .map(|r| r.cfg.name.as_str())
    }

    #[test]
    fn exact_hosts_case_port_and_dot() {
        let r = routes(vec![hosts("a", &["api.example.com", "Other.example.com"])]);
        assert_eq!(find(&r, "api.example.com", "/"), Some("a"));
        assert_eq!(find(&r, "API.Example.COM", "/"), Some("a"));
        assert_eq!(find(&r, "api.example.com:8080", "/"), Some("a"));
        assert_eq!(find(&r, "api.example.com.", "/"), Some("a"));
        assert_eq!(find(&r, "api.example.com.:80", "/"), Some("a"));
        assert_eq!(find(&r, "other.example.com", "/"), Some("a"));
        assert_eq!(find(&r, "example.com", "/"), None);
        assert_eq!(find(&r, "xapi.example.com", "/"), None);
        assert_eq!(find(&r, "api.example.co", "/"), None);
    }

    #[test]
    fn wildcard_hosts() {
        let r = routes(vec![hosts("w", &["*.example.com"])]);
        assert_eq!(find(&r, "a.example.com", "/"), Some("w"));
        assert_eq!(find(&r, "A.B.Example.com:81", "/"), Some("w"));
        assert_eq!(
            find(&r, "example.com", "/"),
            None,
            "apex is not a subdomain"
        );
        assert_eq!(find(&r, ".example.com", "/"), None);
        assert_eq!(find(&r, "badexample.com", "/"), None);
        assert_eq!(find(&r, "a.example.com.evil", "/"), None);
        let both = routes(vec![hosts("w", &["*.example.com", "example.com"])]);
        assert_eq!(find(&both, "example.com", "/"), Some("w"));
    }

    #[test]
    fn ipv6_hosts() {
        let r = routes(vec![hosts("v6", &["[::1]"])]);
        assert_eq!(find(&r, "[::1]:8080", "/"), Some("v6"));
        assert_eq!(find(&r, "[::1]", "/"), Some("v6"));
        assert_eq!(find(&r, "[::2]", "/"), None);
    }

    #[test]
    fn empty_hosts_match_any() {
        let r = routes(vec![cfg("any")]);
        assert_eq!(find(&r, "whatever.test:1234", "/x"), Some("any"));
        assert_eq!(find(&r, "", "/"), Some("any"));
    }

    #[test]
    fn prefix_is_raw_and_case_sensitive() {
        let r = routes(vec![prefix("api", "/api/")]);
        assert_eq!(find(&r, "h", "/api/"), Some("api"));
        assert_eq!(find(&r, "h", "/api/v1/items"), Some("api"));
        assert_eq!(find(&r, "h", "/api"), None);
        assert_eq!(find(&r, "h", "/API/x"), None);
        assert_eq!(find(&r, "h", "/%61pi/x"), None);
        // A plain prefix is not segment-aware: "/api" also matches "/apix".
        let r = routes(vec![prefix("api", "/api")]);
        assert_eq!(find(&r, "h", "/apix"), Some("api"));
    }

    #[test]
    fn glob_single_and_double_star() {
        let r = routes(vec![
            pattern("one", "/api/*/items"),
            pattern("deep", "/static/**/*.js"),
        ]);
        assert_eq!(find(&r, "h", "/api/v1/items"), Some("one"));
        assert_eq!(find(&r, "h", "/api/v1/v2/items"), None, "* is one segment");
        assert_eq!(find(&r, "h", "/api/items"), None);
        assert_eq!(find(&r, "h", "/static/app.js"), Some("deep"));
        assert_eq!(find(&r, "h", "/static/a/b/c/app.js"), Some("deep"));
        assert_eq!(find(&r, "h", "/static/a/app.css"), None);
    }

    #[test]
    fn prefix_and_glob_both_required() {
        let r = routes(vec![RouteConfig {
            path_prefix: Some("/v2/".to_string()),
            path_pattern: Some("/*/users/*".to_string()),
            ..cfg("both")
        }]);
        assert_eq!(find(&r, "h", "/v2/users/1"), Some("both"));
        assert_eq!(find(&r, "h", "/v1/users/1"), None);
        assert_eq!(find(&r, "h", "/v2/groups/1"), None);
    }

    #[test]
    fn invalid_pattern_is_reported() {
        let err = Routes::new(&[cfg("ok"), pattern("bad", "/a/[b")]);
        match err {
            Err(e @ RouteError::Pattern { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.starts_with("route bad: invalid path pattern \"/a/[b\": "),
                    "{msg}"
                );
            }
            Ok(_) => panic!("expected an error"),
        }
    }

    #[test]
    fn methods() {
        let r = routes(vec![
            RouteConfig {
                methods: vec![Method::GET],
                ..prefix("get", "/r")
            },
            RouteConfig {
                methods: vec![Method::POST, Method::PUT],
                ..prefix("write", "/r")
            },
            prefix("any", "/any"),
        ]);
        let m = |meth: Method, path: &str| r.find("h", path, &meth).map(|r| r.cfg.name.clone());
        assert_eq!(m(Method::GET, "/r").as_deref(), Some("get"));
        assert_eq!(
            m(Method::HEAD, "/r").as_deref(),
            Some("get"),
            "GET routes take HEAD"
        );
        assert_eq!(m(Method::POST, "/r").as_deref(), Some("write"));
        assert_eq!(m(Method::PUT, "/r").as_deref(), Some("write"));
        assert_eq!(m(Method::DELETE, "/r"), None);
        assert_eq!(m(Method::DELETE, "/any").as_deref(), Some("any"));
        let ext = Method::from_bytes(b"PURGE").unwrap_or(Method::TRACE);
        assert_eq!(m(ext, "/any").as_deref(), Some("any"));

        let head_only = routes(vec![RouteConfig {
            methods: vec![Method::HEAD],
            ..cfg("h")
        }]);
        assert!(
            head_only.find("h", "/", &Method::GET).is_none(),
            "HEAD does not imply GET"
        );
    }

    #[test]
    fn first_match_wins() {
        let r = routes(vec![
            prefix("stream", "/api/v1/stream"),
            prefix("api", "/api/"),
            hosts("host", &["example.com"]),
            cfg("fallback"),
        ]);
        assert_eq!(find(&r, "example.com", "/api/v1/stream/x"), Some("stream"));
        assert_eq!(find(&r, "example.com", "/api/v1/other"), Some("api"));
        assert_eq!(find(&r, "example.com", "/home"), Some("host"));
        assert_eq!(find(&r, "other.com", "/home"), Some("fallback"));
        let idx: Vec<usize> = r.iter().map(|r| r.idx).collect();
        assert_eq!(idx, vec![0, 1, 2, 3]);
        assert_eq!(
            r.find("other.com", "/home", &Method::GET).map(|r| r.idx),
            Some(3)
        );
    }

    #[test]
    fn no_match() {
        let r = routes(vec![hosts("a", &["a.test"]), prefix("b", "/b")]);
        assert_eq!(find(&r, "c.test", "/c"), None);
        let empty = routes(vec![]);
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
        assert_eq!(find(&empty, "a.test", "/"), None);
        assert_eq!(r.len(), 2);
        assert!(!r.is_empty());
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalise_host("a.test:8080"), "a.test");
        assert_eq!(normalise_host("a.test."), "a.test");
        assert_eq!(normalise_host("[::1]:80"), "[::1]");
        assert_eq!(normalise_host("[::1"), "[::1");
        assert_eq!(normalise_host("a.test:x"), "a.test:x");
        assert_eq!(normalise_host(""), "");
    }
}
