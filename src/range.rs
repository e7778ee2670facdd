//! Single byte-range requests answered from a stored full response (RFC 9110 §14; pure).
//!
//! Sits in `proxy`'s respond step: a `GET` with one `bytes=` range is looked up like any other
//! (the key ignores `Range`), and the stored body is sliced here. Multi-range and non-byte
//! ranges never reach the store (`proxy::is_cacheable_request` passes them through).

use http::header::{self, HeaderMap, HeaderValue};

/// One range as the client wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `first-` or `first-last`
    From { first: u64, last: Option<u64> },
    /// `-suffix`: the last `suffix` bytes.
    Suffix(u64),
}

/// The range of a `Range: bytes=…` value with exactly one range; `None` for anything else
/// (several ranges, other units, syntax errors), which is then not answered from the store.
pub fn parse(value: &HeaderValue) -> Option<ByteRange> {
    let text = value.to_str().ok()?.trim();
    let (unit, spec) = text.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return None;
    }
    let (a, b) = spec.trim().split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, false) => Some(ByteRange::Suffix(num(b)?)),
        (false, true) => Some(ByteRange::From {
            first: num(a)?,
            last: None,
        }),
        (false, false) => {
            let (first, last) = (num(a)?, num(b)?);
            (last >= first).then_some(ByteRange::From {
                first,
                last: Some(last),
            })
        }
        (true, true) => None,
    }
}

/// The inclusive `(first, last)` byte positions of `range` in a body of `len` bytes; `None`
/// when unsatisfiable (416).
pub fn resolve(range: ByteRange, len: u64) -> Option<(u64, u64)> {
    match range {
        ByteRange::From { first, last } if first < len => {
            Some((first, last.map_or(len - 1, |l| l.min(len - 1))))
        }
        ByteRange::Suffix(n) if n > 0 && len > 0 => Some((len - n.min(len), len - 1)),
        _ => None,
    }
}

/// `If-Range` (RFC 9110 §13.1.5): the range applies only when the validator matches the stored
/// representation: a strong `ETag` match, or a `Last-Modified` equal to the date given.
pub fn if_range_holds(stored: &HeaderMap, req: &HeaderMap) -> bool {
    let Some(cond) = req.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let cond = cond.trim();
    if cond.starts_with('"') {
        return stored
            .get(header::ETAG)
            .and_then(|e| e.to_str().ok())
            .is_some_and(|e| e.trim() == cond);
    }
    if cond.starts_with("W/") {
        return false;
    }
    stored
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|lm| lm.trim() == cond)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &'static str) -> Option<ByteRange> {
        parse(&HeaderValue::from_static(s))
    }

    #[test]
    fn parses_single_byte_ranges_only() {
        assert_eq!(
            p("bytes=0-99"),
            Some(ByteRange::From {
                first: 0,
                last: Some(99)
            })
        );
        assert_eq!(
            p("Bytes = 5-"),
            Some(ByteRange::From {
                first: 5,
                last: None
            })
        );
        assert_eq!(p("bytes=-10"), Some(ByteRange::Suffix(10)));
        for bad in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=5-1",
            "bytes=-",
            "bytes=a-b",
            "0-1",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn resolves_against_the_length() {
        let from = |first, last| ByteRange::From { first, last };
        assert_eq!(resolve(from(0, Some(9)), 100), Some((0, 9)));
        assert_eq!(resolve(from(90, Some(200)), 100), Some((90, 99)));
        assert_eq!(resolve(from(100, None), 100), None);
        assert_eq!(resolve(ByteRange::Suffix(10), 100), Some((90, 99)));
        assert_eq!(resolve(ByteRange::Suffix(500), 100), Some((0, 99)));
        assert_eq!(resolve(ByteRange::Suffix(0), 100), None);
        assert_eq!(resolve(from(0, None), 0), None);
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let mut stored = HeaderMap::new();
        stored.insert(header::ETAG, HeaderValue::from_static("\"a\""));
        let req = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_RANGE, HeaderValue::from_static(v));
            h
        };
        assert!(if_range_holds(&stored, &HeaderMap::new()));
        assert!(if_range_holds(&stored, &req("\"a\"")));
        assert!(!if_range_holds(&stored, &req("\"b\"")));
        assert!(!if_range_holds(&stored, &req("W/\"a\"")));
    }

    /// A number as a client may write it: small, near the body length, or past `u64`.
    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u64..300).prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            Just("18446744073709551616".to_string()),
            Just("007".to_string()),
            Just(String::new()),
        ]
    }

    proptest! {
        /// Well-formed and nearly well-formed `bytes=` values against bodies of any length
        /// (the random-ASCII case below seldom spells `bytes=`): a range that parses is the
        /// one written, and resolves inside the body or not at all.
        #[test]
        fn structured_ranges_resolve_inside_the_body(
            unit in prop_oneof![Just("bytes"), Just("BYTES"), Just(" Bytes "), Just("items")],
            first in number(),
            last in number(),
            ws in prop_oneof![Just(""), Just(" "), Just("\t")],
            more in any::<bool>(),
            len in prop_oneof![0u64..300, any::<u64>()],
        ) {
            let tail = if more { ",0-1" } else { "" };
            let text = format!("{unit}={ws}{first}{ws}-{ws}{last}{tail}");
            let Ok(v) = HeaderValue::from_str(&text) else { return Ok(()) };
            let Some(r) = parse(&v) else { return Ok(()) };
            prop_assert!(!more && unit.trim().eq_ignore_ascii_case("bytes"), "{text:?}");
            match r {
                ByteRange::From { first: f, last: l } => {
                    prop_assert_eq!(Ok(f), first.parse::<u64>());
                    prop_assert_eq!(l, (!last.is_empty()).then(|| last.parse::<u64>().ok()).flatten());
                }
                ByteRange::Suffix(n) => {
                    prop_assert!(first.is_empty());
                    prop_assert_eq!(Ok(n), last.parse::<u64>());
                }
            }
            if let Some((a, b)) = resolve(r, len) {
                prop_assert!(a <= b && b < len, "{r:?} in {len}: {a}-{b}");
            }
        }

        #[test]
        fn never_panics_and_stays_in_bounds(v in "[ -~]{0,30}", len in 0u64..10_000) {
            if let Ok(h) = HeaderValue::from_str(&v) {
                if let Some(r) = parse(&h) {
                    if let Some((a, b)) = resolve(r, len) {
                        prop_assert!(a <= b && b < len);
                    }
                }
            }
        }
    }
}
