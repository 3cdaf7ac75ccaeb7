//! Known-answer tests for AES-256-GCM sealing (test cases 13-15 of McGrew & Viega, "The
//! Galois/Counter Mode of Operation", the vectors NIST's GCM validation reuses) and the wire
//! message built around it.

use roomcast_core::seal::{
    base64_len, message_len, open, seal, seal_messages, BatchMismatch, OpenFailed, Sealer, IV_LEN,
    KEY_LEN,
};

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn key(text: &str) -> [u8; KEY_LEN] {
    hex(text).try_into().expect("32-byte key")
}

fn iv(text: &str) -> [u8; IV_LEN] {
    hex(text).try_into().expect("12-byte iv")
}

const ZERO_KEY: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const ZERO_IV: &str = "000000000000000000000000";
const TC15_KEY: &str = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
const TC15_IV: &str = "cafebabefacedbaddecaf888";
const TC15_PT: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                       1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
const TC15_CT: &str = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                       8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad";
const TC15_TAG: &str = "b094dac5d93471bdec1a502270e3cc6c";

#[test]
fn gcm_test_case_13_empty_plaintext_is_the_tag_alone() {
    let out = seal(&key(ZERO_KEY), &iv(ZERO_IV), b"");
    assert_eq!(out, hex("530f8afbc74536b9a963b4f1c4cb738b"));
}

#[test]
fn gcm_test_case_14_one_zero_block() {
    let out = seal(&key(ZERO_KEY), &iv(ZERO_IV), &[0; 16]);
    assert_eq!(
        out,
        hex("cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919")
    );
}

#[test]
fn gcm_test_case_15_four_blocks() {
    let out = seal(&key(TC15_KEY), &iv(TC15_IV), &hex(TC15_PT));
    let mut expected = hex(TC15_CT);
    expected.extend(hex(TC15_TAG));
    assert_eq!(out, expected);
}

#[test]
fn open_reverses_seal_and_refuses_tampering() {
    let k = key(TC15_KEY);
    let nonce = iv(TC15_IV);
    let mut sealed = seal(&k, &nonce, b"{\"event\":\"chat\",\"data\":1}");
    assert_eq!(
        open(&k, &nonce, &sealed).as_deref(),
        Ok(&b"{\"event\":\"chat\",\"data\":1}"[..])
    );
    sealed[3] ^= 1;
    assert_eq!(open(&k, &nonce, &sealed), Err(OpenFailed));
    assert_eq!(open(&k, &nonce, &sealed[..10]), Err(OpenFailed));
    assert_eq!(
        open(&key(ZERO_KEY), &nonce, &seal(&k, &nonce, b"x")),
        Err(OpenFailed)
    );
}

#[test]
fn message_is_the_wire_json_with_padded_standard_base64() {
    let message = Sealer::new(&key(ZERO_KEY)).message(&iv(TC15_IV), &[0; 16]);
    let text = String::from_utf8(message).expect("ascii");
    // ct is test case 14's ciphertext and tag (the IV differs, so not quite): check the
    // shape with the zero IV and the bytes with test case 14.
    assert!(text.starts_with(r#"{"event":"encrypted","data":{"iv":"yv66vvrO263eyviI","ct":""#));
    let zero = Sealer::new(&key(ZERO_KEY)).message(&iv(ZERO_IV), &[0; 16]);
    assert_eq!(
        String::from_utf8(zero).expect("ascii"),
        r#"{"event":"encrypted","data":{"iv":"AAAAAAAAAAAAAAAA","ct":"zqdAPU1ga24HTsXTuvOdGNDRyKeZmWvwJluYtdSKuRk="}}"#
    );
}

#[test]
fn seal_messages_uses_the_ith_key_with_the_ith_iv() {
    let keys = [hex(ZERO_KEY), hex(TC15_KEY)].concat();
    let ivs = [hex(ZERO_IV), hex(TC15_IV)].concat();
    let plaintext = hex(TC15_PT);
    let out = seal_messages(&keys, &ivs, &plaintext).expect("whole batch");
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[0],
        Sealer::new(&key(ZERO_KEY)).message(&iv(ZERO_IV), &plaintext)
    );
    assert_eq!(
        out[1],
        Sealer::new(&key(TC15_KEY)).message(&iv(TC15_IV), &plaintext)
    );
    assert_eq!(seal_messages(b"", b"", b"x"), Ok(Vec::new()));
}

#[test]
fn seal_messages_refuses_mismatched_batches() {
    let mismatch = |k: usize, i: usize| BatchMismatch {
        keys_len: k,
        ivs_len: i,
    };
    assert_eq!(
        seal_messages(&[0; 64], &[0; 12], b"x"),
        Err(mismatch(64, 12))
    );
    assert_eq!(
        seal_messages(&[0; 31], &[0; 12], b"x"),
        Err(mismatch(31, 12))
    );
    assert_eq!(
        seal_messages(&[0; 32], &[0; 13], b"x"),
        Err(mismatch(32, 13))
    );
}

#[test]
fn base64_len_counts_padding() {
    assert_eq!(base64_len(0), 0);
    assert_eq!(base64_len(1), 4);
    assert_eq!(base64_len(12), 16);
    assert_eq!(base64_len(32), 44);
}

#[test]
fn message_into_reuses_scratch_and_fills_exactly_message_len_bytes() {
    let sealer = Sealer::new(&key(TC15_KEY));
    let mut scratch = Vec::new();
    for len in [0, 1, 2, 3, 100, 4096] {
        let plaintext = vec![b'a'; len];
        let mut out = vec![0u8; message_len(len)];
        sealer.message_into(&iv(TC15_IV), &plaintext, &mut scratch, &mut out);
        assert_eq!(out, sealer.message(&iv(TC15_IV), &plaintext));
    }
}
