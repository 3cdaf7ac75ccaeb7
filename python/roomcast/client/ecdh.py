"""The client half of roomcast's built-in encryption scheme (SPEC §5), on `cryptography`.

ECDH P-256 (our public key: base64 of the raw uncompressed point), HKDF-SHA256 over the
shared secret with the server's salt and info `ignis-ecdh-p256-aes-256-gcm-v1`, AES-256-GCM
with a random 12-byte IV; a sealed message is `{"event":"encrypted","data":{"iv","ct"}}` whose
plaintext is the JSON of the message. A fresh key pair for every connection.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

HKDF_INFO = b"ignis-ecdh-p256-aes-256-gcm-v1"
IV_SIZE = 12


class Handshake:
    """One connection's key pair, until the server's answer gives the session key."""

    def __init__(self) -> None:
        self._private = ec.generate_private_key(ec.SECP256R1())
        raw = self._private.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        self.public_key = base64.b64encode(raw).decode("ascii")

    def session(self, server_public_key: Any, salt: Any) -> Session:
        """The session key from `connected`'s `serverPublicKey` and `salt`; ValueError if
        they are missing or malformed."""
        if not isinstance(server_public_key, str) or not isinstance(salt, str):
            raise ValueError("the server did not encrypt this session")
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), base64.b64decode(server_public_key, validate=True)
            )
            salt_bytes = base64.b64decode(salt, validate=True)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"unusable server key material: {exc}") from None
        shared = self._private.exchange(ec.ECDH(), peer)
        key = HKDF(hashes.SHA256(), 32, salt_bytes, HKDF_INFO).derive(shared)
        return Session(key)


class Session:
    """AES-256-GCM with the session key: seal what the client sends, open what it gets."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, message: dict[str, Any]) -> bytes:
        iv = os.urandom(IV_SIZE)
        ct = self._aead.encrypt(iv, orjson.dumps(message), None)
        data = {"iv": base64.b64encode(iv).decode(), "ct": base64.b64encode(ct).decode()}
        return orjson.dumps({"event": "encrypted", "data": data})

    def open(self, data: Any) -> Any:
        """The inner message of an `encrypted` event's data; ValueError if it cannot be
        opened (malformed, wrong key, tampered)."""
        if not isinstance(data, dict):
            raise ValueError("encrypted data is not an object")
        try:
            iv = base64.b64decode(data["iv"], validate=True)
            ct = base64.b64decode(data["ct"], validate=True)
            return orjson.loads(self._aead.decrypt(iv, ct, None))
        except Exception as exc:  # KeyError, binascii.Error, InvalidTag, JSONDecodeError
            raise ValueError(f"encrypted message not opened: {type(exc).__name__}") from None
