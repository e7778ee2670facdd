//! A stored response and its binary codec (pure).
//!
//! An [`Entry`] is what `cache::lookup_or_fetch` stores and a hit serves: status, the
//! end-to-end headers, the body (zstd-compressed once on store when that makes it smaller), and
//! the timing needed to compute `Age` and freshness at any later `now`. The codec is the stored
//! form for tiers outside this process: versioned, checksummed with blake3, and strict on
//! decode, so a corrupt or foreign value is a miss and never a response.

use std::cell::RefCell;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// Fixed per-entry overhead counted in the weight, so that the budget bounds real memory: the
/// `Entry` (192 bytes), its `Arc`, the header map's table, the L1 slot and its ghost, and the
/// allocator's rounding. Calibrated by measurement: 1 KiB JSON entries filling a 32 MiB budget
/// held 1.37x their weight in RSS with 384 here (~700 bytes short per entry).
const ENTRY_OVERHEAD: u64 = 1024;
/// Per-header overhead counted in the weight: a header-map bucket (~96 bytes), its index
/// slots, and the allocation rounding of the copied value.
const HEADER_OVERHEAD: u64 = 128;

/// The stored body: as received, or one zstd frame when that is smaller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredBody {
    Raw(Bytes),
    Zstd { frame: Bytes, len: u64 },
}

/// Compression settings from `[cache]`.
#[derive(Debug, Clone, Copy)]
pub struct Compression {
    pub level: i32,
    pub threshold: u64,
}

impl StoredBody {
    /// Compress `body` once, on store, when it is at or above the threshold; keep the frame only
    /// when it is smaller. Returns the body and the bytes saved.
    ///
    /// The stored bytes are always a fresh allocation of their own size: a body that arrived as
    /// a slice of a larger network buffer would otherwise pin that whole buffer while the
    /// weight counts only the slice.
    pub fn encode(body: Bytes, c: Compression) -> (StoredBody, u64) {
        let len = body.len() as u64;
        if len == 0 || len < c.threshold {
            return (StoredBody::Raw(Bytes::copy_from_slice(&body)), 0);
        }
        match zstd::bulk::compress(&body, c.level) {
            Ok(frame) if (frame.len() as u64) < len => {
                let saved = len - frame.len() as u64;
                // The output buffer is sized for the worst case (compress bound); keep only
                // what the frame needs.
                (
                    StoredBody::Zstd {
                        frame: Bytes::from(frame.into_boxed_slice()),
                        len,
                    },
                    saved,
                )
            }
            _ => (StoredBody::Raw(Bytes::copy_from_slice(&body)), 0),
        }
    }

    /// Length of the body as served decompressed.
    pub fn len(&self) -> u64 {
        match self {
            StoredBody::Raw(b) => b.len() as u64,
            StoredBody::Zstd { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held in memory.
    pub fn stored_len(&self) -> u64 {
        match self {
            StoredBody::Raw(b) => b.len() as u64,
            StoredBody::Zstd { frame, .. } => frame.len() as u64,
        }
    }

    /// The body as the client sees it without `Content-Encoding: zstd`.
    pub fn decoded(&self) -> Result<Bytes, CodecError> {
        match self {
            StoredBody::Raw(b) => Ok(b.clone()),
            StoredBody::Zstd { frame, len } => {
                let cap = usize::try_from(*len).map_err(|_| CodecError::Body)?;
                thread_local! {
                    // One decompression context per thread: creating one costs more than
                    // decompressing a small body.
                    static DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                        const { RefCell::new(None) };
                }
                DCTX.with(|cell| {
                    let mut slot = cell.borrow_mut();
                    if slot.is_none() {
                        *slot = zstd::bulk::Decompressor::new().ok();
                    }
                    let out = match slot.as_mut() {
                        Some(d) => d.decompress(frame, cap),
                        None => zstd::bulk::decompress(frame, cap),
                    };
                    match out {
                        Ok(v) if v.len() == cap => Ok(Bytes::from(v)),
                        _ => Err(CodecError::Body),
                    }
                })
            }
        }
    }
}

/// Headers copied into allocations of their own. Parsed header values share the connection's
/// read buffer; stored as they are, each entry would keep a whole buffer alive.
pub fn owned_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let mut copy = HeaderValue::from_maybe_shared(Bytes::copy_from_slice(value.as_bytes()))
            .unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        out.append(name.clone(), copy);
    }
    out
}

/// Revalidation rules fixed at store time, so a hit never re-parses `Cache-Control`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags(pub u8);

impl Flags {
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage`: never served stale on a client's
    /// `max-stale`.
    pub const MUST_REVALIDATE: u8 = 1;
    /// Unqualified `no-cache`: revalidated before every use.
    pub const NO_CACHE: u8 = 2;
    /// `public`, `s-maxage` or `must-revalidate`: may answer a request with `Authorization`
    /// (RFC 9111 §3.5).
    pub const AUTH_OK: u8 = 4;

    pub fn contains(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    pub fn set(&mut self, bit: u8, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }
}

/// A stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub status: StatusCode,
    /// End-to-end headers as received (hop-by-hop, `Content-Length` and `Age` removed).
    pub headers: HeaderMap,
    pub body: StoredBody,
    /// When the request went upstream (unix ms).
    pub request_time: u64,
    /// When the response arrived (unix ms); the age clock starts here.
    pub response_time: u64,
    /// Corrected initial age at `response_time` (ms, RFC 9111 §4.2.3).
    pub initial_age: u64,
    /// Freshness lifetime (ms).
    pub lifetime: u64,
    pub flags: Flags,
    /// How long past `lifetime` it may be served while refreshed in the background (ms).
    pub stale_while_revalidate: u64,
    /// How long past `lifetime` it may stand in for a failed upstream (ms).
    pub stale_if_error: u64,
}

impl Entry {
    /// Current age at `now` (ms).
    pub fn age_ms(&self, now: u64) -> u64 {
        self.initial_age
            .saturating_add(now.saturating_sub(self.response_time))
    }

    /// Never fresh past its lifetime.
    pub fn is_fresh(&self, now: u64) -> bool {
        self.age_ms(now) < self.lifetime
    }

    /// Remaining freshness at `now` (ms), zero when stale.
    pub fn ttl_ms(&self, now: u64) -> u64 {
        self.lifetime.saturating_sub(self.age_ms(now))
    }

    /// How long a store should keep it at `now` (ms): the freshness left plus the window in
    /// which a stale copy may still be served (`stale-while-revalidate`, `stale-if-error`,
    /// route grace). Zero once it can no longer answer anything.
    pub fn keep_ms(&self, now: u64) -> u64 {
        self.lifetime
            .saturating_add(self.stale_while_revalidate.max(self.stale_if_error))
            .saturating_sub(self.age_ms(now))
    }

    /// Bytes this entry really occupies: the stored body, the headers, and a fixed overhead.
    pub fn weight(&self) -> u64 {
        let headers: u64 = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().len() + v.len()) as u64 + HEADER_OVERHEAD)
            .sum();
        ENTRY_OVERHEAD + headers + self.body.stored_len()
    }

    /// The versioned, checksummed binary form.
    ///
    /// Layout (big-endian): `"AUGE"`, version u8, status u16, request_time u64, response_time u64,
    /// initial_age u64, lifetime u64, flags u8, stale_while_revalidate u64, stale_if_error u64,
    /// header count u16, then per header: name len u16, name,
    /// value len u32, value; body kind u8 (0 raw, 1 zstd), decoded len u64, stored len u32,
    /// stored bytes; then the first 16 bytes of blake3 over everything before.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.weight() as usize + 64);
        buf.put_slice(MAGIC);
        buf.put_u8(VERSION);
        buf.put_u16(self.status.as_u16());
        buf.put_u64(self.request_time);
        buf.put_u64(self.response_time);
        buf.put_u64(self.initial_age);
        buf.put_u64(self.lifetime);
        buf.put_u8(self.flags.0);
        buf.put_u64(self.stale_while_revalidate);
        buf.put_u64(self.stale_if_error);
        buf.put_u16(self.headers.len().min(usize::from(u16::MAX)) as u16);
        for (name, value) in self.headers.iter().take(usize::from(u16::MAX)) {
            buf.put_u16(name.as_str().len() as u16);
            buf.put_slice(name.as_str().as_bytes());
            buf.put_u32(value.len() as u32);
            buf.put_slice(value.as_bytes());
        }
        let (kind, stored) = match &self.body {
            StoredBody::Raw(b) => (0u8, b),
            StoredBody::Zstd { frame, .. } => (1u8, frame),
        };
        buf.put_u8(kind);
        buf.put_u64(self.body.len());
        buf.put_u32(stored.len() as u32);
        buf.put_slice(stored);
        let sum = blake3::hash(&buf);
        buf.put_slice(&sum.as_bytes()[..CHECKSUM_LEN]);
        buf.freeze()
    }

    /// Decode and verify. Anything unexpected is an error, never a panic.
    pub fn decode(data: &Bytes) -> Result<Entry, CodecError> {
        if data.len() < MAGIC.len() + 1 + CHECKSUM_LEN {
            return Err(CodecError::Truncated);
        }
        let (payload, sum) = data.split_at(data.len() - CHECKSUM_LEN);
        if &blake3::hash(payload).as_bytes()[..CHECKSUM_LEN] != sum {
            return Err(CodecError::Checksum);
        }
        let mut r = data.slice(..payload.len());
        if r.chunk().get(..MAGIC.len()) != Some(MAGIC) {
            return Err(CodecError::Magic);
        }
        r.advance(MAGIC.len());
        let version = get_u8(&mut r)?;
        if version != VERSION {
            return Err(CodecError::Version(version));
        }
        let status = StatusCode::from_u16(get_u16(&mut r)?).map_err(|_| CodecError::Header)?;
        let request_time = get_u64(&mut r)?;
        let response_time = get_u64(&mut r)?;
        let initial_age = get_u64(&mut r)?;
        let lifetime = get_u64(&mut r)?;
        let flags = Flags(get_u8(&mut r)?);
        let stale_while_revalidate = get_u64(&mut r)?;
        let stale_if_error = get_u64(&mut r)?;
        let count = get_u16(&mut r)?;
        let mut headers = HeaderMap::with_capacity(usize::from(count));
        for _ in 0..count {
            let n = usize::from(get_u16(&mut r)?);
            let name = take(&mut r, n)?;
            let name = HeaderName::from_bytes(&name).map_err(|_| CodecError::Header)?;
            let n = get_u32(&mut r)? as usize;
            let value = take(&mut r, n)?;
            let value = HeaderValue::from_maybe_shared(value).map_err(|_| CodecError::Header)?;
            headers.append(name, value);
        }
        let kind = get_u8(&mut r)?;
        let len = get_u64(&mut r)?;
        let n = get_u32(&mut r)? as usize;
        let stored = take(&mut r, n)?;
        if r.has_remaining() {
            return Err(CodecError::Trailing);
        }
        let body = match kind {
            0 if stored.len() as u64 == len => StoredBody::Raw(stored),
            1 => StoredBody::Zstd { frame: stored, len },
            _ => return Err(CodecError::Body),
        };
        Ok(Entry {
            status,
            headers,
            body,
            request_time,
            response_time,
            initial_age,
            lifetime,
            flags,
            stale_while_revalidate,
            stale_if_error,
        })
    }
}

const MAGIC: &[u8; 4] = b"AUGE";
/// 2: flags and the stale windows after `lifetime`.
const VERSION: u8 = 2;
const CHECKSUM_LEN: usize = 16;

/// Why a stored value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("truncated")]
    Truncated,
    #[error("checksum mismatch")]
    Checksum,
    #[error("not an Augur entry")]
    Magic,
    #[error("unsupported entry version {0}")]
    Version(u8),
    #[error("invalid header")]
    Header,
    #[error("invalid body")]
    Body,
    #[error("trailing bytes")]
    Trailing,
}

fn take(r: &mut Bytes, n: usize) -> Result<Bytes, CodecError> {
    if r.remaining() < n {
        return Err(CodecError::Truncated);
    }
    Ok(r.split_to(n))
}

fn get_u8(r: &mut Bytes) -> Result<u8, CodecError> {
    r.try_get_u8().map_err(|_| CodecError::Truncated)
}
fn get_u16(r: &mut Bytes) -> Result<u16, CodecError> {
    r.try_get_u16().map_err(|_| CodecError::Truncated)
}
fn get_u32(r: &mut Bytes) -> Result<u32, CodecError> {
    r.try_get_u32().map_err(|_| CodecError::Truncated)
}
fn get_u64(r: &mut Bytes) -> Result<u64, CodecError> {
    r.try_get_u64().map_err(|_| CodecError::Truncated)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(body: &[u8], c: Compression) -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        Entry {
            status: StatusCode::OK,
            headers,
            body: StoredBody::encode(Bytes::copy_from_slice(body), c).0,
            request_time: 10,
            response_time: 20,
            initial_age: 5_000,
            lifetime: 60_000,
            flags: Flags(Flags::AUTH_OK),
            stale_while_revalidate: 7_000,
            stale_if_error: 9_000,
        }
    }

    const C: Compression = Compression {
        level: 3,
        threshold: 64,
    };

    #[test]
    fn compresses_only_when_smaller_and_above_threshold() {
        let json = br#"{"id":1,"name":"a"},"#.repeat(100);
        let (b, saved) = StoredBody::encode(Bytes::from(json.clone()), C);
        assert!(matches!(b, StoredBody::Zstd { .. }) && saved > 0);
        assert_eq!(b.decoded().unwrap(), Bytes::from(json));
        let (small, s) = StoredBody::encode(Bytes::from_static(b"tiny"), C);
        assert!(matches!(small, StoredBody::Raw(_)) && s == 0);
        let random: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let (r, _) = StoredBody::encode(Bytes::from(random.clone()), C);
        assert_eq!(r.decoded().unwrap(), Bytes::from(random));
    }

    #[test]
    fn codec_round_trip_and_rejects_corruption() {
        let e = sample(&br#"{"k":"v"}"#.repeat(50), C);
        let enc = e.encode();
        assert_eq!(Entry::decode(&enc).unwrap(), e);
        for i in [0, 5, enc.len() / 2, enc.len() - 1] {
            let mut bad = enc.to_vec();
            bad[i] ^= 0x40;
            assert!(Entry::decode(&Bytes::from(bad)).is_err(), "flip at {i}");
        }
        assert_eq!(
            Entry::decode(&enc.slice(..enc.len() - 3)),
            Err(CodecError::Checksum)
        );
        assert_eq!(
            Entry::decode(&Bytes::from_static(b"xx")),
            Err(CodecError::Truncated)
        );
    }

    #[test]
    fn age_and_freshness() {
        let e = sample(b"x", C);
        assert_eq!(e.age_ms(20), 5_000);
        assert!(e.is_fresh(20 + 54_999));
        assert!(!e.is_fresh(20 + 55_000));
        assert_eq!(e.ttl_ms(20 + 70_000), 0);
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Entry::decode(&Bytes::from(data));
        }

        #[test]
        fn never_fresh_past_lifetime(initial in 0u64..1_000_000, lifetime in 0u64..1_000_000, later in 0u64..3_000_000) {
            let mut e = sample(b"x", C);
            e.initial_age = initial;
            e.lifetime = lifetime;
            let now = e.response_time + later;
            if initial + later >= lifetime {
                prop_assert!(!e.is_fresh(now));
            }
        }
    }
}
