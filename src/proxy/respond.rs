//! A stored entry becomes a response for one request: 304 when the client's own validators
//! match (RFC 9110 §13.1.1, §13.1.3), 206 / 416 for one byte range (§14.4, §15.5.17), else the
//! stored frame as is for a client that accepts zstd and the decompressed body for any other;
//! `Age` always (RFC 9111 §5.1). The zstd coding is another representation, so it never carries
//! the identity body's strong `ETag` (RFC 9110 §8.8.3): it is sent weakened, `W/"…"`.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};

use super::Proxy;
use crate::body::Body;
use crate::cache::entry::{Entry, StoredBody};
use crate::cache::policy;
use crate::error::ProxyError;
use crate::key::CacheKey;
use crate::range::{self, ByteRange};

impl Proxy {
    /// The response to `req` from `entry`, stored under `key` (the variant, when it varies).
    pub(super) fn respond(&self, entry: &Entry, req: &Parts, key: CacheKey) -> Response<Body> {
        if entry.status.is_success() && client_copy_is_current(entry, &req.headers) {
            return self.not_modified(entry, accepts_zstd(&req.headers));
        }
        if req.method == Method::GET && entry.status == StatusCode::OK {
            if let Some(r) = req.headers.get(header::RANGE).and_then(range::parse) {
                if range::if_range_holds(&entry.headers, &req.headers) {
                    return self.ranged(entry, r, key);
                }
            }
        }
        self.build(entry, accepts_zstd(&req.headers), key)
    }

    /// The entry in the identity coding, whatever the request accepts.
    pub(super) fn respond_identity(&self, entry: &Entry, key: CacheKey) -> Response<Body> {
        self.build(entry, false, key)
    }

    /// One byte range of the stored body: 206 with `Content-Range`, or 416 when it lies
    /// outside the body. Always the identity coding.
    fn ranged(&self, entry: &Entry, r: ByteRange, key: CacheKey) -> Response<Body> {
        let Ok(full) = self.cache.identity_body(&key, entry) else {
            return self.build(entry, false, key);
        };
        let len = full.len() as u64;
        let mut headers = entry.headers.clone();
        self.with_age(&mut headers, entry);
        let (status, body, content_range) = match range::resolve(r, len) {
            Some((first, last)) => (
                StatusCode::PARTIAL_CONTENT,
                full.slice(first as usize..=last as usize),
                format!("bytes {first}-{last}/{len}"),
            ),
            None => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                Bytes::new(),
                format!("bytes */{len}"),
            ),
        };
        if let Ok(v) = HeaderValue::from_str(&content_range) {
            headers.insert(header::CONTENT_RANGE, v);
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        response(status, headers, Body::full(body))
    }

    fn build(&self, entry: &Entry, zstd: bool, key: CacheKey) -> Response<Body> {
        // Sized once for the stored headers plus the few added here and in `finish`, so building
        // the response never grows (re-allocates and re-hashes) the map on the hit path.
        let mut headers = HeaderMap::with_capacity(entry.headers.len() + 5);
        for (name, value) in &entry.headers {
            headers.append(name.clone(), value.clone());
        }
        let body = match &entry.body {
            StoredBody::Zstd { frame, .. } if zstd => {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
                weaken_etag(&mut headers);
                frame.clone()
            }
            _ => match self.cache.identity_body(&key, entry) {
                Ok(b) => b,
                Err(e) => {
                    // Cannot happen for an entry this process encoded; never serve it.
                    tracing::error!(key = %key, error = %e, "stored body failed to decode; dropped");
                    self.cache.remove(&key);
                    return ProxyError::Internal("stored entry unreadable").to_response();
                }
            },
        };
        if matches!(entry.body, StoredBody::Zstd { .. }) {
            add_vary_accept_encoding(&mut headers);
        }
        // Content-Length is left to hyper, which writes it from the body's exact size (also
        // for HEAD) without allocating a header value.
        self.with_age(&mut headers, entry);
        response(entry.status, headers, Body::full(body))
    }

    /// 304 for a client whose copy is current: the stored headers (they include `ETag`,
    /// `Cache-Control`, `Date`, `Expires`, `Vary` as RFC 9110 §15.4.5 asks) without a body;
    /// the `ETag` is the one a 200 would carry, weak for a `zstd` client of a compressed entry.
    fn not_modified(&self, entry: &Entry, zstd: bool) -> Response<Body> {
        let mut headers = entry.headers.clone();
        headers.remove(header::CONTENT_LENGTH);
        if matches!(entry.body, StoredBody::Zstd { .. }) {
            add_vary_accept_encoding(&mut headers);
            if zstd {
                weaken_etag(&mut headers);
            }
        }
        self.with_age(&mut headers, entry);
        response(StatusCode::NOT_MODIFIED, headers, Body::empty())
    }

    /// `Age`: the entry's current age in whole seconds.
    fn with_age(&self, headers: &mut HeaderMap, entry: &Entry) {
        headers.insert(
            header::AGE,
            age_value(entry.age_ms(self.cache.now_ms()) / 1000),
        );
    }
}

fn response(status: StatusCode, headers: HeaderMap, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// Does the client's conditional request match the stored entry? `If-None-Match` wins over
/// `If-Modified-Since` (RFC 9110 §13.2.2). Two map lookups when the request has neither.
fn client_copy_is_current(entry: &Entry, req: &HeaderMap) -> bool {
    let mut inm = req.get_all(header::IF_NONE_MATCH).iter().peekable();
    if inm.peek().is_some() {
        let etag = entry.headers.get(header::ETAG);
        return inm.any(|v| policy::if_none_match(etag, v));
    }
    match req.get(header::IF_MODIFIED_SINCE) {
        Some(since) => policy::not_modified_since(entry.headers.get(header::LAST_MODIFIED), since),
        None => false,
    }
}

/// Does the client accept `zstd` (with a non-zero q-value)?
pub fn accepts_zstd(headers: &HeaderMap) -> bool {
    if !headers.contains_key(header::ACCEPT_ENCODING) {
        return false;
    }
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            if !coding.eq_ignore_ascii_case("zstd") {
                return false;
            }
            parts.all(|p| {
                let p = p.trim();
                match p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
                    Some(q) => q.trim().parse::<f32>().is_ok_and(|q| q > 0.0),
                    None => true,
                }
            })
        })
}

/// `Age` header values, shared: most hits are younger than an hour, and a clone of a shared
/// value costs a reference count instead of an allocation.
fn age_value(secs: u64) -> HeaderValue {
    static AGES: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    let table = AGES.get_or_init(|| (0..=3600u64).map(HeaderValue::from).collect());
    usize::try_from(secs)
        .ok()
        .and_then(|i| table.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(secs))
}

/// A strong `ETag` made weak, for the zstd coding of the body it names (security review L5):
/// a strong validator names one sequence of bytes (RFC 9110 §8.8.3), and the zstd frame is
/// other bytes than the identity body. Weak, it still matches the client's `If-None-Match`
/// (weak comparison, §13.1.2), and it never matches `If-Range` (strong comparison, §13.1.5), so
/// a client resuming a zstd download never gets a range of the identity bytes spliced in.
fn weaken_etag(headers: &mut HeaderMap) {
    let Some(strong) = headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| t.starts_with('"'))
    else {
        return;
    };
    if let Ok(weak) = HeaderValue::from_str(&format!("W/{strong}")) {
        headers.insert(header::ETAG, weak);
    }
}

/// The stored body can be sent in two codings, so say so to caches downstream.
fn add_vary_accept_encoding(headers: &mut HeaderMap) {
    let already = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|n| n.trim().eq_ignore_ascii_case("accept-encoding") || n.trim() == "*");
    if !already {
        headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_acceptance() {
        let h = |v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(v));
            m
        };
        assert!(accepts_zstd(&h("gzip, zstd")));
        assert!(accepts_zstd(&h("ZSTD;q=0.5")));
        assert!(!accepts_zstd(&h("zstd;q=0")));
        assert!(!accepts_zstd(&h("gzip, br")));
        assert!(!accepts_zstd(&HeaderMap::new()));
    }

    #[test]
    fn only_a_strong_etag_is_weakened() {
        let weakened = |v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(header::ETAG, HeaderValue::from_static(v));
            weaken_etag(&mut m);
            m[header::ETAG].to_str().unwrap().to_owned()
        };
        assert_eq!(weakened("\"a\""), "W/\"a\"");
        assert_eq!(weakened("W/\"a\""), "W/\"a\"");
        let mut none = HeaderMap::new();
        weaken_etag(&mut none);
        assert!(none.is_empty());
    }
}
