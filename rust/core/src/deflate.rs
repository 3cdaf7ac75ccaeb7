//! permessage-deflate (RFC 7692) payloads with no context takeover in either direction.
//!
//! The server always negotiates `server_no_context_takeover`, so a message is compressed
//! from a fresh window and one compressed frame is valid for every recipient that
//! negotiated the extension; and `client_no_context_takeover`, so an inbound message is
//! inflated from a fresh window too and one [`Inflater`] serves the whole process. Neither
//! direction keeps any state per connection.
//!
//! A message compressed from a fresh window refers back at most its own length, so it is
//! valid for a client that asked for `server_max_window_bits = N` whenever it is at most
//! 2^N bytes long ([`fits_window`]); longer messages go to such a client uncompressed,
//! which RFC 7692 allows per message.

use std::error::Error;
use std::fmt;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::frame::Frame;

/// The empty stored block a sync flush ends with: stripped from an outgoing payload,
/// appended to an incoming one (RFC 7692 §7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The largest `server_max_window_bits`/`client_max_window_bits` (a 32 KiB window).
pub const MAX_WINDOW_BITS: u8 = 15;
/// The smallest window size RFC 7692 allows.
pub const MIN_WINDOW_BITS: u8 = 8;

/// Whether a `payload_len`-byte message compressed from a fresh window may go to a client
/// whose decompressor keeps `2^window_bits` bytes.
#[inline]
pub fn fits_window(payload_len: usize, window_bits: u8) -> bool {
    window_bits >= MAX_WINDOW_BITS || payload_len <= 1usize << window_bits
}

/// Compresses whole messages, each from a fresh window (no context takeover).
pub struct Deflater {
    compress: Compress,
    out: Vec<u8>,
}

impl Deflater {
    /// A compressor at zlib `level` (0-9).
    pub fn new(level: u32) -> Self {
        Deflater {
            compress: Compress::new(Compression::new(level.min(9)), false),
            out: Vec::new(),
        }
    }

    /// The RFC 7692 payload of `payload` (raw deflate, sync-flushed, its empty stored
    /// block stripped), or None when it would not be shorter than `payload`. The slice is
    /// valid until the next call.
    pub fn compress(&mut self, payload: &[u8]) -> Option<&[u8]> {
        self.compress.reset();
        self.out.clear();
        // Deflate's worst case is a few bytes per 16 KiB block above the input; start with
        // that, so one call nearly always does it.
        self.out
            .reserve(payload.len() + payload.len() / 64 + TAIL.len() + 16);
        loop {
            let consumed = usize::try_from(self.compress.total_in()).unwrap_or(usize::MAX);
            let input = payload.get(consumed..).unwrap_or(&[]);
            self.compress
                .compress_vec(input, &mut self.out, FlushCompress::Sync)
                .ok()?;
            let done = self.compress.total_in() as usize == payload.len()
                && self.out.len() < self.out.capacity()
                && self.out.ends_with(&TAIL);
            if done {
                break;
            }
            if self.out.len() >= payload.len() + TAIL.len() {
                return None; // already no shorter than the plain message
            }
            self.out.reserve(self.out.capacity().max(64));
        }
        let len = self.out.len() - TAIL.len();
        (len < payload.len()).then(|| &self.out[..len])
    }
}

impl Default for Deflater {
    fn default() -> Self {
        Deflater::new(Compression::default().level())
    }
}

/// The hub's outgoing compression: which messages are worth it, and the one compressor.
pub struct Outgoing {
    deflater: Deflater,
    threshold: usize,
    /// Messages compressed (once each, whatever the number of recipients).
    pub(crate) compressed: u64,
}

impl Outgoing {
    /// Messages shorter than `threshold` bytes go uncompressed; zlib `level` (0-9).
    pub fn new(threshold: usize, level: u32) -> Self {
        Outgoing {
            deflater: Deflater::new(level),
            threshold,
            compressed: 0,
        }
    }

    /// Whether a `len`-byte message should be compressed for a connection that negotiated
    /// a `window_bits` server window (0: it did not negotiate the extension).
    #[inline]
    pub fn wanted(&self, len: usize, window_bits: u8) -> bool {
        window_bits != 0 && len >= self.threshold && fits_window(len, window_bits)
    }

    /// The compressed frame of `payload`, or None when compressing does not shorten it.
    pub fn frame(&mut self, payload: &[u8]) -> Option<Frame> {
        self.compressed += 1;
        self.deflater.compress(payload).map(Frame::deflated_text)
    }
}

/// Why an inbound message could not be inflated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit (inflation stopped there).
    TooBig,
    /// It is not valid deflate data.
    Invalid,
}

impl fmt::Display for InflateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InflateError::TooBig => "inflated message over the size limit",
            InflateError::Invalid => "invalid deflate data",
        })
    }
}

impl Error for InflateError {}

/// Inflates whole messages, each from a fresh window (client_no_context_takeover), into a
/// buffer that never grows past the largest limit asked for plus one byte.
pub struct Inflater {
    decompress: Decompress,
    out: Vec<u8>,
}

/// Output grows from this much (doubling, up to the limit).
const INFLATE_STEP: usize = 16 * 1024;
/// The output buffer is kept between messages up to this size.
const RETAIN_MAX: usize = 1 << 20;

impl Inflater {
    pub fn new() -> Self {
        Inflater {
            decompress: Decompress::new(false),
            out: Vec::new(),
        }
    }

    /// The message whose compressed payload is `parts` (its frames' payloads in order), at
    /// most `limit` bytes; past the limit inflation stops. The slice is valid until the next
    /// call.
    pub fn inflate(&mut self, parts: &[&[u8]], limit: usize) -> Result<&[u8], InflateError> {
        self.decompress.reset(false);
        self.out.clear();
        self.trim();
        let cap = limit.saturating_add(1);
        for input in parts.iter().copied().chain(std::iter::once(&TAIL[..])) {
            let start = self.decompress.total_in();
            loop {
                let consumed = (self.decompress.total_in() - start) as usize;
                let rest = input.get(consumed..).unwrap_or(&[]);
                if self.out.len() == self.out.capacity() {
                    if self.out.len() >= cap {
                        return Err(InflateError::TooBig);
                    }
                    // Geometric growth, never past the limit (plus the byte that tells).
                    let room = self.out.len().max(INFLATE_STEP).min(cap - self.out.len());
                    self.out.reserve_exact(room);
                }
                let before = (self.decompress.total_in(), self.decompress.total_out());
                let status = self
                    .decompress
                    .decompress_vec(rest, &mut self.out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Invalid)?;
                if self.out.len() > limit {
                    return Err(InflateError::TooBig);
                }
                if status == Status::StreamEnd {
                    // A final block: whatever follows (the tail at least) is not data.
                    return Ok(&self.out);
                }
                let consumed_all = (self.decompress.total_in() - start) as usize >= input.len();
                let progressed =
                    (self.decompress.total_in(), self.decompress.total_out()) != before;
                let full = self.out.len() == self.out.capacity();
                if consumed_all && !full {
                    break;
                }
                if !progressed && !full {
                    // Input left, room left, nothing moved: zlib is stuck on this data.
                    return Err(InflateError::Invalid);
                }
            }
        }
        Ok(&self.out)
    }

    /// Lets go of the output buffer when a large message grew it past `RETAIN_MAX` (call
    /// once the last message is copied out).
    pub fn trim(&mut self) {
        if self.out.capacity() > RETAIN_MAX {
            self.out = Vec::new();
        }
    }

    /// Bytes the output buffer holds on to between messages.
    pub fn capacity(&self) -> usize {
        self.out.capacity()
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(n: usize) -> Vec<u8> {
        let mut s = String::from("{\"event\":\"tick\",\"data\":[");
        for i in 0..n {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&format!(
                "{{\"id\":{i},\"name\":\"user-{}\",\"ok\":true}}",
                i % 7
            ));
        }
        s.push_str("]}");
        s.into_bytes()
    }

    fn roundtrip(payload: &[u8]) -> Vec<u8> {
        let mut d = Deflater::default();
        let compressed = d.compress(payload).expect("compressible").to_vec();
        assert!(compressed.len() < payload.len());
        assert!(!compressed.ends_with(&TAIL));
        let mut i = Inflater::new();
        i.inflate(&[&compressed], 1 << 20).unwrap().to_vec()
    }

    #[test]
    fn compressed_message_inflates_to_itself() {
        for n in [10, 40, 1000, 5000] {
            let payload = json(n);
            assert_eq!(roundtrip(&payload), payload);
        }
    }

    #[test]
    fn each_message_is_compressed_from_a_fresh_window() {
        let mut d = Deflater::default();
        let payload = json(40);
        let first = d.compress(&payload).unwrap().to_vec();
        let second = d.compress(&payload).unwrap().to_vec();
        assert_eq!(first, second, "no context carried from the first message");
    }

    #[test]
    fn incompressible_message_is_not_compressed() {
        let mut x: u32 = 0x1234_5678;
        let noise: Vec<u8> = (0..4000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert!(Deflater::default().compress(&noise).is_none());
        assert!(Deflater::default().compress(b"").is_none());
    }

    #[test]
    fn fragments_inflate_like_the_whole() {
        let payload = json(300);
        let compressed = Deflater::default().compress(&payload).unwrap().to_vec();
        let (a, rest) = compressed.split_at(1);
        let (b, c) = rest.split_at(rest.len() / 2);
        let mut i = Inflater::new();
        assert_eq!(i.inflate(&[a, b, c, &[]], 1 << 20).unwrap(), &payload[..]);
    }

    #[test]
    fn empty_message_inflates_to_nothing() {
        let mut i = Inflater::new();
        assert_eq!(i.inflate(&[], 10).unwrap(), b"");
        // What zlib's sync flush of nothing leaves once the tail is stripped.
        assert_eq!(i.inflate(&[&[0x02, 0x00]], 10).unwrap(), b"");
    }

    #[test]
    fn a_final_block_ends_the_message() {
        // "hi" as a final fixed-Huffman block (what a compressor's Finish writes).
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(64);
        c.compress_vec(b"hi", &mut out, FlushCompress::Finish)
            .unwrap();
        let mut i = Inflater::new();
        assert_eq!(i.inflate(&[&out], 10).unwrap(), b"hi");
    }

    #[test]
    fn bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 50 << 20];
        let compressed = Deflater::default().compress(&zeros).unwrap().to_vec();
        assert!(compressed.len() < 100 << 10, "{}", compressed.len());
        let mut i = Inflater::new();
        assert_eq!(
            i.inflate(&[&compressed], 131_072),
            Err(InflateError::TooBig)
        );
        assert!(i.capacity() <= 131_073, "{}", i.capacity());
        // Exactly at the limit is fine.
        let at = Deflater::default()
            .compress(&zeros[..1000])
            .unwrap()
            .to_vec();
        assert_eq!(i.inflate(&[&at], 1000).unwrap().len(), 1000);
        assert_eq!(i.inflate(&[&at], 999), Err(InflateError::TooBig));
    }

    #[test]
    fn trim_lets_a_large_buffer_go() {
        let zeros = vec![0u8; 4 << 20];
        let compressed = Deflater::default().compress(&zeros).unwrap().to_vec();
        let mut i = Inflater::new();
        assert_eq!(i.inflate(&[&compressed], 8 << 20).unwrap().len(), 4 << 20);
        assert!(i.capacity() >= 4 << 20);
        i.trim();
        assert_eq!(i.capacity(), 0);
    }

    #[test]
    fn invalid_data_is_an_error() {
        let mut i = Inflater::new();
        // BTYPE 11 is reserved.
        assert_eq!(
            i.inflate(&[&[0xff, 0xff, 0xff]], 100),
            Err(InflateError::Invalid)
        );
        // The inflater is usable again afterwards.
        let good = Deflater::default().compress(&json(20)).unwrap().to_vec();
        assert_eq!(i.inflate(&[&good], 1 << 20).unwrap(), &json(20)[..]);
    }

    #[test]
    fn window_rule() {
        assert!(fits_window(1 << 20, 15));
        assert!(fits_window(256, 8));
        assert!(!fits_window(257, 8));
        assert!(fits_window(4096, 12) && !fits_window(4097, 12));
    }

    #[cfg(feature = "zlib-rs")]
    #[test]
    fn message_fitting_a_small_window_inflates_with_that_window() {
        // A decompressor with a 2^9-byte window reads a 512-byte message compressed here.
        let payload = &json(40)[..512];
        let compressed = Deflater::default().compress(payload).unwrap().to_vec();
        let mut small = Decompress::new_with_window_bits(false, 9);
        let mut out = Vec::with_capacity(1024);
        let mut input = compressed.clone();
        input.extend_from_slice(&TAIL);
        small
            .decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        assert_eq!(out, payload);
    }
}
