"""The built-in HS256 authenticator."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import orjson
from roomcast.jwt import JwtAuthenticator, sign, verify


def _independent_token(claims, secret, alg="HS256"):
    """A token built with the standard library only, not with roomcast's signer."""

    def b64(raw):
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(orjson.dumps({"alg": alg, "typ": "JWT"}))
    body = b64(orjson.dumps(claims))
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def test_verify_accepts_an_independently_signed_token():
    token = _independent_token({"sub": "u1", "exp": time.time() + 60}, "s3cret")
    assert verify(token, "s3cret")["sub"] == "u1"


def test_verify_refuses_wrong_secret_expired_not_yet_valid_and_other_algorithms():
    now = time.time()
    assert verify(_independent_token({"sub": "u"}, "a"), "b") is None
    assert verify(_independent_token({"sub": "u", "exp": now - 1}, "a"), "a") is None
    assert verify(_independent_token({"sub": "u", "nbf": now + 60}, "a"), "a") is None
    assert verify(_independent_token({"sub": "u"}, "a", alg="none"), "a") is None
    for junk in (None, 5, "", "a.b", "a.b.c", "é.é.é", "..."):
        assert verify(junk, "a") is None


def test_sign_and_verify_round_trip():
    assert verify(sign({"sub": "x"}, "k"), "k") == {"sub": "x"}


def test_authenticator_maps_sub_to_user_id():
    auth = JwtAuthenticator("k")
    result = auth({"type": "Bearer", "token": sign({"sub": "alice", "role": "admin"}, "k")})
    assert result == {"user_id": "alice", "metadata": {"claims": {"sub": "alice", "role": "admin"}}}
    assert auth({"token": "garbage"}) is None
    assert auth({}) is None
