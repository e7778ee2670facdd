//! A stored response and its binary codec (pure).
//!
//! An [`Entry`] is what `cache::lookup_or_fetch` stores and a hit serves: status, the
//! end-to-end headers, the body (zstd-compressed once on store when that makes it smaller), and
//! the timing needed to compute `Age` and freshness at any later `now`. The codec is the stored
//! form for tiers outside this process: versioned, sealed with a keyed blake3 MAC ([`Seal`]) to
//! the name it is stored under, and strict on decode, so a corrupt, foreign or forged value is
//! a miss and never a response.
//!
//! Whatever a tier hands back is untrusted input (anyone who can write to Redis wrote it):
//! the value size, the header count and the declared body length are bounded ([`Limits`],
//! [`MAX_HEADERS`]) before anything is allocated from them, and decode never panics.

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

/// Headers a stored value may carry: hyper's own limit on a parsed HTTP/1 response head, so
/// an entry Augur stored from an upstream fits, and a forged count allocates nothing big.
pub const MAX_HEADERS: usize = 100;

/// How far one zstd frame can expand: a block holds at most 128 KiB and costs at least 4 bytes
/// (a 3-byte block header and one RLE byte). A declared length above this is a lie.
const ZSTD_MAX_RATIO: u64 = 32 * 1024;

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
    ///
    /// The declared length came from outside when the entry came from L2, so it is checked
    /// against the frame before the output buffer is allocated (zstd's `decompress(frame,
    /// cap)` would allocate `cap` up front), and the allocation itself is fallible.
    pub fn decoded(&self) -> Result<Bytes, CodecError> {
        match self {
            StoredBody::Raw(b) => Ok(b.clone()),
            StoredBody::Zstd { frame, len } => {
                if *len > (frame.len() as u64).saturating_mul(ZSTD_MAX_RATIO) {
                    return Err(CodecError::Body);
                }
                // Augur's frames always declare their size; one that declares another is not
                // the body this entry describes.
                match zstd::zstd_safe::get_frame_content_size(frame) {
                    Ok(Some(n)) if n == *len => {}
                    _ => return Err(CodecError::Body),
                }
                let cap = usize::try_from(*len).map_err(|_| CodecError::Body)?;
                let mut out = Vec::new();
                out.try_reserve_exact(cap).map_err(|_| CodecError::Body)?;
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
                    let done = match slot.as_mut() {
                        Some(d) => d.decompress_to_buffer(frame.as_ref(), &mut out).is_ok(),
                        None => zstd::zstd_safe::decompress(&mut out, frame).is_ok(),
                    };
                    match done && out.len() == cap {
                        true => Ok(Bytes::from(out)),
                        false => Err(CodecError::Body),
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

    /// The exact length of [`Entry::seal`]'s output, computed without encoding anything: a
    /// store checks it against its limit before it pays for the copy and the MAC.
    pub fn sealed_len(&self) -> u64 {
        // magic, version, status, four u64 times, flags, two u64 windows, header count.
        const FIXED: u64 = 4 + 1 + 2 + 4 * 8 + 1 + 2 * 8 + 2;
        // kind, decoded len, stored len.
        const BODY: u64 = 1 + 8 + 4;
        let headers: u64 = self
            .headers
            .iter()
            .take(usize::from(u16::MAX))
            .map(|(k, v)| (2 + k.as_str().len() + 4 + v.len()) as u64)
            .sum();
        FIXED + headers + BODY + self.body.stored_len() + TAG_LEN as u64
    }

    /// The versioned binary form, sealed to `name` (the Redis key it is stored under).
    ///
    /// Layout (big-endian): `"AUGE"`, version u8, status u16, request_time u64, response_time u64,
    /// initial_age u64, lifetime u64, flags u8, stale_while_revalidate u64, stale_if_error u64,
    /// header count u16, then per header: name len u16, name,
    /// value len u32, value; body kind u8 (0 raw, 1 zstd), decoded len u64, stored len u32,
    /// stored bytes; then the [`Seal`]'s 32-byte tag over `name` and everything before.
    ///
    /// A caller that stores it checks [`MAX_HEADERS`] first: readers refuse more.
    pub fn seal(&self, seal: &Seal, name: &[u8]) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.weight() as usize + 64 + TAG_LEN);
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
        let tag = seal.tag(name, &buf);
        buf.put_slice(tag.as_bytes());
        buf.freeze()
    }

    /// Check the size, verify the seal over `name` and the value, then decode within `limits`.
    /// Anything unexpected is an error, never a panic, and nothing is allocated from a length
    /// the value declares before it is bounded.
    pub fn open(
        data: &Bytes,
        seal: &Seal,
        name: &[u8],
        limits: Limits,
    ) -> Result<Entry, CodecError> {
        if data.len() as u64 > limits.max_value {
            return Err(CodecError::TooLarge(data.len() as u64));
        }
        let payload = seal.open(name, data)?;
        Entry::decode(payload, limits)
    }

    /// Decode a verified payload.
    fn decode(mut r: Bytes, limits: Limits) -> Result<Entry, CodecError> {
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
        if usize::from(count) > MAX_HEADERS {
            return Err(CodecError::TooManyHeaders(count));
        }
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
        if len > limits.max_body {
            return Err(CodecError::BodyTooLarge(len));
        }
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
/// 2: flags and the stale windows after `lifetime`. 3: a keyed MAC over the Redis key and the
/// value replaces the unkeyed checksum (a version 2 value fails the MAC: a miss).
const VERSION: u8 = 3;
/// A full blake3 output: the tag is a MAC, not a checksum.
const TAG_LEN: usize = blake3::OUT_LEN;

/// How much a value read from outside may claim, checked before anything is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The whole sealed value (`[redis] max_entry_size`).
    pub max_value: u64,
    /// The decoded body it declares (`[cache] max_entry_size`: no stored body is larger).
    pub max_body: u64,
}

/// The keyed blake3 MAC that binds a value to the name it is stored under (a Redis key, or the
/// pub/sub channel of a message), so that a writer without the secret can neither forge a
/// value nor move a valid one to another key.
///
/// Without a secret the key is derived from nothing: the tag still binds value to name and
/// catches corruption, but anyone can compute it (see README, "Security and limits").
#[derive(Clone)]
pub struct Seal {
    key: [u8; 32],
    keyed: bool,
}

/// blake3 `derive_key` context: a key for this purpose only, whatever else the secret keys.
const SEAL_CONTEXT: &str = "augur 2026-12 L2 value and invalidation MAC v3";

impl Seal {
    pub fn new(secret: Option<&[u8]>) -> Seal {
        Seal {
            key: blake3::derive_key(SEAL_CONTEXT, secret.unwrap_or_default()),
            keyed: secret.is_some(),
        }
    }

    /// Whether a secret keys it (values are authenticated) or not (only bounds-checked).
    pub fn is_keyed(&self) -> bool {
        self.keyed
    }

    /// The tag over `name`, length-prefixed so that no name ‖ payload split is ambiguous.
    fn tag(&self, name: &[u8], payload: &[u8]) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&(name.len() as u64).to_be_bytes());
        h.update(name);
        h.update(payload);
        h.finalize()
    }

    /// `payload` followed by its tag.
    pub fn seal(&self, name: &[u8], payload: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(payload.len() + TAG_LEN);
        out.put_slice(payload);
        out.put_slice(self.tag(name, payload).as_bytes());
        out.freeze()
    }

    /// The payload of a value sealed to `name`, or [`CodecError::Mac`].
    pub fn open(&self, name: &[u8], value: &Bytes) -> Result<Bytes, CodecError> {
        let Some(at) = value.len().checked_sub(TAG_LEN) else {
            return Err(CodecError::Mac);
        };
        let (payload, tag) = value.split_at(at);
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| CodecError::Mac)?;
        // `blake3::Hash`'s `==` runs in constant time.
        if self.tag(name, payload) != blake3::Hash::from_bytes(tag) {
            return Err(CodecError::Mac);
        }
        Ok(value.slice(..at))
    }
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seal").field("keyed", &self.keyed).finish()
    }
}

/// Why a stored value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("truncated")]
    Truncated,
    #[error("MAC mismatch (written without this instance's secret, or by an older version)")]
    Mac,
    #[error("value of {0} bytes is above max_entry_size")]
    TooLarge(u64),
    #[error("{0} headers is above the limit of {MAX_HEADERS}")]
    TooManyHeaders(u16),
    #[error("declared body of {0} bytes is above cache.max_entry_size")]
    BodyTooLarge(u64),
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

impl CodecError {
    /// The `reason` label of `augur_l2_rejected_total`.
    pub fn reason(self) -> &'static str {
        match self {
            CodecError::Mac => "mac",
            CodecError::TooLarge(_)
            | CodecError::TooManyHeaders(_)
            | CodecError::BodyTooLarge(_) => "bounds",
            _ => "decode",
        }
    }
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
    fn sealed_len_is_the_sealed_length() {
        let seal = Seal::new(Some(b"sixteen bytes at least, yes"));
        for body in [&b""[..], b"short", &[b'j'; 5000][..]] {
            let c = Compression {
                level: 3,
                threshold: 16,
            };
            let e = sample(body, c);
            assert_eq!(e.sealed_len(), e.seal(&seal, b"augur:k").len() as u64);
        }
    }

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

    const NAME: &[u8] = b"augur:0123456789abcdef";
    const LIMITS: Limits = Limits {
        max_value: 1 << 20,
        max_body: 8 << 20,
    };

    fn seal() -> Seal {
        Seal::new(Some(b"a test secret of 32 bytes, no more"))
    }

    fn open(data: &Bytes) -> Result<Entry, CodecError> {
        Entry::open(data, &seal(), NAME, LIMITS)
    }

    #[test]
    fn codec_round_trip_and_rejects_corruption() {
        let e = sample(&br#"{"k":"v"}"#.repeat(50), C);
        let enc = e.seal(&seal(), NAME);
        assert_eq!(open(&enc).unwrap(), e);
        for i in [0, 5, enc.len() / 2, enc.len() - 1] {
            let mut bad = enc.to_vec();
            bad[i] ^= 0x40;
            assert_eq!(open(&Bytes::from(bad)), Err(CodecError::Mac), "flip at {i}");
        }
        assert_eq!(open(&enc.slice(..enc.len() - 3)), Err(CodecError::Mac));
        assert_eq!(open(&Bytes::from_static(b"xx")), Err(CodecError::Mac));
        let small = Limits {
            max_value: enc.len() as u64 - 1,
            ..LIMITS
        };
        assert_eq!(
            Entry::open(&enc, &seal(), NAME, small),
            Err(CodecError::TooLarge(enc.len() as u64))
        );
    }

    /// The MAC binds the value to its key and to the secret; without a secret it still
    /// checks both, but anyone can compute it.
    #[test]
    fn seal_binds_key_and_secret() {
        let e = sample(b"x", C);
        let enc = e.seal(&seal(), NAME);
        let other_key = Entry::open(&enc, &seal(), b"augur:fedcba9876543210", LIMITS);
        assert_eq!(other_key, Err(CodecError::Mac));
        let other = Seal::new(Some(b"another secret, also long enough"));
        assert_eq!(
            Entry::open(&enc, &other, NAME, LIMITS),
            Err(CodecError::Mac)
        );
        let public = Seal::new(None);
        assert!(!public.is_keyed() && seal().is_keyed());
        assert_eq!(
            Entry::open(&enc, &public, NAME, LIMITS),
            Err(CodecError::Mac)
        );
        let unkeyed = e.seal(&public, NAME);
        assert_eq!(Entry::open(&unkeyed, &public, NAME, LIMITS).unwrap(), e);
        assert_eq!(open(&unkeyed), Err(CodecError::Mac));
        assert!(!format!("{:?}", seal()).contains("secret"));
        // Version 2 (the unkeyed 16-byte checksum): a miss after an upgrade, never an error
        // the client sees.
        let mut v2 = enc[..enc.len() - TAG_LEN].to_vec();
        v2[4] = 2;
        let sum = blake3::hash(&v2);
        v2.extend_from_slice(&sum.as_bytes()[..16]);
        assert_eq!(
            open(&Bytes::from(v2)).map_err(CodecError::reason),
            Err("mac")
        );
    }

    #[test]
    fn declared_body_above_the_limit_is_refused() {
        let e = sample(&br#"{"k":"v"}"#.repeat(50), C);
        let enc = e.seal(&seal(), NAME);
        let tight = Limits {
            max_body: e.body.len() - 1,
            ..LIMITS
        };
        let got = Entry::open(&enc, &seal(), NAME, tight);
        assert_eq!(got, Err(CodecError::BodyTooLarge(e.body.len())));
        assert_eq!(got.map_err(CodecError::reason), Err("bounds"));
    }

    #[test]
    fn age_and_freshness() {
        let e = sample(b"x", C);
        assert_eq!(e.age_ms(20), 5_000);
        assert!(e.is_fresh(20 + 54_999));
        assert!(!e.is_fresh(20 + 55_000));
        assert_eq!(e.ttl_ms(20 + 70_000), 0);
    }

    /// `payload` with a valid seal, as only a writer that holds the secret can make it.
    fn sealed(payload: &[u8]) -> Bytes {
        seal().seal(NAME, payload)
    }

    /// The payload (unsealed) of a real entry with a zstd body.
    fn zstd_payload() -> Vec<u8> {
        let e = sample(&br#"{"k":"v"}"#.repeat(50), C);
        assert!(matches!(e.body, StoredBody::Zstd { .. }));
        let enc = e.seal(&seal(), NAME);
        enc[..enc.len() - TAG_LEN].to_vec()
    }

    /// Offset of the header count: magic, version, status, four u64 times, flags, two windows.
    const COUNT_AT: usize = 4 + 1 + 2 + 8 * 4 + 1 + 8 * 2;

    /// Review H3: `HeaderMap::with_capacity(30000)` panicked ("size overflows MAX_SIZE").
    #[test]
    fn sealed_value_with_30000_headers_is_refused_not_a_panic() {
        let mut p = zstd_payload();
        p[COUNT_AT..COUNT_AT + 2].copy_from_slice(&30_000u16.to_be_bytes());
        assert_eq!(open(&sealed(&p)), Err(CodecError::TooManyHeaders(30_000)));
        // The review's 74-byte form: the count, and nothing after it.
        p.truncate(COUNT_AT + 2);
        assert!(open(&sealed(&p)).is_err());
    }

    /// Review H3: a declared length of `u64::MAX` reached `Vec::with_capacity` in zstd.
    #[test]
    fn sealed_zstd_value_declaring_u64_max_is_refused_not_a_panic() {
        let e = sample(&br#"{"k":"v"}"#.repeat(50), C);
        let StoredBody::Zstd { frame, .. } = &e.body else {
            panic!("expected a zstd body")
        };
        let mut p = zstd_payload();
        let len_at = p.len() - frame.len() - 4 - 8;
        p[len_at..len_at + 8].copy_from_slice(&u64::MAX.to_be_bytes());
        match open(&sealed(&p)) {
            Err(_) => {}
            Ok(entry) => assert!(entry.body.decoded().is_err()),
        }
        let forged = StoredBody::Zstd {
            frame: frame.clone(),
            len: u64::MAX,
        };
        assert!(forged.decoded().is_err());
        let forged = StoredBody::Zstd {
            frame: frame.clone(),
            len: 1 << 40,
        };
        assert!(forged.decoded().is_err());
    }

    proptest! {
        /// Values that pass the seal (a writer with the key, or no key configured) and carry
        /// hostile fields: any count, any declared length, random bytes after the fixed part.
        #[test]
        fn sealed_hostile_values_never_panic(
            count in any::<u16>(),
            len in any::<u64>(),
            kind in 0u8..3,
            tail in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut p = zstd_payload();
            p[COUNT_AT..COUNT_AT + 2].copy_from_slice(&count.to_be_bytes());
            let _ = open(&sealed(&p));
            let mut q = p[..COUNT_AT + 2].to_vec();
            q.extend_from_slice(&tail);
            let _ = open(&sealed(&q));
            let mut r = zstd_payload();
            // Body kind u8, declared len u64, stored len u32, frame: overwrite kind and len.
            let stored = sample(&br#"{"k":"v"}"#.repeat(50), C).body.stored_len() as usize;
            let at = r.len() - stored - 4 - 8 - 1;
            r[at] = kind;
            r[at + 1..at + 9].copy_from_slice(&len.to_be_bytes());
            if let Ok(entry) = open(&sealed(&r)) {
                let _ = entry.body.decoded();
            }
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = open(&Bytes::from(data));
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
