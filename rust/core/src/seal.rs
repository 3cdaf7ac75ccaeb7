//! Sealing for the built-in encryption scheme (ECDH P-256 + HKDF-SHA256 + AES-256-GCM,
//! byte-compatible with the original and with WebCrypto): AES-256-GCM with a 12-byte IV and
//! a 16-byte tag appended to the ciphertext, as WebCrypto's `encrypt` returns it.
//!
//! Key agreement and derivation happen once per client, in Python; this module does what
//! scales with the number of encrypted recipients: one plaintext sealed under many keys,
//! each result already encoded as the wire message
//! `{"event":"encrypted","data":{"iv":<base64>,"ct":<base64>}}` (standard, padded base64).
//! No randomness here: IVs come from the caller, so every function is deterministic.

use std::error::Error;
use std::fmt;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// AES-256 key length in bytes.
pub const KEY_LEN: usize = 32;
/// GCM IV (nonce) length in bytes.
pub const IV_LEN: usize = 12;
/// GCM tag length in bytes, appended to the ciphertext.
pub const TAG_LEN: usize = 16;

const HEAD: &[u8] = br#"{"event":"encrypted","data":{"iv":""#;
const MIDDLE: &[u8] = br#"","ct":""#;
const TAIL: &[u8] = br#""}}"#;

/// Keys and IVs given for a batch do not come in whole, matching pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMismatch {
    pub keys_len: usize,
    pub ivs_len: usize,
}

impl fmt::Display for BatchMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "keys ({} bytes) and ivs ({} bytes) must hold the same number of {KEY_LEN}-byte \
             keys and {IV_LEN}-byte ivs",
            self.keys_len, self.ivs_len
        )
    }
}

impl Error for BatchMismatch {}

/// The ciphertext does not authenticate under the key (wrong key, tampered or truncated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFailed;

impl fmt::Display for OpenFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ciphertext does not authenticate")
    }
}

impl Error for OpenFailed {}

/// A reusable AES-256-GCM key (its key schedule is computed once).
pub struct Sealer(Aes256Gcm);

impl Sealer {
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        Sealer(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)))
    }

    /// Ciphertext followed by the 16-byte tag.
    pub fn seal(&self, iv: &[u8; IV_LEN], plaintext: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
        buf.extend_from_slice(plaintext);
        let tag = self.seal_in_place(iv, &mut buf);
        buf.extend_from_slice(&tag);
        buf
    }

    fn seal_in_place(&self, iv: &[u8; IV_LEN], buf: &mut [u8]) -> Tag {
        self.0
            .encrypt_in_place_detached(Nonce::from_slice(iv), b"", buf)
            // Only fails for plaintexts beyond GCM's 64 GiB limit.
            .unwrap_or_else(|_| panic!("plaintext too long for AES-GCM: {} bytes", buf.len()))
    }

    /// Plaintext of `ciphertext` (with its tag at the end).
    pub fn open(&self, iv: &[u8; IV_LEN], ciphertext: &[u8]) -> Result<Vec<u8>, OpenFailed> {
        let body_len = ciphertext.len().checked_sub(TAG_LEN).ok_or(OpenFailed)?;
        let (body, tag) = ciphertext.split_at(body_len);
        let mut buf = body.to_vec();
        self.0
            .decrypt_in_place_detached(Nonce::from_slice(iv), b"", &mut buf, Tag::from_slice(tag))
            .map_err(|_| OpenFailed)?;
        Ok(buf)
    }

    /// The wire message carrying `plaintext` sealed under this key with `iv`.
    pub fn message(&self, iv: &[u8; IV_LEN], plaintext: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; message_len(plaintext.len())];
        self.message_into(iv, plaintext, &mut Vec::new(), &mut out);
        out
    }

    /// Writes the wire message into `out`, which must be exactly
    /// [`message_len`]`(plaintext.len())` bytes long; `scratch` is reused between calls.
    pub fn message_into(
        &self,
        iv: &[u8; IV_LEN],
        plaintext: &[u8],
        scratch: &mut Vec<u8>,
        out: &mut [u8],
    ) {
        assert_eq!(
            out.len(),
            message_len(plaintext.len()),
            "message buffer size"
        );
        scratch.clear();
        scratch.extend_from_slice(plaintext);
        let tag = self.seal_in_place(iv, scratch);
        scratch.extend_from_slice(&tag);
        let mut at = 0;
        put(out, &mut at, HEAD);
        at += encode_base64(iv, &mut out[at..]);
        put(out, &mut at, MIDDLE);
        at += encode_base64(scratch, &mut out[at..]);
        put(out, &mut at, TAIL);
        debug_assert_eq!(at, out.len());
    }
}

/// Length of the wire message carrying a `plaintext_len`-byte plaintext.
pub fn message_len(plaintext_len: usize) -> usize {
    HEAD.len()
        + base64_len(IV_LEN)
        + MIDDLE.len()
        + base64_len(plaintext_len + TAG_LEN)
        + TAIL.len()
}

fn encode_base64(bytes: &[u8], out: &mut [u8]) -> usize {
    let len = base64_len(bytes.len());
    STANDARD
        .encode_slice(bytes, &mut out[..len])
        .unwrap_or_else(|_| unreachable!("base64 output sized exactly"))
}

fn put(out: &mut [u8], at: &mut usize, bytes: &[u8]) {
    out[*at..*at + bytes.len()].copy_from_slice(bytes);
    *at += bytes.len();
}

/// Length of the padded base64 of `n` bytes.
pub fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Ciphertext followed by the 16-byte tag.
pub fn seal(key: &[u8; KEY_LEN], iv: &[u8; IV_LEN], plaintext: &[u8]) -> Vec<u8> {
    Sealer::new(key).seal(iv, plaintext)
}

/// Plaintext of `ciphertext` (with its tag at the end).
pub fn open(
    key: &[u8; KEY_LEN],
    iv: &[u8; IV_LEN],
    ciphertext: &[u8],
) -> Result<Vec<u8>, OpenFailed> {
    Sealer::new(key).open(iv, ciphertext)
}

/// Number of (key, IV) pairs in a batch: `keys` holds n concatenated 32-byte keys and `ivs`
/// n concatenated 12-byte IVs.
pub fn batch_len(keys: &[u8], ivs: &[u8]) -> Result<usize, BatchMismatch> {
    let n = keys.len() / KEY_LEN;
    if !keys.len().is_multiple_of(KEY_LEN) || ivs.len() != n * IV_LEN {
        return Err(BatchMismatch {
            keys_len: keys.len(),
            ivs_len: ivs.len(),
        });
    }
    Ok(n)
}

/// The i-th key and IV of a batch checked with [`batch_len`].
pub fn batch_item<'a>(
    keys: &'a [u8],
    ivs: &'a [u8],
    i: usize,
) -> (&'a [u8; KEY_LEN], &'a [u8; IV_LEN]) {
    let key = keys[i * KEY_LEN..(i + 1) * KEY_LEN]
        .try_into()
        .unwrap_or_else(|_| unreachable!("32-byte slice"));
    let iv = ivs[i * IV_LEN..(i + 1) * IV_LEN]
        .try_into()
        .unwrap_or_else(|_| unreachable!("12-byte slice"));
    (key, iv)
}

/// `plaintext` sealed once per key: `keys` holds n concatenated 32-byte keys and `ivs` n
/// concatenated 12-byte IVs; the i-th result is the wire message for the i-th key and IV.
pub fn seal_messages(
    keys: &[u8],
    ivs: &[u8],
    plaintext: &[u8],
) -> Result<Vec<Vec<u8>>, BatchMismatch> {
    let n = batch_len(keys, ivs)?;
    let mut scratch = Vec::with_capacity(plaintext.len() + TAG_LEN);
    Ok((0..n)
        .map(|i| {
            let (key, iv) = batch_item(keys, ivs, i);
            let mut out = vec![0u8; message_len(plaintext.len())];
            Sealer::new(key).message_into(iv, plaintext, &mut scratch, &mut out);
            out
        })
        .collect())
}
