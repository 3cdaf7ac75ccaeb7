"""The built-in scheme's pieces, without sockets: known answers, encodings, the key store."""

from __future__ import annotations

import base64
import os

import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from roomcast import _core
from roomcast.crypto import (
    HKDF_INFO,
    DecryptionError,
    EcdhClient,
    EcdhScheme,
    b64decode,
    b64encode,
    derive_key,
    export_public_key,
    hkdf_sha256,
    import_public_key,
    open_sealed,
    seal,
)

h = bytes.fromhex

# AES-256-GCM test cases 13-15 (McGrew & Viega, reused by NIST's GCM validation).
GCM_VECTORS = [
    ("00" * 32, "00" * 12, "", "530f8afbc74536b9a963b4f1c4cb738b"),
    (
        "00" * 32,
        "00" * 12,
        "00" * 16,
        "cea7403d4d606b6e074ec5d3baf39d18" + "d0d1c8a799996bf0265b98b5d48ab919",
    ),
    (
        "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        "cafebabefacedbaddecaf888",
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
        "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad"
        "b094dac5d93471bdec1a502270e3cc6c",
    ),
]

# RFC 5903 §8.1: ECDH on the 256-bit random ECP group (P-256).
RFC5903_I = 0xC88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433
RFC5903_R = 0xC6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53
RFC5903_GIX = "dad0b65394221cf9b051e1feca5787d098dfe637fc90b9ef945d0c3772581180"
RFC5903_GIR = "d6840f6b42f6edafd13116e0e12565202fef8e9ece7dce03812464d04b9442de"


@pytest.mark.parametrize(("key", "iv", "plaintext", "expected"), GCM_VECTORS)
def test_aes_gcm_known_answers_from_python_and_from_the_rust_core(key, iv, plaintext, expected):
    sealed = seal(AESGCM(h(key)), h(plaintext), iv=h(iv))
    assert sealed == {"iv": b64encode(h(iv)), "ct": b64encode(h(expected))}
    assert open_sealed(AESGCM(h(key)), sealed) == h(plaintext)
    [message] = _core.seal_messages(h(key), h(iv), h(plaintext))
    assert orjson.loads(message) == {"event": "encrypted", "data": sealed}


def test_rust_and_python_messages_are_the_same_bytes():
    key, iv = os.urandom(32), os.urandom(12)
    plaintext = orjson.dumps({"event": "chat", "data": {"text": "héllo ✓", "n": [1, None]}})
    [native] = _core.seal_messages(key, iv, plaintext)
    python = orjson.dumps({"event": "encrypted", "data": seal(AESGCM(key), plaintext, iv=iv)})
    assert native == python


def test_seal_messages_refuses_mismatched_keys_and_ivs():
    with pytest.raises(ValueError, match="same number"):
        _core.seal_messages(bytes(64), bytes(12), b"x")
    assert _core.seal_messages(b"", b"", b"x") == []


def test_hkdf_sha256_known_answer_rfc5869_case_1():
    okm = hkdf_sha256(b"\x0b" * 22, h("000102030405060708090a0b0c"), h("f0f1f2f3f4f5f6f7f8f9"), 42)
    assert okm == h(
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_ecdh_p256_known_answer_rfc5903_and_derived_key():
    i = ec.derive_private_key(RFC5903_I, ec.SECP256R1())
    r = ec.derive_private_key(RFC5903_R, ec.SECP256R1())
    assert b64decode(export_public_key(i))[1:33] == h(RFC5903_GIX)
    assert i.exchange(ec.ECDH(), r.public_key()) == h(RFC5903_GIR)
    salt = bytes(range(32))
    expected = HKDF(hashes.SHA256(), 32, salt, HKDF_INFO.encode()).derive(h(RFC5903_GIR))
    assert derive_key(i, r.public_key(), salt) == expected
    assert derive_key(r, i.public_key(), salt) == expected


@pytest.mark.parametrize("text", ["", "abc", "ab=c", "YWJj\n", "YW Jj", "YWJj===", "YW-_", None, 5])
def test_b64decode_is_as_strict_as_the_original(text):
    with pytest.raises(ValueError):
        b64decode(text)


def test_b64_round_trip_is_standard_and_padded():
    assert b64encode(b"\xfb\xff") == "+/8="
    assert b64decode("+/8=") == b"\xfb\xff"


def test_import_public_key_takes_only_uncompressed_p256_points():
    key = ec.generate_private_key(ec.SECP256R1())
    raw = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    assert import_public_key(b64encode(raw)) == key.public_key()
    compressed = key.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    off_curve = raw[:-1] + bytes([raw[-1] ^ 1])
    other_curve = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )
    for bad in (compressed, off_curve, other_curve, b"\x04" + bytes(64)):
        with pytest.raises(ValueError):
            import_public_key(b64encode(bad))


class _Client:
    def __init__(self, id: str) -> None:
        self.id = id


def _handshake(scheme: EcdhScheme, client_id: str) -> EcdhClient:
    client = EcdhClient()
    result = scheme.handshake_fn(client_id, None, client.authenticate_data("t"))
    assert result is not None
    client.complete({"serverPublicKey": result["server_public_key"], "salt": result["salt"]})
    return client


def test_scheme_handshake_gives_one_server_key_and_a_fresh_salt_per_client():
    scheme = EcdhScheme()
    results = [
        scheme.handshake_fn(f"c{i}", None, EcdhClient().authenticate_data("t")) for i in (1, 2)
    ]
    assert results[0]["server_public_key"] == results[1]["server_public_key"] == scheme.public_key
    assert len(b64decode(results[0]["salt"])) == 32
    assert results[0]["salt"] != results[1]["salt"]
    assert len(scheme) == 2


@pytest.mark.parametrize(
    "data", [{}, {"publicKey": None}, {"publicKey": "bm9wZQ=="}, {"publicKey": 7}]
)
def test_scheme_refuses_a_handshake_without_a_usable_public_key(data):
    scheme = EcdhScheme()
    assert scheme.handshake_fn("c", None, data) is None
    assert len(scheme) == 0


@pytest.mark.parametrize("native", [True, False])
def test_scheme_seal_batch_is_readable_by_each_client_and_skips_unknown_ones(native):
    scheme = EcdhScheme(native=native)
    clients = {cid: _handshake(scheme, cid) for cid in ("a", "b")}
    out = scheme.seal_batch([_Client("a"), _Client("gone"), _Client("b")], "chat", {"n": 1})
    assert out[1] is None
    for cid, message in (("a", out[0]), ("b", out[2])):
        assert clients[cid].decrypt(orjson.loads(message)) == {"event": "chat", "data": {"n": 1}}
    with pytest.raises(DecryptionError):
        clients["a"].decrypt(orjson.loads(out[2]))


def test_scheme_opens_what_the_client_sealed_and_forgets_keys():
    scheme = EcdhScheme()
    client = _handshake(scheme, "c")
    message = client.encrypt("ping", {"x": 1})
    assert orjson.loads(scheme.open_inbound("c", message["data"])) == {
        "event": "ping",
        "data": {"x": 1},
    }
    assert client.decrypt(scheme.outbound_transformer(_Client("c"), "pong", None)) == {
        "event": "pong",
        "data": None,
    }
    tampered = dict(message["data"])
    ct = bytearray(base64.b64decode(tampered["ct"]))
    ct[0] ^= 1
    tampered["ct"] = b64encode(bytes(ct))
    for bad in (tampered, {"iv": "AAAA", "ct": message["data"]["ct"]}, {"iv": 1}, "x", None):
        with pytest.raises(DecryptionError):
            scheme.open_inbound("c", bad)
    scheme.forget("c")
    assert "c" not in scheme and len(scheme) == 0
    assert scheme.outbound_transformer(_Client("c"), "pong", 1) is None
    with pytest.raises(DecryptionError, match="no encrypted session"):
        scheme.open_inbound("c", message["data"])


def test_a_different_hkdf_info_gives_incompatible_keys():
    scheme = EcdhScheme(hkdf_info="my-app-v1")
    client = EcdhClient()
    result = scheme.handshake_fn("c", None, client.authenticate_data("t"))
    client.complete({"serverPublicKey": result["server_public_key"], "salt": result["salt"]})
    with pytest.raises(DecryptionError):
        client.decrypt(scheme.outbound_transformer(_Client("c"), "e", 1))


def test_client_needs_the_connected_data_before_it_can_seal():
    with pytest.raises(RuntimeError, match="complete"):
        EcdhClient().encrypt("e", 1)
