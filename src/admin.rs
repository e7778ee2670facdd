//! The admin listener (its own address, never the proxy's), and the optional metrics-only
//! listener (`server.metrics_listen`), which serves the three open endpoints and nothing else.
//!
//! | method | path | who | what |
//! |---|---|---|---|
//! | GET | `/metrics` | open | Prometheus text exposition |
//! | GET | `/healthz` | open | liveness: 200 `ok` while the process serves |
//! | GET | `/readyz` | open | readiness: 200 `ready`, 503 `draining` once shutdown began; with `[redis]`, 200 JSON that says `degraded` and why while Redis is unusable |
//! | GET | `/cache` | `read` | JSON: entries, bytes |
//! | GET | `/prefetch/transitions?limit=N` | `read` | JSON: model size and the N strongest transitions (default 20), query strings redacted |
//! | POST | `/purge?url=<absolute URL>` | `purge` | drop the stored GET response for that URL (send the route's key headers too), in L2 and every instance's L1 |
//! | POST | `/purge/all` | `purge` | drop every stored response, in L2 and every instance's L1; one at a time |
//!
//! The open endpoints are what Prometheus and the kubelet scrape, so they need no token. The
//! others need `Authorization: Bearer <token>` with a token from `[admin] token_file` whose
//! scope covers them (`purge` includes `read`): 401 without a valid token, 403 when its scope
//! falls short. With no token configured they answer 403 and say how to configure one,
//! unless `[admin] allow_unauthenticated_loopback` is set (config checks the listener is
//! loopback; here the `Host` must be loopback too, against DNS rebinding). A request that
//! carries `Origin` is a browser's, and no browser page has business here: it is refused
//! whatever its token, which stops CSRF against a port-forwarded admin port.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;

use crate::body::Body;
use crate::config::{AdminConfig, AdminTokens, Scope};
use crate::error::json_error;
use crate::metrics::Metrics;
use crate::proxy::Proxy;

/// Which listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Admin,
    /// `server.metrics_listen`: the open endpoints only.
    Metrics,
}

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Open,
    Needs(Scope),
}

/// The endpoint table's first column: `None` is a 404 for everyone.
fn access(method: &Method, path: &str) -> Option<Access> {
    match (method, path) {
        (&Method::GET, "/metrics" | "/healthz" | "/readyz") => Some(Access::Open),
        (&Method::GET, "/cache") => Some(Access::Needs(Scope::Read)),
        // The whole subtree, so an unauthenticated caller cannot even learn what is there.
        (&Method::GET, p) if p.starts_with("/prefetch/") => Some(Access::Needs(Scope::Read)),
        (&Method::POST, "/purge" | "/purge/all") => Some(Access::Needs(Scope::Purge)),
        _ => None,
    }
}

pub struct Admin {
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    auth: Auth,
    /// Held for the whole of a `/purge/all`: a second one answers 409 instead of running a
    /// second full SCAN + UNLINK pass against Redis beside the first.
    purging_all: Arc<tokio::sync::Mutex<()>>,
}

impl Admin {
    pub fn new(
        proxy: Arc<Proxy>,
        metrics: Arc<Metrics>,
        ready: Arc<AtomicBool>,
        config: &AdminConfig,
    ) -> Admin {
        Admin {
            proxy,
            metrics,
            ready,
            auth: Auth {
                tokens: config.tokens.clone(),
                loopback_open: config.allow_unauthenticated_loopback,
            },
            purging_all: Arc::default(),
        }
    }

    pub async fn handle(&self, req: Request<Incoming>, listener: Listener) -> Response<Body> {
        match access(req.method(), req.uri().path()) {
            Some(Access::Open) => self.open(req.uri().path()),
            Some(Access::Needs(scope)) if listener == Listener::Admin => {
                match self.auth.check(req.headers(), scope) {
                    Ok(()) => self.protected(&req).await,
                    Err(refused) => {
                        tracing::debug!(?refused, path = req.uri().path(), "admin request refused");
                        refused.response()
                    }
                }
            }
            _ => not_found(),
        }
    }

    fn open(&self, path: &str) -> Response<Body> {
        match path {
            "/metrics" => {
                self.proxy.cache().update_gauges();
                self.proxy.prefetcher().update_gauges();
                self.metrics.upkeep();
                text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.metrics.render(),
                )
            }
            "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
            _ => self.readyz(),
        }
    }

    fn readyz(&self) -> Response<Body> {
        let ready = self.ready.load(Ordering::Acquire);
        if let (true, Some(l2)) = (ready, self.proxy.cache().l2_health()) {
            // Redis trouble is not unreadiness: L1 and the upstream still answer.
            let body = serde_json::json!({
                "status": if l2.degraded() { "degraded" } else { "ready" },
                "l2": {
                    "connected": l2.connected,
                    "breaker": l2.breaker,
                    "reason": l2.reason,
                },
            })
            .to_string();
            text(StatusCode::OK, "application/json", body)
        } else if ready {
            text(StatusCode::OK, "text/plain", "ready\n".into())
        } else {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "draining\n".into(),
            )
        }
    }

    /// The endpoints behind a token, once [`Auth::check`] let the request through.
    async fn protected(&self, req: &Request<Incoming>) -> Response<Body> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/cache") => {
                let c = self.proxy.cache();
                let body = serde_json::json!({
                    "entries": c.entries(),
                    "bytes": c.bytes(),
                })
                .to_string();
                text(StatusCode::OK, "application/json", body)
            }
            (&Method::GET, "/prefetch/transitions") => self.transitions(req.uri()),
            (&Method::POST, "/purge/all") => self.purge_all().await,
            (&Method::POST, "/purge") => self.purge(req).await,
            _ => not_found(),
        }
    }

    fn transitions(&self, uri: &Uri) -> Response<Body> {
        let limit = uri
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("limit=")))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(20)
            .min(10_000);
        let json = self.proxy.prefetcher().transitions_json(limit);
        match redact_transitions(&json) {
            Some(body) => text(StatusCode::OK, "application/json", body),
            None => json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the transition table could not be rendered",
            ),
        }
    }

    /// One at a time, run to the end on its own task (a client that hangs up does not leave
    /// Redis half purged), and answered with what it did.
    async fn purge_all(&self) -> Response<Body> {
        let Ok(guard) = self.purging_all.clone().try_lock_owned() else {
            return json_error(
                StatusCode::CONFLICT,
                "purge_in_progress",
                "a purge of everything is already running on this instance; retry when it ends",
            );
        };
        let proxy = self.proxy.clone();
        let run = tokio::spawn(async move {
            let done = proxy.cache().invalidate_all().await;
            drop(guard);
            done
        });
        let Ok(done) = run.await else {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the purge did not finish; see augur's log",
            );
        };
        let (status, body) = match done.l2 {
            Some(Err(())) => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({
                    "purged": "l1",
                    "l1_entries": done.l1_entries,
                    "l2_keys": null,
                    "error": {
                        "status": 503,
                        "code": "l2_purge_failed",
                        "message": "this instance's L1 was purged, Redis and the other instances may not have been (the reason is in augur's log); retry",
                    },
                }),
            ),
            l2 => (
                StatusCode::OK,
                serde_json::json!({
                    "purged": "all",
                    "l1_entries": done.l1_entries,
                    "l2_keys": l2.and_then(Result::ok),
                }),
            ),
        };
        text(status, "application/json", body.to_string())
    }

    async fn purge(&self, req: &Request<Incoming>) -> Response<Body> {
        let Some(url) = req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("url="))
                .map(|v| {
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned()
                })
        }) else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "missing ?url=<absolute URL>",
            );
        };
        let Ok(uri) = url.parse::<Uri>() else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "url is not a valid URL",
            );
        };
        let (Some(host), Some(pq)) = (uri.authority(), uri.path_and_query()) else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "url must be absolute: http://host/path",
            );
        };
        let Some(route) = self
            .proxy
            .routes()
            .find(host.as_str(), uri.path(), &Method::GET)
        else {
            return json_error(
                StatusCode::NOT_FOUND,
                "no_route",
                "no route matches that url",
            );
        };
        let key = route.key(&Method::GET, host.as_str(), pq.as_str(), req.headers());
        let removed = self.proxy.cache().invalidate(&key).await;
        let body = serde_json::json!({ "purged": removed, "key": key.to_hex() }).to_string();
        text(StatusCode::OK, "application/json", body)
    }
}

/// Who may pass, decided before any endpoint runs.
struct Auth {
    tokens: AdminTokens,
    /// `[admin] allow_unauthenticated_loopback` (only ever set with no tokens, on loopback).
    loopback_open: bool,
}

impl Auth {
    fn check(&self, headers: &HeaderMap, needed: Scope) -> Result<(), Refused> {
        if headers.contains_key(header::ORIGIN) {
            return Err(Refused::Origin);
        }
        if self.tokens.is_empty() {
            return match (self.loopback_open, host_is_loopback(headers)) {
                (true, true) => Ok(()),
                (true, false) => Err(Refused::Host),
                (false, _) => Err(Refused::NotConfigured),
            };
        }
        let presented = bearer_token(headers);
        match presented.and_then(|t| self.tokens.scope_of(t)) {
            Some(scope) if scope >= needed => Ok(()),
            Some(_) => Err(Refused::Scope(needed)),
            None => Err(Refused::Token {
                presented: presented.is_some(),
            }),
        }
    }
}

/// Why [`Auth::check`] turned a request away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Origin,
    Host,
    NotConfigured,
    /// No valid bearer token; `presented`: there was one, and it is unknown.
    Token {
        presented: bool,
    },
    /// A valid token whose scope falls short of this one.
    Scope(Scope),
}

impl Refused {
    fn response(self) -> Response<Body> {
        let (status, code, msg, challenge) = match self {
            Refused::Origin => (
                StatusCode::FORBIDDEN,
                "origin_refused",
                "requests with an Origin header are refused: the admin API is not for browsers".to_owned(),
                None,
            ),
            Refused::Host => (
                StatusCode::FORBIDDEN,
                "host_refused",
                "without tokens the admin API answers only a loopback Host (localhost, 127.0.0.1, [::1])".to_owned(),
                None,
            ),
            Refused::NotConfigured => (
                StatusCode::FORBIDDEN,
                "admin_auth_not_configured",
                "this endpoint needs a bearer token, and none is configured: set [admin] token_file (or AUGUR_ADMIN_TOKEN_FILE) to a file of `purge:<token>` / `read:<token>` lines".to_owned(),
                None,
            ),
            Refused::Token { presented } => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <token> with a token from [admin] token_file".to_owned(),
                Some(match presented {
                    true => r#"Bearer realm="augur-admin", error="invalid_token""#.to_owned(),
                    false => r#"Bearer realm="augur-admin""#.to_owned(),
                }),
            ),
            Refused::Scope(needed) => (
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                format!("this endpoint needs a token with the {} scope", needed.as_str()),
                Some(format!(
                    r#"Bearer realm="augur-admin", error="insufficient_scope", scope="{}""#,
                    needed.as_str()
                )),
            ),
        };
        let mut resp = json_error(status, code, &msg);
        if let Some(v) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    }
}

/// The token of a single `Authorization: Bearer <token>` field; `None` for any other shape.
fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let mut fields = headers.get_all(header::AUTHORIZATION).iter();
    let (value, None) = (fields.next()?, fields.next()) else {
        return None;
    };
    let value = value.as_bytes();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Whether `Host` names this machine: a page on another name that DNS-rebinds to 127.0.0.1
/// still sends its own name.
fn host_is_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `json` (the prefetcher's transition table) with every query string cut to `?…`: request
/// URLs carry reset tokens, e-mail addresses and API keys, and the path is what an operator
/// reads the table for.
fn redact_transitions(json: &str) -> Option<String> {
    let mut value: serde_json::Value = serde_json::from_str(json).ok()?;
    if let Some(list) = value.get_mut("strongest").and_then(|v| v.as_array_mut()) {
        for field in list
            .iter_mut()
            .filter_map(|t| t.as_object_mut())
            .flat_map(|t| t.values_mut())
        {
            if let Some(redacted) = field.as_str().and_then(redact_query) {
                *field = serde_json::Value::String(redacted);
            }
        }
    }
    Some(value.to_string())
}

/// `path?query` ─► `path?…`; `None` when there is no query.
fn redact_query(url: &str) -> Option<String> {
    url.split_once('?').map(|(path, _)| format!("{path}?…"))
}

fn not_found() -> Response<Body> {
    json_error(StatusCode::NOT_FOUND, "not_found", "unknown admin endpoint")
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const P: &str = "purge-0123456789abcdef";
    const R: &str = "read-0123456789abcdef";

    fn with_tokens() -> Auth {
        Auth {
            tokens: AdminTokens::parse(&format!("purge:{P}\nread:{R}")).unwrap(),
            loopback_open: false,
        }
    }

    #[test]
    fn bearer_tokens_are_read_strictly() {
        let t = |v: &str| bearer_token(&headers(&[("authorization", v)])).map(<[u8]>::to_vec);
        assert_eq!(t(&format!("Bearer {P}")), Some(P.as_bytes().to_vec()));
        assert_eq!(t(&format!("bearer  {P} ")), Some(P.as_bytes().to_vec()));
        assert_eq!(t(&format!("Basic {P}")), None);
        assert_eq!(t("Bearer "), None);
        assert_eq!(t("Bearer"), None);
        let two = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert_eq!(bearer_token(&two), None, "two fields are ambiguous");
    }

    #[test]
    fn scopes_origin_and_missing_tokens() {
        let auth = with_tokens();
        let bearer = |t: &str| format!("Bearer {t}");
        let check = |pairs: &[(&'static str, &str)], s| auth.check(&headers(pairs), s);
        assert_eq!(
            check(&[("authorization", &bearer(P))], Scope::Purge),
            Ok(())
        );
        assert_eq!(check(&[("authorization", &bearer(P))], Scope::Read), Ok(()));
        assert_eq!(check(&[("authorization", &bearer(R))], Scope::Read), Ok(()));
        assert_eq!(
            check(&[("authorization", &bearer(R))], Scope::Purge),
            Err(Refused::Scope(Scope::Purge))
        );
        assert_eq!(
            check(&[], Scope::Read),
            Err(Refused::Token { presented: false })
        );
        assert_eq!(
            check(
                &[("authorization", &bearer("nope-0123456789abcdef"))],
                Scope::Read
            ),
            Err(Refused::Token { presented: true })
        );
        let origin = [
            ("authorization", &*bearer(P)),
            ("origin", "http://localhost"),
        ];
        assert_eq!(check(&origin, Scope::Read), Err(Refused::Origin));
        let resp = Refused::Token { presented: true }.response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(resp.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("invalid_token"));
    }

    #[test]
    fn loopback_opt_out_still_wants_a_loopback_host_and_no_origin() {
        let closed = Auth {
            tokens: AdminTokens::default(),
            loopback_open: false,
        };
        let host = |h: &str| headers(&[("host", h)]);
        assert_eq!(
            closed.check(&host("127.0.0.1:9090"), Scope::Read),
            Err(Refused::NotConfigured)
        );
        let open = Auth {
            tokens: AdminTokens::default(),
            loopback_open: true,
        };
        for ok in [
            "127.0.0.1:9090",
            "localhost",
            "LOCALHOST:1",
            "[::1]:9090",
            "127.1.2.3",
        ] {
            assert_eq!(open.check(&host(ok), Scope::Purge), Ok(()), "{ok}");
        }
        for bad in ["rebind.example:9090", "10.0.0.1:9090", "[::2]:9090", ""] {
            assert_eq!(
                open.check(&host(bad), Scope::Purge),
                Err(Refused::Host),
                "{bad}"
            );
        }
        assert_eq!(
            open.check(&HeaderMap::new(), Scope::Read),
            Err(Refused::Host)
        );
        let browser = headers(&[("host", "localhost"), ("origin", "http://localhost")]);
        assert_eq!(open.check(&browser, Scope::Purge), Err(Refused::Origin));
    }

    #[test]
    fn transitions_keep_paths_and_lose_queries() {
        let json = serde_json::json!({
            "states": 2,
            "strongest": [
                {"from": "/a", "to": "/reset?token=s3cr3t&email=x%40y", "count": 1.0},
                {"from": "/b?k=v", "to": "/c", "count": 1.0},
            ],
        })
        .to_string();
        let out = redact_transitions(&json).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["strongest"][0]["from"], "/a");
        assert_eq!(v["strongest"][0]["to"], "/reset?…");
        assert_eq!(v["strongest"][1]["from"], "/b?…");
        assert_eq!(v["strongest"][0]["count"], 1.0);
        assert_eq!(v["states"], 2);
        assert!(!out.contains("s3cr3t"));
    }
}
