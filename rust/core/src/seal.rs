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
        let ct_len = plaintext.len() + TAG_LEN;
        let iv_b64 = base64_len(IV_LEN);
        let ct_b64 = base64_len(ct_len);
        let total = HEAD.len() + iv_b64 + MIDDLE.len() + ct_b64 + TAIL.len();
        // Seal into the tail of the output buffer, then base64 it into place: one
        // allocation for the message and one scratch buffer for the ciphertext.
        let mut sealed = Vec::with_capacity(ct_len);
        sealed.extend_from_slice(plaintext);
        let tag = self.seal_in_place(iv, &mut sealed);
        sealed.extend_from_slice(&tag);

        let mut out = vec![0u8; total];
        let mut at = 0;
        put(&mut out, &mut at, HEAD);
        at += STANDARD
            .encode_slice(iv, &mut out[at..at + iv_b64])
            .unwrap_or_else(|_| unreachable!("iv base64 sized exactly"));
        put(&mut out, &mut at, MIDDLE);
        at += STANDARD
            .encode_slice(&sealed, &mut out[at..at + ct_b64])
            .unwrap_or_else(|_| unreachable!("ct base64 sized exactly"));
        put(&mut out, &mut at, TAIL);
        debug_assert_eq!(at, total);
        out
    }
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

/// `plaintext` sealed once per key: `keys` holds n concatenated 32-byte keys and `ivs` n
/// concatenated 12-byte IVs; the i-th result is the wire message for the i-th key and IV.
pub fn seal_messages(
    keys: &[u8],
    ivs: &[u8],
    plaintext: &[u8],
) -> Result<Vec<Vec<u8>>, BatchMismatch> {
    let mismatch = BatchMismatch {
        keys_len: keys.len(),
        ivs_len: ivs.len(),
    };
    if !keys.len().is_multiple_of(KEY_LEN) || !ivs.len().is_multiple_of(IV_LEN) {
        return Err(mismatch);
    }
    if keys.len() / KEY_LEN != ivs.len() / IV_LEN {
        return Err(mismatch);
    }
    Ok(keys
        .chunks_exact(KEY_LEN)
        .zip(ivs.chunks_exact(IV_LEN))
        .map(|(key, iv)| {
            let key: &[u8; KEY_LEN] = key.try_into().unwrap_or_else(|_| unreachable!());
            let iv: &[u8; IV_LEN] = iv.try_into().unwrap_or_else(|_| unreachable!());
            Sealer::new(key).message(iv, plaintext)
        })
        .collect())
}
