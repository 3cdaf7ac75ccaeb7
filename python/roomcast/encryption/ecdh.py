"""The built-in encryption scheme: ECDH P-256, HKDF-SHA256, AES-256-GCM.

Byte-compatible with the original's ECDH helper and with browsers' WebCrypto:
- the client sends its public key as `publicKey` in the authenticate data: base64 of the raw
  uncompressed point (65 bytes, as WebCrypto's `exportKey("raw", ...)` gives it);
- the server answers, in clear in `connected`, with its own public key (same encoding) and a
  fresh random 32-byte salt (base64), one per client;
- both sides derive the session key as HKDF-SHA256(ECDH shared secret (the 32-byte x
  coordinate, WebCrypto's `deriveBits(..., 256)`), salt, info `ignis-ecdh-p256-aes-256-gcm-v1`,
  32 bytes), used as an AES-256-GCM key;
- a sealed message is `{"event":"encrypted","data":{"iv":b64,"ct":b64}}`: a random 12-byte IV,
  and the ciphertext followed by the 16-byte tag (what WebCrypto's `encrypt` returns); the
  plaintext is the UTF-8 JSON `{"event","data"}` of the message it carries.
Base64 is the standard alphabet with padding; decoding is as strict as the original's
(non-empty, a multiple of 4 long, no other characters).

`EcdhScheme` is the server side: bind it with `WebSocketServerHelper(..., encryption=scheme)`.
`EcdhClient` is the client side, for Python clients and tests.

Keys live only in memory: the scheme keeps one AES key per encrypted client and drops it when
the server reports the client gone (`forget`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .._core import seal_messages
from ..protocol.constants import WebSocketEvents
from ..protocol.messages import MISSING, encode, encode_at

logger = logging.getLogger("roomcast")

HKDF_INFO = "ignis-ecdh-p256-aes-256-gcm-v1"
SALT_SIZE = 32
KEY_SIZE = 32
IV_SIZE = 12
TAG_SIZE = 16
PUBLIC_KEY_SIZE = 65  # 0x04 || x || y

_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_CURVE = ec.SECP256R1()


class DecryptionError(ValueError):
    """A sealed message that cannot be opened (malformed, wrong key, tampered)."""


# -- primitives (all from `cryptography`; nothing home-made) -------------------------------


def b64encode(data: bytes) -> str:
    """Standard base64 with padding, as `Buffer.toString("base64")` and `btoa` write it."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: Any) -> bytes:
    """Strict standard base64; ValueError for anything the original would refuse."""
    if type(text) is not str or not text or len(text) % 4 or not _BASE64.fullmatch(text):
        raise ValueError("invalid base64")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("invalid base64") from None


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(_CURVE)


def export_public_key(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> str:
    """Base64 of the raw uncompressed point (WebCrypto `exportKey("raw")`)."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return b64encode(public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint))


def import_public_key(encoded: Any) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from base64 of its raw uncompressed point; ValueError otherwise."""
    raw = b64decode(encoded)
    if len(raw) != PUBLIC_KEY_SIZE or raw[0] != 0x04:
        raise ValueError(f"not an uncompressed P-256 point: {len(raw)} bytes")
    return ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, raw)  # checks the curve


def hkdf_sha256(secret: bytes, salt: bytes, info: bytes, length: int = KEY_SIZE) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def derive_key(
    private_key: ec.EllipticCurvePrivateKey,
    peer_public_key: ec.EllipticCurvePublicKey,
    salt: bytes,
    info: str = HKDF_INFO,
) -> bytes:
    """The 32-byte AES-256-GCM session key both sides derive."""
    shared = private_key.exchange(ec.ECDH(), peer_public_key)
    return hkdf_sha256(shared, salt, info.encode())


def seal(cipher: AESGCM, plaintext: bytes, iv: bytes | None = None) -> dict[str, str]:
    """`{"iv","ct"}` for `plaintext` (ct ends with the tag). Pass `iv` only in tests."""
    iv = os.urandom(IV_SIZE) if iv is None else iv
    return {"iv": b64encode(iv), "ct": b64encode(cipher.encrypt(iv, plaintext, None))}


def open_sealed(cipher: AESGCM, sealed: Any) -> bytes:
    """Plaintext of a `{"iv","ct"}` mapping; DecryptionError when it cannot be opened."""
    if not isinstance(sealed, Mapping):
        raise DecryptionError("sealed data is not an object")
    try:
        iv = b64decode(sealed.get("iv"))
        ct = b64decode(sealed.get("ct"))
    except ValueError as exc:
        raise DecryptionError(f"iv or ct: {exc}") from None
    if len(iv) != IV_SIZE:
        raise DecryptionError(f"iv must be {IV_SIZE} bytes, got {len(iv)}")
    if len(ct) < TAG_SIZE:
        raise DecryptionError(f"ct shorter than the {TAG_SIZE}-byte tag")
    try:
        return cipher.decrypt(iv, ct, None)
    except InvalidTag:
        raise DecryptionError("ciphertext does not authenticate") from None


# -- the server side -------------------------------------------------------------------------


class EcdhScheme:
    """Server side of the built-in scheme: one server key pair, one derived key per client.

    Bind it with `WebSocketServerHelper(..., encryption=scheme)` (or bind its `handshake_fn`
    and `outbound_transformer` methods: the helper recognises them as this scheme's).
    `native` seals fan-out in the Rust core (outside the GIL) instead of Python; both give
    the same bytes. Not thread-safe: use it from the server's event loop.
    """

    def __init__(
        self,
        *,
        private_key: ec.EllipticCurvePrivateKey | None = None,
        hkdf_info: str = HKDF_INFO,
        native: bool = True,
    ) -> None:
        self._private_key = private_key or generate_private_key()
        self.public_key = export_public_key(self._private_key)
        self.hkdf_info = hkdf_info
        self.native = native
        # client id -> (raw key, cipher with its key schedule)
        self._sessions: dict[str, tuple[bytes, AESGCM]] = {}

    def __len__(self) -> int:
        """Number of clients whose key is held."""
        return len(self._sessions)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._sessions

    def handshake_fn(
        self, client_id: str, user_id: str | None, data: Mapping[str, Any]
    ) -> dict[str, str] | None:
        """Derive the client's key from its `publicKey`; None (refused) when it has none."""
        try:
            peer = import_public_key(data.get("publicKey"))
        except ValueError as exc:
            logger.info("handshake refused for %s: publicKey: %s", client_id, exc)
            return None
        salt = os.urandom(SALT_SIZE)
        key = derive_key(self._private_key, peer, salt, self.hkdf_info)
        self._sessions[client_id] = (key, AESGCM(key))
        return {"server_public_key": self.public_key, "salt": b64encode(salt)}

    def outbound_transformer(
        self,
        client: Any,
        event: str,
        data: Any = MISSING,
        room: str | None = None,
        offset: int | None = None,
    ) -> Any:
        """The message sealed for one client; None (dropped) when it has no key. A history
        room's message (`room`, `offset`) has them sealed in with it."""
        session = self._sessions.get(client.id)
        if session is None:
            return None
        plaintext = encode_at(event, data, room, offset)
        return {"event": WebSocketEvents.ENCRYPTED, "data": seal(session[1], plaintext)}

    def seal_batch(
        self,
        clients: Sequence[Any],
        event: str,
        data: Any,
        room: str | None = None,
        offset: int | None = None,
    ) -> list[bytes | None]:
        """One encoded wire message per client (None where it has no key), for fan-out."""
        plaintext = encode_at(event, data, room, offset)
        sessions = [self._sessions.get(client.id) for client in clients]
        if not self.native:
            return [None if s is None else _message(seal(s[1], plaintext)) for s in sessions]
        keys = [s[0] for s in sessions if s is not None]
        sealed = iter(seal_messages(b"".join(keys), os.urandom(IV_SIZE * len(keys)), plaintext))
        return [None if s is None else next(sealed) for s in sessions]

    def open_inbound(self, client_id: str, data: Any) -> bytes:
        """Plaintext of the `data` of an `encrypted` event from a client; DecryptionError
        when the client has no key or `data` cannot be opened."""
        session = self._sessions.get(client_id)
        if session is None:
            raise DecryptionError("no encrypted session")
        return open_sealed(session[1], data)

    def forget(self, client_id: str) -> None:
        """Drop the client's key (the server calls this when the client is gone)."""
        self._sessions.pop(client_id, None)


def _message(sealed: dict[str, str]) -> bytes:
    return orjson.dumps({"event": WebSocketEvents.ENCRYPTED, "data": sealed})


# -- the client side -------------------------------------------------------------------------


class EcdhClient:
    """Client side of the built-in scheme (what a browser does with WebCrypto)."""

    def __init__(
        self,
        *,
        private_key: ec.EllipticCurvePrivateKey | None = None,
        hkdf_info: str = HKDF_INFO,
    ) -> None:
        self._private_key = private_key or generate_private_key()
        self.public_key = export_public_key(self._private_key)
        self.hkdf_info = hkdf_info
        self._cipher: AESGCM | None = None

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """This client's ECDH key (another client may reuse it: one derivation each)."""
        return self._private_key

    @property
    def ready(self) -> bool:
        """True once `complete` derived the session key."""
        return self._cipher is not None

    def authenticate_data(self, token: str, type: str = "Bearer") -> dict[str, str]:
        """The `data` of the `authenticate` event, with this client's public key."""
        return {"type": type, "token": token, "publicKey": self.public_key}

    def complete(self, connected: Mapping[str, Any]) -> None:
        """Derive the session key from the `connected` data (`serverPublicKey`, `salt`)."""
        peer = import_public_key(connected.get("serverPublicKey"))
        salt = b64decode(connected.get("salt"))
        self._cipher = AESGCM(derive_key(self._private_key, peer, salt, self.hkdf_info))

    def encrypt(self, event: str, data: Any = MISSING) -> dict[str, Any]:
        """The `encrypted` message carrying `{"event","data"}` to the server."""
        return {"event": WebSocketEvents.ENCRYPTED, "data": seal(self._need(), encode(event, data))}

    def decrypt(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """The `{"event","data"}` inside an `encrypted` message from the server."""
        if message.get("event") != WebSocketEvents.ENCRYPTED:
            raise DecryptionError(f"not an encrypted message: {message.get('event')!r}")
        inner = orjson.loads(open_sealed(self._need(), message.get("data")))
        if not isinstance(inner, dict):
            raise DecryptionError("plaintext is not a JSON object")
        return inner

    def _need(self) -> AESGCM:
        if self._cipher is None:
            raise RuntimeError("no session key yet: call complete() with the connected data")
        return self._cipher
