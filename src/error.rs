//! Errors grouped by where they come from, and the one place an error becomes a response.
//!
//! Every failure on the request path ends here as a JSON body with a stable shape:
//! `{"error":{"status":502,"code":"upstream_unreachable","message":"…"}}`. Codes are part of
//! the operator-facing contract (alerts and client retries key on them); messages are not.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::Body;

/// The error underneath an upstream failure, kept as a source (not flattened to text) and
/// shared, because a flight hands one error to all its waiters and `ProxyError` must be `Clone`.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// A cause from text, where there is no error value to keep.
pub fn cause(text: &str) -> Cause {
    Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(text))
}

/// An error and its sources, `a: b: c`, for logs (hyper's top-level errors say little alone).
fn chain(e: &Cause) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(out, ": {s}");
        source = s.source();
    }
    out
}

/// What went wrong, named by its source: the client (downstream), the upstream, or Augur.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    // ---- downstream: the client's request
    #[error("no route matches {0}")]
    NoRoute(String),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request body larger than the {limit}-byte limit")]
    BodyTooLarge { limit: u64 },
    #[error("only-if-cached: no stored response can answer this request")]
    NotCached,
    // ---- upstream
    #[error("upstream unreachable: {}", chain(.0))]
    UpstreamConnect(#[source] Cause),
    #[error("upstream did not answer within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("upstream failed: {}", chain(.0))]
    UpstreamProtocol(#[source] Cause),
    // ---- internal: Augur's own fault, neither the client's nor the upstream's
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UpstreamConnect(_) | ProxyError::UpstreamProtocol(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout(_) | ProxyError::NotCached => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute(_) => "no_route",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::NotCached => "not_cached",
            ProxyError::UpstreamConnect(_) => "upstream_unreachable",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
            ProxyError::UpstreamProtocol(_) => "upstream_error",
            ProxyError::Internal(_) => "internal",
        }
    }

    pub fn to_response(&self) -> Response<Body> {
        json_error(self.status(), self.code(), &self.public_message())
    }

    /// The message a client sees. An upstream's own error text (OS errors, internal
    /// addresses, the HTTP client's wording) is for the log (`Display`), never the response.
    fn public_message(&self) -> String {
        match self {
            ProxyError::UpstreamConnect(_) => "upstream unreachable".to_owned(),
            ProxyError::UpstreamProtocol(_) => "upstream failed".to_owned(),
            other => other.to_string(),
        }
    }
}

/// The JSON error body shared by the proxy and the admin listener.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "error": { "status": status.as_u16(), "code": code, "message": message }
    })
    .to_string();
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn upstream_causes_stay_sources_and_reach_the_log_not_the_client() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = ProxyError::UpstreamConnect(Arc::new(Outer(refused)));
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("client error (Connect)"));
        assert_eq!(
            e.to_string(),
            "upstream unreachable: client error (Connect): refused"
        );
        assert_eq!(e.public_message(), "upstream unreachable");
        assert_eq!(e.clone().code(), "upstream_unreachable");
    }
}
