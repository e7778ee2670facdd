//! The admin listener (its own address, never the proxy's):
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/metrics` | Prometheus text exposition |
//! | GET | `/healthz` | liveness: 200 `ok` while the process serves |
//! | GET | `/readyz` | readiness: 200 `ready`, 503 `draining` once shutdown began; with `[redis]`, 200 JSON that says `degraded` and why while Redis is unusable |
//! | POST | `/purge?url=<absolute URL>` | drop the stored GET response for that URL (send the route's key headers too), in L2 and every instance's L1 |
//! | POST | `/purge/all` | drop every stored response, in L2 and every instance's L1 |
//! | GET | `/cache` | JSON: entries, bytes, budget |
//! | GET | `/prefetch/transitions?limit=N` | JSON: model size and the N strongest transitions (default 20) |

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;

use crate::body::Body;
use crate::error::json_error;
use crate::metrics::Metrics;
use crate::proxy::Proxy;

pub struct Admin {
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

impl Admin {
    pub fn new(proxy: Arc<Proxy>, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Admin {
        Admin {
            proxy,
            metrics,
            ready,
        }
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => {
                self.proxy.cache().update_gauges();
                self.proxy.prefetcher().update_gauges();
                self.metrics.upkeep();
                text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.metrics.render(),
                )
            }
            (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
            (&Method::GET, "/readyz") => {
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
            (&Method::GET, "/cache") => {
                let c = self.proxy.cache();
                let body = serde_json::json!({
                    "entries": c.entries(),
                    "bytes": c.bytes(),
                })
                .to_string();
                text(StatusCode::OK, "application/json", body)
            }
            (&Method::GET, "/prefetch/transitions") => {
                let limit = req
                    .uri()
                    .query()
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("limit=")))
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(20)
                    .min(10_000);
                let body = self.proxy.prefetcher().transitions_json(limit);
                text(StatusCode::OK, "application/json", body)
            }
            (&Method::POST, "/purge/all") => {
                self.proxy.cache().invalidate_all().await;
                text(
                    StatusCode::OK,
                    "application/json",
                    r#"{"purged":"all"}"#.into(),
                )
            }
            (&Method::POST, "/purge") => self.purge(&req).await,
            _ => json_error(StatusCode::NOT_FOUND, "not_found", "unknown admin endpoint"),
        }
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

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
