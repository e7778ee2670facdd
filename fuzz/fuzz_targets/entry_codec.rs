//! The L2 value codec: whatever Redis hands back is untrusted (anyone who can write to Redis
//! wrote it), so decode must never panic and never allocate from a length it has not bounded.
//!
//! Three shapes: raw bytes (the MAC check comes first), a payload sealed with the secret
//! (hostile fields behind a valid MAC: a writer holding the key, or an instance without one),
//! and valid fields sealed then opened, which must round-trip exactly and only under the name
//! and secret they were sealed with.
#![no_main]

use arbitrary::Arbitrary;
use augur::cache::entry::{
    CodecError, Compression, Entry, Flags, Limits, Seal, StoredBody, MAX_HEADERS,
};
use augur::cache::redis::decode_usable;
use augur_fuzz::{clock_ms, headers, Field};
use bytes::Bytes;
use http::StatusCode;
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"a fuzzing secret of 32 bytes....";
const NAME: &str = "augur:0123456789abcdef0123456789abcdef";
/// `[redis] max_entry_size` and `[cache] max_entry_size` at their defaults.
const LIMITS: Limits = Limits {
    max_value: 1 << 20,
    max_body: 8 << 20,
};
/// The fixed part a decoder reads before the header count: magic and version 3.
const HEAD: &[u8] = b"AUGE\x03";

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>),
    Sealed { with_head: bool, payload: Vec<u8> },
    Fields(Fields),
}

#[derive(Arbitrary, Debug)]
struct Fields {
    status: u16,
    request_time: u64,
    response_time: u64,
    initial_age: u64,
    lifetime: u64,
    flags: u8,
    stale_while_revalidate: u64,
    stale_if_error: u64,
    headers: Vec<Field>,
    body: Vec<u8>,
    level: u8,
    threshold: u16,
    now: u64,
}

fn seal() -> Seal {
    Seal::new(Some(SECRET))
}

/// What every decoded entry must satisfy, whoever wrote it.
fn check_bounds(entry: &Entry, now: u64) {
    assert!(entry.headers.len() <= MAX_HEADERS);
    assert!(entry.body.len() <= LIMITS.max_body);
    if let Ok(body) = entry.body.decoded() {
        assert_eq!(body.len() as u64, entry.body.len());
    }
    let _ = (entry.weight(), entry.keep_ms(now), entry.ttl_ms(now));
    let _ = entry.is_fresh(now);
}

fn open_any(data: &Bytes, now: u64) {
    for s in [seal(), Seal::new(None)] {
        if let Ok(entry) = Entry::open(data, &s, NAME.as_bytes(), LIMITS) {
            check_bounds(&entry, now);
        }
        let _ = decode_usable(data, &s, NAME, LIMITS, now);
    }
}

fn round_trip(f: Fields) {
    let Ok(status) = StatusCode::from_u16(f.status) else {
        return;
    };
    let mut hdrs = headers(&f.headers);
    // A storer checks the count first (`Entry::seal`'s contract); emulate it.
    while hdrs.len() > MAX_HEADERS {
        let Some(name) = hdrs.keys().next().cloned() else {
            break;
        };
        hdrs.remove(name);
    }
    let compression = Compression {
        level: i32::from(f.level % 3) + 1,
        threshold: u64::from(f.threshold),
    };
    let body = Bytes::from(f.body);
    let (stored, _) = StoredBody::encode(body.clone(), compression);
    let entry = Entry {
        status,
        headers: hdrs,
        body: stored,
        request_time: f.request_time,
        response_time: f.response_time,
        initial_age: f.initial_age,
        lifetime: f.lifetime,
        flags: Flags(f.flags),
        stale_while_revalidate: f.stale_while_revalidate,
        stale_if_error: f.stale_if_error,
    };
    let value = entry.seal(&seal(), NAME.as_bytes());
    match Entry::open(&value, &seal(), NAME.as_bytes(), LIMITS) {
        Ok(back) => {
            assert_eq!(back, entry);
            assert_eq!(back.body.decoded().ok(), Some(body));
            check_bounds(&back, f.now);
        }
        // Only a bound may refuse a value this instance sealed itself.
        Err(CodecError::TooLarge(n)) => assert!(n > LIMITS.max_value),
        Err(e) => panic!("own value refused: {e}"),
    }
    // Moved to another key, or checked with another secret: a MAC failure, never an entry.
    if value.len() as u64 <= LIMITS.max_value {
        let other = Entry::open(&value, &seal(), b"augur:another-key", LIMITS);
        assert_eq!(other, Err(CodecError::Mac));
        let unkeyed = Entry::open(&value, &Seal::new(None), NAME.as_bytes(), LIMITS);
        assert_eq!(unkeyed, Err(CodecError::Mac));
    }
}

fuzz_target!(|input: Input| {
    match input {
        Input::Raw(bytes) => open_any(&Bytes::from(bytes), 0),
        Input::Sealed { with_head, payload } => {
            let mut p = Vec::with_capacity(HEAD.len() + payload.len());
            if with_head {
                p.extend_from_slice(HEAD);
            }
            p.extend_from_slice(&payload);
            for s in [seal(), Seal::new(None)] {
                let value = s.seal(NAME.as_bytes(), &p);
                open_any(&value, clock_ms(payload.len() as u64 * 1_000_003));
            }
        }
        Input::Fields(f) => round_trip(f),
    }
});
