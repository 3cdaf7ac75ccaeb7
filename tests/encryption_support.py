"""An encrypted session's client side written against `cryptography` alone (SPEC §5), so a
mistake shared by both sides of roomcast.crypto would still show."""

from __future__ import annotations

import base64
import os

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from support import open_client, recv, send

# One client key pair for every test client: the server's fresh salt still gives each
# connection its own key, and P-256 key generation is not free.
_CLIENT_KEY = ec.generate_private_key(ec.SECP256R1())


class IndependentClient:
    """The client side written against `cryptography` alone, following SPEC §5."""

    def __init__(self) -> None:
        raw = _CLIENT_KEY.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        self.public_key = base64.b64encode(raw).decode()
        self.aes: AESGCM | None = None

    def complete(self, connected: dict) -> None:
        server_raw = base64.b64decode(connected["serverPublicKey"], validate=True)
        salt = base64.b64decode(connected["salt"], validate=True)
        assert len(server_raw) == 65 and server_raw[0] == 4 and len(salt) == 32
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), server_raw)
        shared = _CLIENT_KEY.exchange(ec.ECDH(), peer)
        key = HKDF(hashes.SHA256(), 32, salt, b"ignis-ecdh-p256-aes-256-gcm-v1").derive(shared)
        self.aes = AESGCM(key)

    def open(self, message: dict) -> dict:
        assert message["event"] == "encrypted" and set(message["data"]) == {"iv", "ct"}
        iv = base64.b64decode(message["data"]["iv"], validate=True)
        assert len(iv) == 12
        ct = base64.b64decode(message["data"]["ct"], validate=True)
        assert self.aes is not None
        return orjson.loads(self.aes.decrypt(iv, ct, None))

    def seal(self, event: str, data) -> dict:
        iv = os.urandom(12)
        assert self.aes is not None
        ct = self.aes.encrypt(iv, orjson.dumps({"event": event, "data": data}), None)
        b64 = base64.b64encode
        return {"event": "encrypted", "data": {"iv": b64(iv).decode(), "ct": b64(ct).decode()}}


async def encrypted_client(url: str, token: str = "user:alice"):
    """An authenticated client with an encrypted session: (ws, connected data, crypto)."""
    crypto = IndependentClient()
    ws = await open_client(url)
    data = {"type": "Bearer", "token": token, "publicKey": crypto.public_key}
    await send(ws, {"event": "authenticate", "data": data})
    message = await recv(ws)
    assert message["event"] == "connected", message
    crypto.complete(message["data"])
    return ws, message["data"], crypto
