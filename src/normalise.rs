//! The request, normalised once before anything is derived from it. Request path:
//! `accept ─► normalise ─► route ─► key ─► cache ─► upstream`.
//!
//! A shared cache is poisoned when the upstream answers a request that differs from the one
//! the key describes: a header the key ignores changes the response (an unkeyed input), or
//! routing, key and upstream each read the path a little differently. So the request is
//! rewritten here, once, and routing, the key, `Vary`, the prefetcher and the upstream all
//! see the same request:
//!
//! - **The path** (RFC 3986 §6.2.2, §5.2.4): unreserved escapes decoded (`%2e` is `.`), other
//!   escapes upper-cased, `//` merged (an option), dot segments removed. Encoded slashes
//!   (`%2F`, `%5C`) are refused by default: an origin that decodes them before routing would
//!   serve another resource than the one routed and keyed (`/public/..%2Faccount`); APIs that
//!   use them in ids keep them with `escaped_slashes = "keep"`. A stray `%` is refused.
//! - **Hop-by-hop fields**: those `Connection` names are removed (RFC 9110 §7.6.1) before the
//!   key or a variant is derived, so `Connection: x-tenant` cannot make the upstream answer
//!   for no tenant while the answer is stored for one.
//! - **Unkeyed overrides** on cacheable requests: `Forwarded`, the `X-Forwarded-*` fields
//!   Augur does not set itself, `X-Original-URL`, `X-Rewrite-URL`, `X-Original-Host` and the
//!   method-override fields change what many frameworks answer; they are dropped unless the
//!   route keys on them.
//! - **The query**: parameters the route leaves out of the key are left out of the upstream
//!   request too, unless the route says `forward_unkeyed_query = true`.
//!
//! Pure: no I/O, no clock; unit-tested below.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderName};

use crate::config::{EscapedSlashes, PathRules, QueryKey};
use crate::key;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    EscapedSlash,
    BadEscape,
}

impl PathError {
    pub fn as_str(self) -> &'static str {
        match self {
            PathError::EscapedSlash => "encoded slash in path (escaped_slashes = \"reject\")",
            PathError::BadEscape => "invalid percent-encoding in path",
        }
    }
}

/// The normalised form of an origin-form `path` (no query). Borrowed when already normal,
/// which is the common case and costs one scan.
pub fn path<'a>(path: &'a str, rules: &PathRules) -> Result<Cow<'a, str>, PathError> {
    if !path.starts_with('/') {
        // `*` (OPTIONS) or an empty path: nothing to normalise.
        return Ok(Cow::Borrowed(path));
    }
    let needs =
        path.contains('%') || path.contains("/.") || (rules.merge_slashes && path.contains("//"));
    if !needs {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path, rules.escaped_slashes)?;
    let merged = if rules.merge_slashes {
        merge_slashes(&decoded)
    } else {
        decoded
    };
    Ok(Cow::Owned(remove_dot_segments(&merged)))
}

/// §6.2.2.1 / §6.2.2.2: unreserved escapes decoded, the rest upper-cased; encoded slashes
/// as `escaped` says.
fn decode(path: &str, escaped: EscapedSlashes) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            // Copied byte for byte: a UTF-8 path stays UTF-8.
            out.push(b);
            i += 1;
            continue;
        }
        let hex = |j: usize| bytes.get(j).and_then(|&h| char::from(h).to_digit(16));
        let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2)) else {
            return Err(PathError::BadEscape);
        };
        let v = (h << 4 | l) as u8;
        match v {
            b'/' | b'\\' => match escaped {
                EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                EscapedSlashes::Decode => out.push(b'/'),
                EscapedSlashes::Keep => push_escape(&mut out, v),
            },
            _ if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => out.push(v),
            _ => push_escape(&mut out, v),
        }
        i += 3;
    }
    // Only whole escapes were replaced, by ASCII: still the UTF-8 it was.
    String::from_utf8(out).map_err(|_| PathError::BadEscape)
}

fn push_escape(out: &mut Vec<u8>, v: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[usize::from(v >> 4)], HEX[usize::from(v & 0xF)]]);
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// RFC 3986 §5.2.4 for an absolute path: `.` segments dropped, `..` drops the segment before
/// it (never above the root); a trailing `.` or `..` leaves a trailing `/`.
fn remove_dot_segments(path: &str) -> String {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." | ".." => {
                if *seg == ".." {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut normal = String::with_capacity(path.len());
    normal.push('/');
    normal.push_str(&out.join("/"));
    normal
}

/// The query the upstream is sent: only the parameters the route keys on, in their original
/// order and spelling. `None` when that is the query as it is.
pub fn keyed_query(query: &str, rule: &QueryKey) -> Option<String> {
    if matches!(rule, QueryKey::All) {
        return None;
    }
    let pieces = query.split('&').filter(|p| !p.is_empty());
    let kept: Vec<&str> = pieces
        .clone()
        .filter(|p| key::keeps_param(p.split_once('=').map_or(*p, |(n, _)| n), rule))
        .collect();
    (kept.len() != pieces.count()).then(|| kept.join("&"))
}

/// The fields a message's `Connection` header names (RFC 9110 §7.6.1): hop-by-hop, for this
/// connection only.
pub fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

/// Remove every field that `Connection` names (except the framing fields hyper has already
/// acted on), so nothing is derived from a field the upstream will not see.
pub fn strip_connection_named(headers: &mut HeaderMap) {
    if !headers.contains_key(header::CONNECTION) {
        return;
    }
    for name in connection_named(headers) {
        if name != header::CONTENT_LENGTH
            && name != header::TRANSFER_ENCODING
            && name != header::HOST
        {
            headers.remove(name);
        }
    }
}

/// Fields that make common frameworks answer for another URL, host, scheme or method than
/// the one keyed. `X-Forwarded-For`, `-Proto` and `-Host` are not here: Augur sets those
/// itself (`upstream::forward_headers`).
const OVERRIDES: [&str; 12] = [
    "forwarded",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Drop the unkeyed override fields, and the route's own `strip` list, from a cacheable
/// request, except those the route keys on (`keyed`). One scan of the header names.
pub fn strip_unkeyed(headers: &mut HeaderMap, keyed: &[HeaderName], strip: &[HeaderName]) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| {
            let name = n.as_str();
            // Every override is `forwarded` or an `x-` field: most request fields (accept,
            // user-agent, host, …) are passed by one prefix check, not twelve compares.
            let candidate = name.starts_with("x-") || name == "forwarded";
            let unkeyed_override = candidate
                && (OVERRIDES.contains(&name)
                    || (name.starts_with("x-forwarded-")
                        && !matches!(
                            name,
                            "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host"
                        )));
            (unkeyed_override || strip.contains(n)) && !keyed.contains(n)
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn norm(p: &str) -> Result<String, PathError> {
        path(p, &PathRules::default()).map(|c| c.into_owned())
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/users/42", "/a/b/", "/a.b/c", "*"] {
            assert!(
                matches!(path(p, &PathRules::default()), Ok(Cow::Borrowed(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn dot_segments_and_their_encodings_are_removed() {
        assert_eq!(norm("/pf/../account/me").unwrap(), "/account/me");
        assert_eq!(norm("/pf/%2e%2e/account/me").unwrap(), "/account/me");
        assert_eq!(norm("/pf/%2E./account/me").unwrap(), "/account/me");
        assert_eq!(norm("/pf/;/../account/me").unwrap(), "/pf/account/me");
        assert_eq!(norm("/a/./b/.").unwrap(), "/a/b/");
        assert_eq!(norm("/a/..").unwrap(), "/");
        assert_eq!(norm("/../../x").unwrap(), "/x");
    }

    #[test]
    fn slashes_merge_unless_told_not_to() {
        assert_eq!(norm("/pf//account/me").unwrap(), "/pf/account/me");
        let keep = PathRules {
            merge_slashes: false,
            ..PathRules::default()
        };
        assert_eq!(path("/a//b", &keep).unwrap(), "/a//b");
    }

    #[test]
    fn encoded_slashes_follow_the_rule() {
        assert_eq!(norm("/pf/..%2faccount/me"), Err(PathError::EscapedSlash));
        assert_eq!(norm("/a%5Cb"), Err(PathError::EscapedSlash));
        let keep = PathRules {
            escaped_slashes: EscapedSlashes::Keep,
            ..PathRules::default()
        };
        assert_eq!(path("/p/group%2fproj", &keep).unwrap(), "/p/group%2Fproj");
        let decode = PathRules {
            escaped_slashes: EscapedSlashes::Decode,
            ..PathRules::default()
        };
        assert_eq!(path("/pf/..%2faccount/me", &decode).unwrap(), "/account/me");
    }

    #[test]
    fn unreserved_escapes_decode_and_others_upper_case() {
        assert_eq!(norm("/users/%61dmin").unwrap(), "/users/admin");
        assert_eq!(norm("/a%7eb%20c").unwrap(), "/a~b%20c");
        assert_eq!(norm("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(norm("/a%4"), Err(PathError::BadEscape));
    }

    #[test]
    fn only_keyed_parameters_go_upstream() {
        let ex = QueryKey::Exclude(vec!["utm_source".into(), "callback".into()]);
        assert_eq!(
            keyed_query("a=1&utm_source=x&b&callback=evil", &ex).as_deref(),
            Some("a=1&b")
        );
        assert_eq!(keyed_query("a=1&b=2", &ex), None);
        let inc = QueryKey::Include(vec!["page".into()]);
        assert_eq!(keyed_query("page=2&x=1", &inc).as_deref(), Some("page=2"));
        assert_eq!(keyed_query("x=1", &inc).as_deref(), Some(""));
        assert_eq!(keyed_query("x=1", &QueryKey::All), None);
    }

    #[test]
    fn connection_named_fields_go_first() {
        let mut h = HeaderMap::new();
        h.insert("x-tenant", HeaderValue::from_static("acme"));
        h.insert("accept-language", HeaderValue::from_static("fr"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-tenant, keep-alive"),
        );
        strip_connection_named(&mut h);
        assert!(!h.contains_key("x-tenant"));
        assert!(h.contains_key("accept-language"));
    }

    #[test]
    fn overrides_are_stripped_unless_keyed() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("forwarded", "host=evil"),
            ("x-original-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("x-forwarded-port", "1"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-api-version", "2"),
            ("x-debug", "1"),
        ] {
            h.insert(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let keyed = [HeaderName::from_static("x-original-url")];
        let strip = [HeaderName::from_static("x-debug")];
        strip_unkeyed(&mut h, &keyed, &strip);
        let mut left: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["x-api-version", "x-forwarded-for", "x-original-url"]);
    }

    /// Path segments as an attacker spells them: dot segments plain and encoded in every case,
    /// encoded slashes, valid and broken escapes, empty segments, non-ASCII.
    fn segment() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("."),
                Just(".."),
                Just("%2e"),
                Just("%2E"),
                Just("%2e%2E"),
                Just(".%2e"),
                Just("%2f"),
                Just("%2F"),
                Just("%5c"),
                Just("%25"),
                Just("%41"),
                Just("%7e"),
                Just("%20"),
                Just("%"),
                Just("%z"),
                Just("/"),
                Just(";"),
                Just("é"),
                Just("a"),
                Just("b"),
            ],
            0..4,
        )
        .prop_map(|v| v.concat())
    }

    fn rules() -> impl Strategy<Value = PathRules> {
        let escaped = prop_oneof![
            Just(EscapedSlashes::Reject),
            Just(EscapedSlashes::Keep),
            Just(EscapedSlashes::Decode),
        ];
        (any::<bool>(), escaped).prop_map(|(merge_slashes, escaped_slashes)| PathRules {
            merge_slashes,
            escaped_slashes,
        })
    }

    proptest! {
        /// Routing, the key and the upstream all see the normalised path, and each may
        /// normalise again (a prefetch, a purge): it must be a fixed point, with no dot
        /// segment left for an origin to resolve differently.
        #[test]
        fn normalised_paths_are_idempotent_and_dot_free(
            segments in proptest::collection::vec(segment(), 0..8),
            rules in rules(),
        ) {
            let raw = format!("/{}", segments.join("/"));
            if let Ok(once) = path(&raw, &rules) {
                prop_assert!(once.starts_with('/'), "{raw:?} ─► {once:?}");
                prop_assert!(
                    !once[1..].split('/').any(|s| s == "." || s == ".."),
                    "{raw:?} ─► {once:?} keeps a dot segment"
                );
                prop_assert!(!once.contains("/./") && !once.contains("/../"));
                if rules.merge_slashes {
                    prop_assert!(!once.contains("//"), "{raw:?} ─► {once:?}");
                }
                let twice = path(&once, &rules);
                prop_assert_eq!(twice.as_deref(), Ok(&*once), "not idempotent on {:?}", raw);
            }
        }

        /// Any string at all: an error or a path, never a panic.
        #[test]
        fn any_path_never_panics(raw in "/[ -~é]{0,40}", rules in rules()) {
            let _ = path(&raw, &rules);
        }
    }
}
