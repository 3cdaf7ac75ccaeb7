"""HS256 JSON Web Tokens for the built-in authenticator (RFC 7519, HMAC-SHA256 only)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import orjson


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(claims: dict[str, Any], secret: str) -> str:
    header = _b64encode(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    body = _b64encode(orjson.dumps(claims))
    signing_input = f"{header}.{body}".encode("ascii")
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{body}.{_b64encode(signature)}"


def verify(token: object, secret: str, now: float | None = None) -> dict[str, Any] | None:
    """The claims of a valid, unexpired HS256 token signed with `secret`, else None."""
    if type(token) is not str or token.count(".") != 2:
        return None
    header_b64, body_b64, signature_b64 = token.split(".")
    try:
        signing_input = f"{header_b64}.{body_b64}".encode("ascii")
        header = orjson.loads(_b64decode(header_b64))
        signature = _b64decode(signature_b64)
        claims = orjson.loads(_b64decode(body_b64))
    except ValueError:  # bad base64, non-ASCII or bad JSON (JSONDecodeError is a ValueError)
        return None
    if type(header) is not dict or header.get("alg") != "HS256" or type(claims) is not dict:
        return None
    expected = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        return None
    now = time.time() if now is None else now
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if isinstance(exp, int | float) and now >= exp:
        return None
    if isinstance(nbf, int | float) and now < nbf:
        return None
    return claims


class JwtAuthenticator:
    """`authenticate_fn` for `{"type": "Bearer", "token": <HS256 JWT>}`: user id from `sub`."""

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("jwt secret must not be empty")
        self.secret = secret

    def __call__(self, data: dict[str, Any]) -> dict[str, Any] | None:
        claims = verify(data.get("token"), self.secret)
        if claims is None:
            return None
        sub = claims.get("sub")
        return {"user_id": None if sub is None else str(sub), "metadata": {"claims": claims}}
