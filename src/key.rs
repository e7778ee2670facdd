//! Deterministic cache keys. Request path: `route ─► key ─► cache`.
//!
//! Once a request has been matched to a route, this module turns the parts of the
//! request that select a representation (method, host, path, the route-filtered query
//! and the route's key headers) into a 128-bit [`CacheKey`]. It is a pure function: no
//! I/O, no clock, no global state, so the same request always yields the same key, on
//! every worker and across restarts.
//!
//! Two competing goals shape the normalisation rules:
//!
//! * **Equivalent URLs should share a key** (better hit rate): `%7e` and `~`, `%2f` and
//!   `%2F`, `?b=2&a=1` and `?a=1&b=2`, `Example.COM:80` and `example.com`, HEAD and GET.
//! * **Distinct resources must never share a key** (serving the wrong body is far worse
//!   than a miss). So only transformations that RFC 3986 §6.2.2 declares
//!   equivalence-preserving are applied to the path: no dot-segment removal, no slash
//!   merging, reserved characters such as `%2F` stay encoded, `+` is not treated as a
//!   space, and `a` and `a=` remain different parameters. When in doubt we keep the
//!   distinction.
//!
//! The key is the first 16 bytes of a BLAKE3 hash over an unambiguous framing (domain tag,
//! every field length-prefixed) so that no two different normalised requests can be
//! confused by concatenation. [`canonical`] renders the same normalised request as a
//! human-readable string for logs and the admin API.
//!
//! This sits on the hot path of every cacheable request, so derivation avoids
//! per-parameter allocation: parameters are borrowed slices of the request URI, sorted in
//! a small inline array, and normalised bytes are streamed into a stack buffer that feeds
//! the hasher.

use std::cmp::Ordering;
use std::fmt;

use http::{HeaderMap, HeaderName, Method};
use percent_encoding::percent_decode_str;

use crate::config::QueryKey;

/// Domain-separation tag: changing the framing or the normalisation rules must change
/// this, so old keys can never collide with keys of a different scheme.
const DOMAIN: &[u8] = b"augur-key-v1\0";

/// Domain-separation tag of secondary (`Vary`) keys: never equal to a primary key's framing.
const VARIANT_DOMAIN: &[u8] = b"augur-variant-v1\0";

/// Lower-case hex digits, used by [`CacheKey::to_hex`] and `Display`.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// A cache key: the first 128 bits of a BLAKE3 hash of the normalised request.
///
/// 128 bits keeps the key small enough to be copied around freely (it is `Copy`) while
/// keeping accidental collisions out of reach for any realistic number of entries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 16]);

impl CacheKey {
    /// Derives the key for a request.
    ///
    /// * `method`: HEAD is keyed as GET, because a HEAD is answered from the stored GET.
    /// * `host`: the request host (any case, may carry `:80` or a trailing dot).
    /// * `path_and_query`: the origin-form request target, e.g. `/a/b?x=1`.
    /// * `query`: the route's query-parameter policy.
    /// * `key_headers`: the route's extra key headers, in config order.
    /// * `headers`: the request headers, from which the key headers are read.
    pub fn derive(
        method: &Method,
        host: &str,
        path_and_query: &str,
        query: &QueryKey,
        key_headers: &[HeaderName],
        headers: &HeaderMap,
    ) -> CacheKey {
        let (path, raw_query) = split_target(path_and_query);
        let mut params = ParamBuf::new();
        collect_params(raw_query, query, &mut params);
        params.sort();

        let mut h = HashSink::new();
        h.write(DOMAIN); // fixed, so needs no length
        h.field(method_str(method).as_bytes());

        let host = trim_host(host);
        h.len_prefix(host.len());
        h.write_lower(host.as_bytes());

        h.len_prefix(pct_len(path));
        pct_pieces(path, |p| h.write(p));

        h.len_prefix(params.len());
        for p in params.iter() {
            h.len_prefix(pct_len(p.name));
            pct_pieces(p.name, |b| h.write(b));
            match p.value {
                None => h.write(&[0]),
                Some(v) => {
                    h.write(&[1]);
                    h.len_prefix(pct_len(v));
                    pct_pieces(v, |b| h.write(b));
                }
            }
        }

        h.headers(key_headers, headers);
        CacheKey(h.finish())
    }

    /// The secondary key of one stored variant (RFC 9111 §4.1): this (primary) key plus the
    /// request's values of the header fields a response's `Vary` names, normalised the way key
    /// headers are (field lines combined, whitespace around list elements dropped). An absent
    /// field and an empty one are different. `names` must already be lower case, sorted and
    /// without duplicates, so that the same `Vary` in any spelling selects the same variant.
    pub fn variant(&self, names: &[HeaderName], headers: &HeaderMap) -> CacheKey {
        let mut h = HashSink::new();
        h.write(VARIANT_DOMAIN);
        h.write(&self.0);
        h.headers(names, headers);
        CacheKey(h.finish())
    }

    /// The key as 32 lower-case hex characters (the form used in logs and the admin API).
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        s
    }

    /// Parses 32 hex characters (either case), as accepted from the admin API.
    /// Anything else (wrong length, non-hex) is `None`.
    pub fn from_hex(s: &str) -> Option<CacheKey> {
        let b = s.as_bytes();
        if b.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
            *o = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
        }
        Some(CacheKey(out))
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The normalised request exactly as hashed by [`CacheKey::derive`], rendered for humans,
/// e.g. `GET example.com /a/b?x=1&y=2`.
///
/// Key headers follow, space-separated, in config order: `name="value"` (value
/// Debug-quoted, so spaces or quotes in it stay unambiguous) when present, bare `name` when
/// absent, e.g. `GET example.com /a accept-encoding="gzip,br" x-tenant`.
///
/// Not on the hot path: it allocates freely.
pub fn canonical(
    method: &Method,
    host: &str,
    path_and_query: &str,
    query: &QueryKey,
    key_headers: &[HeaderName],
    headers: &HeaderMap,
) -> String {
    let (path, raw_query) = split_target(path_and_query);
    let mut params = ParamBuf::new();
    collect_params(raw_query, query, &mut params);
    params.sort();

    let mut out: Vec<u8> = Vec::with_capacity(path_and_query.len() + host.len() + 16);
    out.extend_from_slice(method_str(method).as_bytes());
    out.push(b' ');
    out.extend(trim_host(host).bytes().map(|b| b.to_ascii_lowercase()));
    out.push(b' ');
    pct_pieces(path, |b| out.extend_from_slice(b));
    for (i, p) in params.iter().enumerate() {
        out.push(if i == 0 { b'?' } else { b'&' });
        pct_pieces(p.name, |b| out.extend_from_slice(b));
        if let Some(v) = p.value {
            out.push(b'=');
            pct_pieces(v, |b| out.extend_from_slice(b));
        }
    }
    for name in key_headers {
        out.push(b' ');
        out.extend_from_slice(name.as_str().as_bytes());
        let values = headers.get_all(name);
        if values.iter().next().is_some() {
            let mut joined = Vec::new();
            header_pieces(&values, |b| joined.extend_from_slice(b));
            out.extend_from_slice(format!("={:?}", String::from_utf8_lossy(&joined)).as_bytes());
        }
    }
    // Every piece is either a slice of a `&str` cut at an ASCII byte, or ASCII itself, so
    // this is valid UTF-8; the lossy fallback only exists to avoid a panic path.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

// ---------------------------------------------------------------------------------------
// Request parts
// ---------------------------------------------------------------------------------------

/// HEAD is keyed as GET: the proxy answers a HEAD from the stored GET response, so both
/// must land on the same entry.
fn method_str(method: &Method) -> &str {
    if method == Method::HEAD {
        Method::GET.as_str()
    } else {
        method.as_str()
    }
}

/// Drops the default `:80` port (the proxy listens on plain http, so `host` and `host:80`
/// are the same origin) and one trailing dot (`example.com.` is the same FQDN).
/// Lower-casing is done while writing, to avoid allocating.
fn trim_host(host: &str) -> &str {
    let host = host.strip_suffix(":80").unwrap_or(host);
    host.strip_suffix('.').unwrap_or(host)
}

/// Splits an origin-form target into path and raw query. An empty path means `/`
/// (RFC 9110 §4.2.3); an absent query and an empty one are treated alike, because both
/// yield no parameters.
fn split_target(path_and_query: &str) -> (&str, &str) {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, q),
        None => (path_and_query, ""),
    };
    (if path.is_empty() { "/" } else { path }, query)
}

// ---------------------------------------------------------------------------------------
// Percent-encoding normalisation (RFC 3986 §6.2.2.1 and §6.2.2.2)
// ---------------------------------------------------------------------------------------

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3 unreserved characters: the only ones whose percent-encoded and literal
/// forms are equivalent everywhere in a URI.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// What a `%` normalises to.
enum Escape {
    /// `%XX` of an unreserved character: decoded to that character.
    Decode(u8),
    /// A valid `%XX` of anything else: kept encoded, hex upper-cased.
    Upper([u8; 3]),
    /// Already canonical (`%2F`) or not a valid escape (`%`, `%zz`): kept literally.
    Keep,
}

/// Parses the `%` at `bytes[i]`; `None` if it is not a valid `%XX` escape.
fn escape_value(bytes: &[u8], i: usize) -> Option<(u8, u8, u8)> {
    let (&h, &l) = (bytes.get(i + 1)?, bytes.get(i + 2)?);
    Some(((hex_val(h)? << 4) | hex_val(l)?, h, l))
}

/// Whether `bytes` contains a `%` that does not start a valid escape.
///
/// Such a component does not get unreserved escapes decoded: decoding next to a stray
/// `%` can manufacture a new escape (`%4%31` would become `%41`, i.e. `A`) and so merge
/// two different request targets into one key. Upper-casing hex digits is still safe, as
/// it never changes how the string splits into escapes. Valid URIs never contain a stray
/// `%`, so this only costs hit rate on malformed requests.
fn has_stray_pct(bytes: &[u8]) -> bool {
    let mut i = 0;
    while let Some(off) = bytes[i..].iter().position(|&b| b == b'%') {
        i += off;
        if escape_value(bytes, i).is_none() {
            return true;
        }
        i += 3;
    }
    false
}

fn escape_at(bytes: &[u8], i: usize, decode: bool) -> Escape {
    let Some((v, h, l)) = escape_value(bytes, i) else {
        return Escape::Keep;
    };
    if decode && is_unreserved(v) {
        Escape::Decode(v)
    } else if h.is_ascii_lowercase() || l.is_ascii_lowercase() {
        Escape::Upper([b'%', h.to_ascii_uppercase(), l.to_ascii_uppercase()])
    } else {
        Escape::Keep
    }
}

/// Streams the percent-normalised form of `s` to `f` as a few contiguous pieces: runs of
/// untouched input are passed through as-is, so input without `%` costs one call.
fn pct_pieces(s: &str, mut f: impl FnMut(&[u8])) {
    let bytes = s.as_bytes();
    let decode = !has_stray_pct(bytes);
    let mut start = 0; // start of the pending untouched run
    let mut i = 0;
    while let Some(off) = bytes[i..].iter().position(|&b| b == b'%') {
        i += off;
        match escape_at(bytes, i, decode) {
            Escape::Decode(c) => {
                f(&bytes[start..i]);
                f(&[c]);
                i += 3;
                start = i;
            }
            Escape::Upper(esc) => {
                f(&bytes[start..i]);
                f(&esc);
                i += 3;
                start = i;
            }
            Escape::Keep => i += 1,
        }
    }
    f(&bytes[start..]);
}

/// Length of the percent-normalised form of `s` (needed up front for length-prefixing).
fn pct_len(s: &str) -> usize {
    if !s.as_bytes().contains(&b'%') {
        return s.len();
    }
    let mut n = 0;
    pct_pieces(s, |b| n += b.len());
    n
}

/// Byte iterator over the percent-normalised form of `s`; used to sort parameters by
/// their normalised form without materialising it.
struct PctNorm<'a> {
    bytes: &'a [u8],
    i: usize,
    /// Whether unreserved escapes are decoded (see [`has_stray_pct`]).
    decode: bool,
    /// Pending upper-cased hex digits of an escape whose `%` was already yielded.
    pending: [u8; 2],
    npending: usize,
}

impl<'a> PctNorm<'a> {
    fn new(s: &'a str) -> Self {
        let bytes = s.as_bytes();
        PctNorm {
            bytes,
            i: 0,
            decode: !has_stray_pct(bytes),
            pending: [0; 2],
            npending: 0,
        }
    }
}

impl Iterator for PctNorm<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        if self.npending > 0 {
            let b = self.pending[2 - self.npending];
            self.npending -= 1;
            return Some(b);
        }
        let b = *self.bytes.get(self.i)?;
        if b != b'%' {
            self.i += 1;
            return Some(b);
        }
        match escape_at(self.bytes, self.i, self.decode) {
            Escape::Decode(c) => {
                self.i += 3;
                Some(c)
            }
            Escape::Upper([_, h, l]) => {
                self.i += 3;
                self.pending = [h, l];
                self.npending = 2;
                Some(b'%')
            }
            Escape::Keep => {
                self.i += 1;
                Some(b'%')
            }
        }
    }
}

/// Orders two strings by their percent-normalised forms.
fn cmp_norm(a: &str, b: &str) -> Ordering {
    if a.as_bytes().contains(&b'%') || b.as_bytes().contains(&b'%') {
        PctNorm::new(a).cmp(PctNorm::new(b))
    } else {
        a.as_bytes().cmp(b.as_bytes())
    }
}

/// Whether two parameter names are equal once fully percent-decoded, so that a config
/// entry `utm_source` also matches `utm%5Fsource` (or `utm%5fsource`) in a request.
fn decoded_eq(a: &str, b: &str) -> bool {
    if a.as_bytes().contains(&b'%') || b.as_bytes().contains(&b'%') {
        percent_decode_str(a).eq(percent_decode_str(b))
    } else {
        a == b
    }
}

// ---------------------------------------------------------------------------------------
// Query parameters
// ---------------------------------------------------------------------------------------

/// One query parameter, borrowed from the request target. `value: None` is `?a`,
/// `Some("")` is `?a=`: some origins distinguish them, so the key does too.
#[derive(Clone, Copy, Default)]
struct Param<'a> {
    name: &'a str,
    value: Option<&'a str>,
}

impl Param<'_> {
    /// Sort order: normalised name, then normalised value (absent before present), so
    /// parameter order in the URL never matters while repeated parameters are kept.
    fn cmp_norm(&self, other: &Self) -> Ordering {
        cmp_norm(self.name, other.name).then_with(|| match (self.value, other.value) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(a), Some(b)) => cmp_norm(a, b),
        })
    }
}

/// Typical API URLs carry a handful of parameters; that many live on the stack.
const INLINE_PARAMS: usize = 16;

/// A parameter list that only allocates past [`INLINE_PARAMS`] entries (then everything
/// moves to `heap`; `Vec::new` itself does not allocate).
struct ParamBuf<'a> {
    inline: [Param<'a>; INLINE_PARAMS],
    len: usize,
    heap: Vec<Param<'a>>,
}

impl<'a> ParamBuf<'a> {
    fn new() -> Self {
        ParamBuf {
            inline: [Param::default(); INLINE_PARAMS],
            len: 0,
            heap: Vec::new(),
        }
    }

    fn push(&mut self, p: Param<'a>) {
        if !self.heap.is_empty() {
            self.heap.push(p);
        } else if let Some(slot) = self.inline.get_mut(self.len) {
            *slot = p;
            self.len += 1;
        } else {
            self.heap.reserve(INLINE_PARAMS * 2);
            self.heap.extend_from_slice(&self.inline);
            self.heap.push(p);
        }
    }

    fn as_slice(&self) -> &[Param<'a>] {
        if self.heap.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.heap
        }
    }

    /// Sorts by normalised (name, value). An unstable sort is fine (and allocation-free):
    /// parameters that compare equal have identical normalised bytes, so their relative
    /// order cannot change the output.
    fn sort(&mut self) {
        let slice = if self.heap.is_empty() {
            &mut self.inline[..self.len]
        } else {
            &mut self.heap[..]
        };
        slice.sort_unstable_by(Param::cmp_norm);
    }

    fn iter(&self) -> std::slice::Iter<'_, Param<'a>> {
        self.as_slice().iter()
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }
}

/// Splits the raw query into parameters and applies the route's policy. Empty pieces
/// (`a=1&&b=2`, trailing `&`) carry no information and are dropped.
fn collect_params<'a>(raw: &'a str, policy: &QueryKey, out: &mut ParamBuf<'a>) {
    for piece in raw.split('&').filter(|p| !p.is_empty()) {
        let param = match piece.split_once('=') {
            Some((name, value)) => Param {
                name,
                value: Some(value),
            },
            None => Param {
                name: piece,
                value: None,
            },
        };
        if keeps_param(param.name, policy) {
            out.push(param);
        }
    }
}

/// Does the route's query rule keep the parameter named `name` (raw, as in the URI)? The
/// one rule for the key and for what goes upstream (`normalise::keyed_query`).
pub(crate) fn keeps_param(name: &str, policy: &QueryKey) -> bool {
    match policy {
        QueryKey::All => true,
        QueryKey::Include(names) => names.iter().any(|n| decoded_eq(name, n)),
        QueryKey::Exclude(names) => !names.iter().any(|n| decoded_eq(name, n)),
    }
}

// ---------------------------------------------------------------------------------------
// Key headers
// ---------------------------------------------------------------------------------------

/// Streams the normalised value of a key header: all field lines joined by `,`, with the
/// whitespace around each comma-separated element trimmed. This makes `a, b`, `a,b` and
/// two lines `a` / `b` equivalent (RFC 9110 §5.3). Empty elements are kept: not every
/// header is a list, and keeping a distinction only costs a miss.
fn header_pieces(values: &http::header::GetAll<'_, http::HeaderValue>, mut f: impl FnMut(&[u8])) {
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            f(b",");
        }
        for (j, element) in value.as_bytes().split(|&b| b == b',').enumerate() {
            if j > 0 {
                f(b",");
            }
            f(element.trim_ascii());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Hashing
// ---------------------------------------------------------------------------------------

/// Collects the framed bytes in a stack buffer and hashes them in one shot.
///
/// The key is built from many tiny pieces; one `Hasher::update` per piece would dominate
/// the cost, and for the common case (< 512 bytes of key material) the one-shot
/// `blake3::hash` skips the incremental hasher entirely. Longer input spills into a boxed
/// incremental hasher, producing the same digest.
struct HashSink {
    buf: [u8; 512],
    len: usize,
    spill: Option<Box<blake3::Hasher>>,
}

impl HashSink {
    fn new() -> Self {
        HashSink {
            buf: [0; 512],
            len: 0,
            spill: None,
        }
    }

    fn flush(&mut self) {
        let hasher = self
            .spill
            .get_or_insert_with(|| Box::new(blake3::Hasher::new()));
        hasher.update(&self.buf[..self.len]);
        self.len = 0;
    }

    #[inline]
    fn write(&mut self, b: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.len..self.len + b.len()) {
            dst.copy_from_slice(b);
            self.len += b.len();
            return;
        }
        self.flush();
        match self.buf.get_mut(..b.len()) {
            Some(dst) => {
                dst.copy_from_slice(b);
                self.len = b.len();
            }
            None => {
                let hasher = self
                    .spill
                    .get_or_insert_with(|| Box::new(blake3::Hasher::new()));
                hasher.update(b);
            }
        }
    }

    fn write_lower(&mut self, b: &[u8]) {
        for chunk in b.chunks(64) {
            let mut tmp = [0u8; 64];
            let tmp = &mut tmp[..chunk.len()];
            tmp.copy_from_slice(chunk);
            tmp.make_ascii_lowercase();
            self.write(tmp);
        }
    }

    /// Every variable-length field (and every count) is preceded by its length, so field
    /// boundaries are unambiguous (`ab`+`c` never hashes like `a`+`bc`). LEB128 rather
    /// than fixed 8 bytes: typical keys then fit one 64-byte BLAKE3 block, which halves
    /// the hashing cost; the encoding is still prefix-free.
    #[inline]
    fn len_prefix(&mut self, n: usize) {
        let mut n = n as u64;
        let mut tmp = [0u8; 10];
        let mut i = 0;
        while n >= 0x80 {
            tmp[i] = (n as u8) | 0x80;
            n >>= 7;
            i += 1;
        }
        tmp[i] = n as u8;
        self.write(&tmp[..=i]);
    }

    #[inline]
    fn field(&mut self, b: &[u8]) {
        self.len_prefix(b.len());
        self.write(b);
    }

    /// The named request header fields, in the given order: each name, then absent (0) or
    /// present (1) and its normalised value ([`header_pieces`]), length-prefixed.
    fn headers(&mut self, names: &[HeaderName], headers: &HeaderMap) {
        self.len_prefix(names.len());
        for name in names {
            self.field(name.as_str().as_bytes());
            let values = headers.get_all(name);
            if values.iter().next().is_none() {
                self.write(&[0]);
            } else {
                self.write(&[1]);
                let mut len = 0;
                header_pieces(&values, |b| len += b.len());
                self.len_prefix(len);
                header_pieces(&values, |b| self.write(b));
            }
        }
    }

    fn finish(&mut self) -> [u8; 16] {
        let hash = match self.spill.as_mut() {
            None => blake3::hash(&self.buf[..self.len]),
            Some(hasher) => {
                hasher.update(&self.buf[..self.len]);
                hasher.finalize()
            }
        };
        let mut out = [0u8; 16];
        out.copy_from_slice(&hash.as_bytes()[..16]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn key(pq: &str) -> CacheKey {
        CacheKey::derive(
            &Method::GET,
            "example.com",
            pq,
            &QueryKey::All,
            &[],
            &HeaderMap::new(),
        )
    }

    fn canon(pq: &str) -> String {
        canonical(
            &Method::GET,
            "example.com",
            pq,
            &QueryKey::All,
            &[],
            &HeaderMap::new(),
        )
    }

    fn key_q(pq: &str, q: &QueryKey) -> CacheKey {
        CacheKey::derive(&Method::GET, "example.com", pq, q, &[], &HeaderMap::new())
    }

    fn key_host(host: &str) -> CacheKey {
        CacheKey::derive(
            &Method::GET,
            host,
            "/",
            &QueryKey::All,
            &[],
            &HeaderMap::new(),
        )
    }

    fn key_m(m: Method) -> CacheKey {
        CacheKey::derive(
            &m,
            "example.com",
            "/",
            &QueryKey::All,
            &[],
            &HeaderMap::new(),
        )
    }

    fn key_h(names: &[&'static str], hdrs: &[(&'static str, &'static str)]) -> CacheKey {
        let names: Vec<HeaderName> = names.iter().map(|n| HeaderName::from_static(n)).collect();
        let mut map = HeaderMap::new();
        for (n, v) in hdrs {
            map.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        CacheKey::derive(
            &Method::GET,
            "example.com",
            "/",
            &QueryKey::All,
            &names,
            &map,
        )
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn canonical_example() {
        assert_eq!(canon("/a/b?y=2&x=1"), "GET example.com /a/b?x=1&y=2");
    }

    #[test]
    fn unreserved_escapes_decoded() {
        assert_eq!(key("/x?a=%41"), key("/x?a=A"));
        assert_eq!(key("/%7e"), key("/~"));
        assert_eq!(key("/%7E%2d%2E%5f%30"), key("/~-._0"));
        assert_eq!(canon("/%7e%61?%61=%62"), "GET example.com /~a?a=b");
    }

    #[test]
    fn reserved_escapes_kept() {
        assert_ne!(key("/a%2fb"), key("/a/b"));
        assert_eq!(key("/a%2fb"), key("/a%2Fb"));
        assert_ne!(key("/x?a=%26"), key("/x?a=&"));
        assert_ne!(key("/x?a%3Db=1"), key("/x?a=b=1"));
        assert_eq!(canon("/a%2fb%c3%a9"), "GET example.com /a%2Fb%C3%A9");
    }

    #[test]
    fn hex_case_normalised() {
        assert_eq!(key("/%e2%82%ac"), key("/%E2%82%AC"));
        assert_eq!(key("/x?q=%2a"), key("/x?q=%2A"));
        assert_eq!(key("/x?q=%aB"), key("/x?q=%Ab"));
    }

    #[test]
    fn invalid_escapes_kept_literally() {
        assert_eq!(canon("/a%zz%4"), "GET example.com /a%zz%4");
        assert_eq!(canon("/%"), "GET example.com /%");
        assert_ne!(key("/a%zz"), key("/a%ZZ"));
        // Next to a stray '%', escapes are only upper-cased, never decoded, so decoding
        // cannot manufacture a new escape and merge distinct targets.
        assert_eq!(canon("/%%41%2f"), "GET example.com /%%41%2F");
        assert_ne!(key("/%4%31"), key("/%41"));
        assert_ne!(key("/x?q=%%341"), key("/x?q=%A"));
        // ...but only within that component.
        assert_eq!(canon("/%zz?a=%41&%=%41"), "GET example.com /%zz?%=A&a=A");
        assert_eq!(canon("/%41?b=%%41&a=%41"), "GET example.com /A?a=A&b=%%41");
    }

    #[test]
    fn path_not_otherwise_rewritten() {
        assert_ne!(key("/a//b"), key("/a/b"));
        assert_ne!(key("/a/./b"), key("/a/b"));
        assert_ne!(key("/a/../b"), key("/b"));
        assert_ne!(key("/A"), key("/a"));
        assert_ne!(key("/a/"), key("/a"));
    }

    #[test]
    fn empty_path_is_slash() {
        assert_eq!(key(""), key("/"));
        assert_eq!(key("?a=1"), key("/?a=1"));
    }

    #[test]
    fn plus_is_not_space() {
        assert_ne!(key("/x?q=a+b"), key("/x?q=a%20b"));
        assert_ne!(key("/x?q=a+b"), key("/x?q=a b"));
    }

    #[test]
    fn params_sorted() {
        assert_eq!(key("/x?b=2&a=1&c=3"), key("/x?a=1&b=2&c=3"));
        assert_eq!(key("/x?b=2&%61=1"), key("/x?a=1&b=2"));
        assert_ne!(key("/x?a=2&b=1"), key("/x?a=1&b=2"));
    }

    #[test]
    fn repeated_params_kept() {
        assert_eq!(key("/x?a=1&a=2"), key("/x?a=2&a=1"));
        assert_ne!(key("/x?a=1&a=2"), key("/x?a=1"));
        assert_ne!(key("/x?a=1&a=1"), key("/x?a=1"));
    }

    #[test]
    fn absent_and_empty_value_differ() {
        assert_ne!(key("/x?a"), key("/x?a="));
        assert_eq!(canon("/x?a=&a"), "GET example.com /x?a&a=");
        assert_eq!(canon("/x?a==b"), "GET example.com /x?a==b");
    }

    #[test]
    fn empty_pieces_dropped() {
        assert_eq!(key("/x?a=1&&b=2&"), key("/x?a=1&b=2"));
        assert_eq!(key("/x?&&"), key("/x"));
        assert_eq!(key("/x?"), key("/x"));
    }

    #[test]
    fn query_and_path_are_separate_fields() {
        assert_ne!(key("/x?a"), key("/x%3Fa"));
        assert_ne!(key("/x?"), key("/x%3F"));
    }

    #[test]
    fn include_filter() {
        let inc = QueryKey::Include(names(&["id", "page"]));
        assert_eq!(
            key_q("/x?id=1&utm_source=x&page=2", &inc),
            key_q("/x?page=2&id=1", &inc)
        );
        assert_ne!(key_q("/x?id=1", &inc), key_q("/x?id=2", &inc));
        assert_eq!(key_q("/x?%69d=1", &inc), key_q("/x?id=1", &inc));
        assert_eq!(key_q("/x?foo=1", &inc), key_q("/x", &inc));
        let none = QueryKey::Include(vec![]);
        assert_eq!(key_q("/x?a=1&b=2", &none), key_q("/x", &none));
    }

    #[test]
    fn exclude_filter() {
        let exc = QueryKey::Exclude(names(&["utm_source", "fbclid"]));
        assert_eq!(key_q("/x?a=1&utm_source=x", &exc), key_q("/x?a=1", &exc));
        assert_eq!(key_q("/x?a=1&utm%5Fsource=x", &exc), key_q("/x?a=1", &exc));
        assert_eq!(
            key_q("/x?a=1&utm%5fsource=x&fbclid=9", &exc),
            key_q("/x?a=1", &exc)
        );
        assert_ne!(key_q("/x?a=1&utm_sourcex=x", &exc), key_q("/x?a=1", &exc));
        assert_ne!(key_q("/x?a=1&UTM_SOURCE=x", &exc), key_q("/x?a=1", &exc));
        // A config entry is compared decoded too.
        let exc2 = QueryKey::Exclude(names(&["utm%5Fsource"]));
        assert_eq!(key_q("/x?utm_source=1", &exc2), key_q("/x", &exc2));
    }

    #[test]
    fn query_mode_all_keeps_everything() {
        assert_ne!(key("/x?utm_source=x"), key("/x"));
    }

    #[test]
    fn host_normalised() {
        assert_eq!(key_host("Example.COM"), key_host("example.com"));
        assert_eq!(key_host("example.com:80"), key_host("example.com"));
        assert_eq!(key_host("example.com."), key_host("example.com"));
        assert_eq!(key_host("EXAMPLE.com.:80"), key_host("example.com"));
        assert_eq!(key_host("[::1]:80"), key_host("[::1]"));
        assert_ne!(key_host("example.com:8080"), key_host("example.com"));
        assert_ne!(key_host("example.com:443"), key_host("example.com"));
        assert_ne!(key_host("example.org"), key_host("example.com"));
        assert_eq!(
            canonical(
                &Method::GET,
                "API.Example.com:80",
                "/",
                &QueryKey::All,
                &[],
                &HeaderMap::new()
            ),
            "GET api.example.com /"
        );
    }

    #[test]
    fn host_and_path_framed() {
        let a = CacheKey::derive(
            &Method::GET,
            "a.b",
            "/c",
            &QueryKey::All,
            &[],
            &HeaderMap::new(),
        );
        let b = CacheKey::derive(
            &Method::GET,
            "a",
            ".b/c",
            &QueryKey::All,
            &[],
            &HeaderMap::new(),
        );
        assert_ne!(a, b);
    }

    #[test]
    fn head_is_get() {
        assert_eq!(key_m(Method::HEAD), key_m(Method::GET));
        assert_ne!(key_m(Method::POST), key_m(Method::GET));
        assert_ne!(key_m(Method::OPTIONS), key_m(Method::GET));
        assert_eq!(
            canonical(
                &Method::HEAD,
                "h",
                "/",
                &QueryKey::All,
                &[],
                &HeaderMap::new()
            ),
            "GET h /"
        );
    }

    #[test]
    fn key_headers() {
        let n = &["accept-encoding"];
        // Absent, empty and present all differ.
        assert_ne!(key_h(n, &[]), key_h(n, &[("accept-encoding", "")]));
        assert_ne!(
            key_h(n, &[("accept-encoding", "")]),
            key_h(n, &[("accept-encoding", "gzip")])
        );
        assert_ne!(
            key_h(n, &[("accept-encoding", "gzip")]),
            key_h(n, &[("accept-encoding", "br")])
        );
        // Whitespace around commas, and multiple field lines.
        assert_eq!(
            key_h(n, &[("accept-encoding", "gzip ,  br")]),
            key_h(n, &[("accept-encoding", "gzip,br")])
        );
        assert_eq!(
            key_h(
                n,
                &[("accept-encoding", "gzip"), ("accept-encoding", " br")]
            ),
            key_h(n, &[("accept-encoding", "gzip, br")])
        );
        // Order of values matters (it can matter to the origin).
        assert_ne!(
            key_h(n, &[("accept-encoding", "br,gzip")]),
            key_h(n, &[("accept-encoding", "gzip,br")])
        );
        // Inner whitespace of an element is kept.
        assert_ne!(
            key_h(n, &[("accept-encoding", "a b")]),
            key_h(n, &[("accept-encoding", "ab")])
        );
        // Headers not configured are ignored.
        assert_eq!(key_h(n, &[("x-other", "1")]), key_h(n, &[]));
        // Configuring a key header changes the key even when absent.
        assert_ne!(key_h(n, &[]), key_h(&[], &[]));
    }

    #[test]
    fn variants_are_selected_by_normalised_header_values() {
        let primary = key("/v");
        let names = [HeaderName::from_static("accept-language")];
        let with = |lines: &[&str]| {
            let mut h = HeaderMap::new();
            for l in lines {
                h.append("accept-language", HeaderValue::from_str(l).unwrap());
            }
            primary.variant(&names, &h)
        };
        assert_ne!(with(&["en"]), primary);
        assert_ne!(with(&["en"]), with(&["fr"]));
        assert_ne!(with(&[]), with(&[""]), "absent and empty are different");
        assert_eq!(with(&["en, fr"]), with(&["en", "fr"]));
        assert_eq!(with(&["en ,fr"]), with(&["en,fr"]));
        assert_ne!(with(&["en, fr"]), with(&["fr, en"]));
        assert_ne!(
            with(&["en"]),
            key("/w").variant(&names, &{
                let mut h = HeaderMap::new();
                h.insert("accept-language", HeaderValue::from_static("en"));
                h
            })
        );
    }

    #[test]
    fn key_headers_are_positional() {
        let both = &["x-a", "x-b"];
        assert_ne!(key_h(both, &[("x-a", "1")]), key_h(both, &[("x-b", "1")]));
        assert_ne!(
            key_h(both, &[("x-a", "1")]),
            key_h(&["x-b", "x-a"], &[("x-a", "1")])
        );
        assert_ne!(
            key_h(both, &[("x-a", "1,2")]),
            key_h(both, &[("x-a", "1"), ("x-b", "2")])
        );
    }

    #[test]
    fn canonical_headers() {
        let names = [
            HeaderName::from_static("accept"),
            HeaderName::from_static("x-tenant"),
        ];
        let mut map = HeaderMap::new();
        map.append(
            "accept",
            HeaderValue::from_static("text/html , application/json"),
        );
        map.append("accept", HeaderValue::from_static("*/*"));
        let s = canonical(&Method::GET, "h", "/", &QueryKey::All, &names, &map);
        assert_eq!(
            s,
            r#"GET h / accept="text/html,application/json,*/*" x-tenant"#
        );
        map.append("x-tenant", HeaderValue::from_static(""));
        let s = canonical(&Method::GET, "h", "/", &QueryKey::All, &names, &map);
        assert_eq!(
            s,
            r#"GET h / accept="text/html,application/json,*/*" x-tenant="""#
        );
    }

    #[test]
    fn many_params_spill_to_heap() {
        let fwd: Vec<String> = (0..40).map(|i| format!("p{i}={i}")).collect();
        let rev: Vec<String> = fwd.iter().rev().cloned().collect();
        let a = key(&format!("/x?{}", fwd.join("&")));
        let b = key(&format!("/x?{}", rev.join("&")));
        assert_eq!(a, b);
        assert_ne!(a, key(&format!("/x?{}", fwd[..39].join("&"))));
    }

    #[test]
    fn hex_round_trip() {
        let k = key("/a");
        let hex = k.to_hex();
        assert_eq!(hex.len(), 32);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(format!("{k}"), hex);
        assert_eq!(format!("{k:?}"), hex);
        assert_eq!(CacheKey::from_hex(&hex), Some(k));
        assert_eq!(CacheKey::from_hex(&hex.to_ascii_uppercase()), Some(k));
        assert_eq!(CacheKey::from_hex(&hex[..31]), None);
        assert_eq!(CacheKey::from_hex(&format!("{hex}0")), None);
        assert_eq!(CacheKey::from_hex(&format!("g{}", &hex[1..])), None);
        assert_eq!(CacheKey::from_hex("+0000000000000000000000000000000"), None);
        assert_eq!(CacheKey([0xab; 16]).to_hex(), "ab".repeat(16));
    }

    #[test]
    fn key_is_stable() {
        // Pins the scheme: if this changes, bump DOMAIN (stored keys would be orphaned).
        assert_eq!(
            CacheKey::derive(
                &Method::GET,
                "example.com",
                "/a?b=1",
                &QueryKey::All,
                &[],
                &HeaderMap::new()
            ),
            key("/a?b=1")
        );
        assert_eq!(key("/a?b=1").to_hex(), key("/a?b=%31").to_hex());
    }

    // ---- property tests -------------------------------------------------------------

    /// Raw query components: unreserved, a few sub-delims, `+`, and valid, invalid or
    /// mixed-case escapes, so normalisation is exercised.
    fn component() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                "[a-zA-Z0-9._~+!$'()*,;:@/-]",
                Just("%41".to_string()),
                Just("%61".to_string()),
                Just("%7e".to_string()),
                Just("%2f".to_string()),
                Just("%2F".to_string()),
                Just("%3d".to_string()),
                Just("%26".to_string()),
                Just("%zz".to_string()),
                Just("%".to_string()),
                "%[0-9a-fA-F]{2}",
            ],
            0..6,
        )
        .prop_map(|v| v.concat())
    }

    fn param() -> impl Strategy<Value = (String, Option<String>)> {
        (component(), proptest::option::of(component()))
    }

    fn render(ps: &[(String, Option<String>)]) -> String {
        let pieces: Vec<String> = ps
            .iter()
            .map(|(n, v)| match v {
                Some(v) => format!("{n}={v}"),
                None => n.clone(),
            })
            .collect();
        format!("/p?{}", pieces.join("&"))
    }

    /// Fully decodes a rendered component for the reference model.
    fn decode(s: &str) -> Vec<u8> {
        percent_decode_str(s).collect()
    }

    /// A decoded component over an alphabet mixing unreserved characters, sub-delims
    /// that must stay literal, and characters that must be escaped (`%`, `&`, `=`, space,
    /// non-ASCII); short, so that collisions between `a` and `b` actually happen.
    fn decoded_component() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            proptest::sample::select(vec![
                'a', 'A', '~', '-', '.', '_', '0', '+', '/', '%', '&', '=', ' ', 'é',
            ]),
            0..4,
        )
        .prop_map(|v| v.into_iter().collect())
    }

    fn decoded_param() -> impl Strategy<Value = (String, Option<String>)> {
        (
            decoded_component(),
            proptest::option::of(decoded_component()),
        )
    }

    /// Encodes decoded params; `flags` (cycled) pick, per character, whether an
    /// unreserved character is escaped and whether hex digits are lower-case.
    fn encode_params(ps: &[(String, Option<String>)], flags: &[(bool, bool)]) -> String {
        let mut k = 0;
        let mut enc = |s: &str| {
            let mut out = String::new();
            for c in s.chars() {
                let (escape, lower) = flags[k % flags.len()];
                k += 1;
                let hex = |b: u8| {
                    if lower {
                        format!("%{b:02x}")
                    } else {
                        format!("%{b:02X}")
                    }
                };
                if c.is_ascii_alphanumeric() || "-._~".contains(c) {
                    if escape {
                        out.push_str(&hex(c as u8))
                    } else {
                        out.push(c)
                    }
                } else if c == '+' || c == '/' {
                    out.push(c);
                } else {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&hex(b));
                    }
                }
            }
            out
        };
        let pieces: Vec<String> = ps
            .iter()
            .map(|(n, v)| match v {
                Some(v) => format!("{}={}", enc(n), enc(v)),
                None => enc(n),
            })
            .collect();
        format!("/p?{}", pieces.join("&"))
    }

    proptest! {
        #[test]
        fn permutation_invariant(
            (ps, perm) in proptest::collection::vec(param(), 0..24)
                .prop_flat_map(|ps| {
                    let n = ps.len();
                    (Just(ps), Just((0..n).collect::<Vec<_>>()).prop_shuffle())
                })
        ) {
            let shuffled: Vec<_> = perm.iter().map(|&i| ps[i].clone()).collect();
            prop_assert_eq!(key(&render(&ps)), key(&render(&shuffled)));
            prop_assert_eq!(canon(&render(&ps)), canon(&render(&shuffled)));
            let exc = QueryKey::Exclude(names(&["a", "A"]));
            prop_assert_eq!(key_q(&render(&ps), &exc), key_q(&render(&shuffled), &exc));
        }

        /// Normalisation applied to random raw components: distinct normalised
        /// (name, value) multisets give distinct canonical strings and keys, equal ones
        /// give equal ones (empty names without value are empty pieces, dropped).
        #[test]
        fn distinct_multisets_distinct_canonical(
            a in proptest::collection::vec(param(), 0..6),
            b in proptest::collection::vec(param(), 0..6),
        ) {
            let model = |ps: &[(String, Option<String>)]| {
                let norm = |s: &str| PctNorm::new(s).collect::<Vec<u8>>();
                let mut m: Vec<(Vec<u8>, Option<Vec<u8>>)> = ps
                    .iter()
                    .filter(|(n, v)| !(n.is_empty() && v.is_none()))
                    .map(|(n, v)| (norm(n), v.as_deref().map(norm)))
                    .collect();
                m.sort();
                m
            };
            let same = model(&a) == model(&b);
            prop_assert_eq!(same, canon(&render(&a)) == canon(&render(&b)));
            prop_assert_eq!(same, key(&render(&a)) == key(&render(&b)));
        }

        /// The same property against an independent model: parameters are generated
        /// *decoded* and then percent-encoded in randomly varying but equivalent ways
        /// (unreserved characters literal or escaped, random hex case). Identity is the
        /// decoded multiset, so this checks both directions without trusting `PctNorm`:
        /// equivalent spellings share a key, different decoded params never do.
        #[test]
        fn decoded_model_same_iff_equal(
            a in proptest::collection::vec(decoded_param(), 0..5),
            b in proptest::collection::vec(decoded_param(), 0..5),
            flags_a in proptest::collection::vec(any::<(bool, bool)>(), 64),
            flags_b in proptest::collection::vec(any::<(bool, bool)>(), 64),
            flags_c in proptest::collection::vec(any::<(bool, bool)>(), 64),
            seed in any::<usize>(),
        ) {
            // Same decoded params, another encoding, rotated order: always equal.
            let mut rotated = a.clone();
            if !rotated.is_empty() {
                let n = rotated.len();
                rotated.rotate_left(seed % n);
            }
            prop_assert_eq!(
                canon(&encode_params(&a, &flags_a)),
                canon(&encode_params(&rotated, &flags_c))
            );
            prop_assert_eq!(
                key(&encode_params(&a, &flags_a)),
                key(&encode_params(&rotated, &flags_c))
            );
            // Different decoded params: equal exactly when the decoded multisets are.
            let model = |ps: &[(String, Option<String>)]| {
                let mut m: Vec<_> =
                    ps.iter().filter(|(n, v)| !(n.is_empty() && v.is_none())).cloned().collect();
                m.sort();
                m
            };
            let same = model(&a) == model(&b);
            let (ra, rb) = (encode_params(&a, &flags_a), encode_params(&b, &flags_b));
            prop_assert_eq!(same, canon(&ra) == canon(&rb), "{} vs {}", ra, rb);
            prop_assert_eq!(same, key(&ra) == key(&rb));
        }

        /// Independent check of normalisation: decoding the normalised form gives the same
        /// bytes as decoding the raw form (normalisation never changes meaning), and the
        /// piece writer agrees with the byte iterator and with `pct_len`.
        #[test]
        fn normalisation_preserves_meaning(s in component()) {
            let mut pieces = Vec::new();
            pct_pieces(&s, |b| pieces.extend_from_slice(b));
            let iter: Vec<u8> = PctNorm::new(&s).collect();
            prop_assert_eq!(&pieces, &iter);
            prop_assert_eq!(pct_len(&s), pieces.len());
            let normalised = String::from_utf8(pieces).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decode(&normalised), decode(&s));
            // Idempotent.
            let twice: Vec<u8> = PctNorm::new(&normalised).collect();
            prop_assert_eq!(twice, normalised.as_bytes().to_vec());
        }
    }
}
