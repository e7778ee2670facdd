//! Input shapes shared by the fuzz targets in `fuzz_targets/`.
//!
//! Headers are what an attacker controls on the request path (a client's request head, an
//! upstream's response head), so most targets take a list of [`Field`]s. A name is either one
//! of the fields Augur reads (so the fuzzer does not spend its time discovering the spelling
//! of `cache-control`) or raw bytes; a pair that `http` refuses is dropped, exactly as hyper
//! would never hand it over.

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// More lines than a real head carries is only slower, not more interesting.
const MAX_FIELDS: usize = 64;

/// The fields some part of the request path reads.
const KNOWN: &[&str] = &[
    "cache-control",
    "cdn-cache-control",
    "augur-cache-control",
    "pragma",
    "expires",
    "date",
    "age",
    "last-modified",
    "etag",
    "vary",
    "authorization",
    "cookie",
    "set-cookie",
    "range",
    "if-range",
    "if-none-match",
    "if-modified-since",
    "accept",
    "accept-encoding",
    "accept-language",
    "content-type",
    "content-encoding",
    "content-length",
    "connection",
    "host",
    "forwarded",
    "x-forwarded-host",
    "x-tenant",
];

#[derive(Arbitrary, Debug, Clone)]
pub enum FieldName {
    Known(u8),
    Raw(Vec<u8>),
}

impl FieldName {
    pub fn name(&self) -> Option<HeaderName> {
        match self {
            FieldName::Known(i) => Some(HeaderName::from_static(
                KNOWN[usize::from(*i) % KNOWN.len()],
            )),
            FieldName::Raw(b) => HeaderName::from_bytes(b).ok(),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Field {
    pub name: FieldName,
    pub value: Vec<u8>,
}

/// The header map hyper would have built from `fields` (invalid lines dropped).
pub fn headers(fields: &[Field]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for f in fields.iter().take(MAX_FIELDS) {
        if let (Some(name), Ok(value)) = (f.name.name(), HeaderValue::from_bytes(&f.value)) {
            map.append(name, value);
        }
    }
    map
}

/// Valid, distinct header names (a route's key headers, a targeted-field list).
pub fn names(names: &[FieldName]) -> Vec<HeaderName> {
    let mut out: Vec<HeaderName> = Vec::new();
    for n in names.iter().take(8).filter_map(FieldName::name) {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

#[derive(Arbitrary, Debug, Clone)]
pub enum AnyMethod {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Raw(Vec<u8>),
}

impl AnyMethod {
    pub fn method(&self) -> Option<Method> {
        Some(match self {
            AnyMethod::Get => Method::GET,
            AnyMethod::Head => Method::HEAD,
            AnyMethod::Post => Method::POST,
            AnyMethod::Put => Method::PUT,
            AnyMethod::Delete => Method::DELETE,
            AnyMethod::Options => Method::OPTIONS,
            AnyMethod::Raw(b) => return Method::from_bytes(b).ok(),
        })
    }
}

/// A wall clock in unix milliseconds as the proxy's clock gives it (1970 to year ~287000):
/// the clock is not attacker input, but where it sits relative to attacker dates is.
pub fn clock_ms(raw: u64) -> u64 {
    raw % (1 << 53)
}
