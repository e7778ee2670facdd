//! Errors grouped by where they come from, and the one place an error becomes a response.
//!
//! Every failure on the request path ends here as a JSON body with a stable shape:
//! `{"error":{"status":502,"code":"upstream_unreachable","message":"…"}}`. Codes are part of
//! the operator-facing contract (alerts and client retries key on them); messages are not.

use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::Body;

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
    #[error("upstream unreachable: {0}")]
    UpstreamConnect(String),
    #[error("upstream did not answer within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("upstream failed: {0}")]
    UpstreamProtocol(String),
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
