//! `Range` and `If-Range` as a client writes them, against stored bodies of any length:
//! `range::parse` accepts only one well-formed byte range, and `range::resolve` only ever
//! hands the respond step a slice inside the body (a 206 is cut from it without checks).
#![no_main]

use arbitrary::Arbitrary;
use augur::range::{self, ByteRange};
use augur_fuzz::{headers, Field};
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Case {
    value: Vec<u8>,
    len: u64,
    small_len: u16,
    stored: Vec<Field>,
    req: Vec<Field>,
}

fn check(r: ByteRange, len: u64) {
    if let Some((first, last)) = range::resolve(r, len) {
        assert!(
            first <= last && last < len,
            "{r:?} in {len}: {first}-{last}"
        );
        match r {
            ByteRange::From { first: f, last: l } => {
                assert_eq!(first, f);
                assert!(l.is_none_or(|l| last <= l));
            }
            ByteRange::Suffix(n) => assert!(last - first < n),
        }
    }
}

fuzz_target!(|c: Case| {
    if let Ok(v) = HeaderValue::from_bytes(&c.value) {
        if let Some(r) = range::parse(&v) {
            // A multi-range or another unit never comes back as one range.
            let text = v.to_str().unwrap_or_default();
            assert!(!text.contains(','), "{text:?}");
            check(r, c.len);
            check(r, u64::from(c.small_len));
        }
    }
    let _ = range::if_range_holds(&headers(&c.stored), &headers(&c.req));
});
