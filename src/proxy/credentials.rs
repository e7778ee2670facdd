//! Does a request carry a client's credentials? Read once per request into the `Exchange`,
//! before the cache is asked: `policy` stores an answer to such a request only when the origin
//! says explicitly that it may be shared, and the cache answers it only with entries the
//! origin marked so (`Flags::AUTH_OK`). RFC 9111 §3.5 says this of `Authorization`; a session
//! `Cookie` or an API-key header identifies the user just as well, so `cache.credential_headers`
//! extends the rule to them (as Varnish's builtin VCL does for `Cookie`).
//!
//! A credential header the route names in `key_headers` does not count: its value is in the
//! key, so what is stored for one credential is only ever found by the same credential.

use http::header::{self, HeaderMap, HeaderName};

/// The fields that count as credentials: `Authorization`, always, and the configured ones.
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    configured: Vec<HeaderName>,
}

impl Credentials {
    pub fn new(configured: &[HeaderName]) -> Credentials {
        Credentials {
            configured: configured.to_vec(),
        }
    }

    /// The credential fields of a request on a route that keys on `keyed`.
    fn unkeyed<'a>(&'a self, keyed: &'a [HeaderName]) -> impl Iterator<Item = &'a HeaderName> {
        std::iter::once(&header::AUTHORIZATION)
            .chain(&self.configured)
            .filter(move |n| !keyed.contains(n))
    }

    /// Does a request with `headers`, on a route keyed on `keyed`, carry credentials that are
    /// not part of its key? `Authorization` counts even when keyed (§3.5 is unconditional).
    pub fn carried(&self, headers: &HeaderMap, keyed: &[HeaderName]) -> bool {
        // One pass over the request's field names (a handful) rather than one hashed lookup
        // per configured credential: this runs on every hit (callgrind: ~1,300 instructions a
        // request for nine lookups, a few hundred this way).
        headers.keys().any(|name| {
            *name == header::AUTHORIZATION
                || (self.configured.contains(name) && !keyed.contains(name))
        })
    }

    /// Remove the credentials that are not part of the key: what a background refresh of an
    /// entry stored for everyone sends, so that no client's identity shapes the shared copy.
    pub fn strip(&self, headers: &mut HeaderMap, keyed: &[HeaderName]) {
        for name in self.unkeyed(keyed) {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(names: &[&'static str]) -> HeaderMap {
        names
            .iter()
            .map(|n| (HeaderName::from_static(n), HeaderValue::from_static("v")))
            .collect()
    }

    fn defaults() -> Credentials {
        Credentials::new(&crate::config::CacheConfig::default().credential_headers)
    }

    #[test]
    fn cookies_api_keys_and_authorization_count() {
        let c = defaults();
        for name in ["cookie", "x-api-key", "authorization", "x-auth-token"] {
            assert!(c.carried(&headers(&[name]), &[]), "{name}");
        }
        assert!(!c.carried(&headers(&["accept", "x-request-id"]), &[]));
    }

    #[test]
    fn a_keyed_credential_does_not_count_but_authorization_always_does() {
        let c = defaults();
        let keyed = [header::COOKIE, header::AUTHORIZATION];
        assert!(!c.carried(&headers(&["cookie"]), &keyed));
        assert!(c.carried(&headers(&["cookie", "x-api-key"]), &keyed));
        assert!(c.carried(&headers(&["authorization"]), &keyed));
    }

    #[test]
    fn an_empty_list_leaves_only_authorization() {
        let c = Credentials::new(&[]);
        assert!(!c.carried(&headers(&["cookie"]), &[]));
        assert!(c.carried(&headers(&["authorization"]), &[]));
    }

    #[test]
    fn strip_keeps_what_the_key_holds() {
        let c = defaults();
        let mut h = headers(&["cookie", "x-api-key", "authorization", "accept"]);
        c.strip(&mut h, &[header::COOKIE]);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "cookie"]);
        assert!(!c.carried(&h, &[header::COOKIE]));
    }
}
