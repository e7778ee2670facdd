//! `augur demo`: a small sample JSON API with realistic latency, started behind the proxy so
//! that the shipped `proxy.toml` works on a fresh machine with nothing else running.
//!
//! | path | caching headers it sends | what a newcomer sees through Augur |
//! |---|---|---|
//! | `/users` | `Cache-Control: public, max-age=60` | MISS, then HIT for 60 s |
//! | `/users/{id}` | none | stored for the route `ttl` |
//! | `/users/{id}/orders` | `max-age=10` | HIT for 10 s, then a refetch |
//! | `/time` | `no-store` | always fetched (MISS) |
//!
//! Every answer waits 40–90 ms first, like a real API behind a database.

use std::convert::Infallible;
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use augur::body::Body;

/// Serve the demo API on `listener` forever.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        tokio::spawn(async move {
            let svc = service_fn(|req| async move { Ok::<_, Infallible>(answer(req).await) });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let seed = path
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    tokio::time::sleep(Duration::from_millis(40 + seed % 50)).await;
    let (status, cc, body) = match segs.as_slice() {
        ["users"] => {
            let users: Vec<_> = (1..=20).map(user).collect();
            (
                StatusCode::OK,
                Some("public, max-age=60"),
                serde_json::json!({ "data": users, "page": 1 }),
            )
        }
        ["users", id] => match id.parse::<u64>() {
            Ok(id) => (StatusCode::OK, None, user(id)),
            Err(_) => not_found(&path),
        },
        ["users", id, "orders"] => match id.parse::<u64>() {
            Ok(id) => {
                let orders: Vec<_> = (1..=5)
                    .map(|n| serde_json::json!({ "id": id * 100 + n, "user_id": id, "total_cents": (id * 977 + n * 131) % 20000, "status": "shipped" }))
                    .collect();
                (
                    StatusCode::OK,
                    Some("max-age=10"),
                    serde_json::json!({ "data": orders }),
                )
            }
            Err(_) => not_found(&path),
        },
        ["time"] => {
            let now = httpdate::fmt_http_date(std::time::SystemTime::now());
            (
                StatusCode::OK,
                Some("no-store"),
                serde_json::json!({ "now": now }),
            )
        }
        _ => not_found(&path),
    };
    let mut resp = Response::new(Body::full(body.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(cc) = cc {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cc));
    }
    resp
}

fn user(id: u64) -> serde_json::Value {
    const NAMES: [&str; 8] = [
        "Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Frances",
    ];
    let name = NAMES[(id % NAMES.len() as u64) as usize];
    serde_json::json!({
        "id": id,
        "name": name,
        "email": format!("{}{}@example.com", name.to_lowercase(), id),
        "orders_url": format!("/users/{id}/orders"),
    })
}

fn not_found(path: &str) -> (StatusCode, Option<&'static str>, serde_json::Value) {
    (
        StatusCode::NOT_FOUND,
        None,
        serde_json::json!({ "error": "not found", "path": path }),
    )
}
