"""The JWT authenticator: every algorithm family, pinning, forgeries, claims, a JWKS.

Tokens are made here independently of roomcast: with PyJWT, and for one case per family by
hand (hmac, cryptography).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt_support import SECRET, JwksServer, b64, by_hand, hs256_by_hand, jwk
from roomcast import JwtAuthenticator
from support import authed, closed_with, eventually, open_client, recv, run, running, send


def verify(auth: JwtAuthenticator, token: Any) -> dict[str, Any] | None:
    return run(auth.verify(token))


def pem(public_key: Any) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
P256_KEY = ec.generate_private_key(ec.SECP256R1())
P384_KEY = ec.generate_private_key(ec.SECP384R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()


# -- every algorithm family --------------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_tokens_from_pyjwt_are_accepted(alg):
    auth = JwtAuthenticator(SECRET)
    token = jwt.encode({"sub": "ann", "exp": time.time() + 60}, SECRET, algorithm=alg)
    result = run(auth({"type": "Bearer", "token": token}))
    assert result["user_id"] == "ann"
    assert result["metadata"]["claims"]["sub"] == "ann"


def test_a_hs256_token_made_by_hand_with_hmac_is_accepted():
    claims = {"sub": "bob", "role": "admin", "exp": int(time.time()) + 60}
    assert verify(JwtAuthenticator(SECRET), hs256_by_hand(claims)) == claims


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256"])
def test_rsa_tokens_are_accepted_with_the_public_key(alg):
    auth = JwtAuthenticator(public_key=pem(RSA_KEY.public_key()))
    token = jwt.encode({"sub": "ann"}, RSA_KEY, algorithm=alg)
    assert verify(auth, token) == {"sub": "ann"}


def test_an_rs256_token_made_by_hand_with_cryptography_is_accepted():
    token = by_hand(
        {"alg": "RS256"},
        {"sub": "rsa-hand"},
        lambda data: RSA_KEY.sign(data, padding.PKCS1v15(), hashes.SHA256()),
    )
    assert verify(JwtAuthenticator(public_key=RSA_KEY.public_key()), token) == {"sub": "rsa-hand"}


@pytest.mark.parametrize(("key", "alg"), [(P256_KEY, "ES256"), (P384_KEY, "ES384")])
def test_ecdsa_tokens_are_accepted_with_the_public_key(key, alg):
    auth = JwtAuthenticator(public_key=pem(key.public_key()))
    assert auth.algorithms == [alg]
    assert verify(auth, jwt.encode({"sub": "ec"}, key, algorithm=alg)) == {"sub": "ec"}


def test_an_es256_token_made_by_hand_with_cryptography_is_accepted():
    def sign(data: bytes) -> bytes:  # JWS wants r || s, 32 bytes each, not DER
        r, s = decode_dss_signature(P256_KEY.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    token = by_hand({"alg": "ES256"}, {"sub": "ec-hand"}, sign)
    assert verify(JwtAuthenticator(public_key=P256_KEY.public_key()), token) == {"sub": "ec-hand"}


def test_eddsa_tokens_are_accepted_including_one_made_by_hand():
    auth = JwtAuthenticator(public_key=pem(ED_KEY.public_key()))
    assert verify(auth, jwt.encode({"sub": "ed"}, ED_KEY, algorithm="EdDSA")) == {"sub": "ed"}
    assert verify(auth, by_hand({"alg": "EdDSA"}, {"sub": "ed2"}, ED_KEY.sign)) == {"sub": "ed2"}


# -- algorithms pinned to the key ----------------------------------------------------------


def test_algorithm_none_is_never_accepted():
    unsigned = b64(b'{"alg":"none"}') + "." + b64(b'{"sub":"x"}') + "."
    assert verify(JwtAuthenticator(SECRET), unsigned) is None
    assert verify(JwtAuthenticator(SECRET), unsigned + "AAAA") is None
    with pytest.raises(ValueError, match="'none' is never accepted"):
        JwtAuthenticator(SECRET, algorithms=["none"])


def test_a_public_key_used_as_an_hmac_secret_is_refused():
    """The key-confusion attack: HS256 signed with the RSA public key's PEM text."""
    public_pem = pem(RSA_KEY.public_key())
    forged = by_hand(
        {"alg": "HS256"}, {"sub": "mallory"}, lambda d: hmac.new(public_pem, d, "sha256").digest()
    )
    assert verify(JwtAuthenticator(public_key=public_pem), forged) is None


def test_algorithms_outside_the_keys_family_are_refused():
    p256 = JwtAuthenticator(public_key=P256_KEY.public_key())
    assert verify(p256, jwt.encode({"sub": "x"}, P384_KEY, algorithm="ES384")) is None
    rsa_only_rs256 = JwtAuthenticator(public_key=RSA_KEY.public_key(), algorithms=["RS256"])
    assert verify(rsa_only_rs256, jwt.encode({"sub": "x"}, RSA_KEY, algorithm="PS256")) is None
    hs = JwtAuthenticator("k" * 40)  # 40 bytes: enough for HS256 only
    assert hs.algorithms == ["HS256"]
    assert verify(hs, jwt.encode({"sub": "x"}, "k" * 40, algorithm="HS256")) == {"sub": "x"}
    with pytest.raises(ValueError, match="no algorithm fits the key"):
        JwtAuthenticator("k" * 40, algorithms=["HS512"])


# -- forgeries -----------------------------------------------------------------------------


def test_junk_appended_to_or_changed_in_the_signature_is_refused():
    auth = JwtAuthenticator(SECRET)
    token = hs256_by_hand({"sub": "ann"})
    assert verify(auth, token) == {"sub": "ann"}
    for junk in ("=", "==", "A", "AA", "!", " ", "\n", "%3D", ".", ".x"):
        assert verify(auth, token + junk) is None, junk
    # 32 bytes of HMAC: 43 characters whose last one carries 2 unused bits; a lenient decoder
    # maps a different last character onto the same bytes.
    head, sig = token.rsplit(".", 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(sig[-1]) ^ 1]
    assert base64.urlsafe_b64decode(sig[:-1] + twin + "=") == base64.urlsafe_b64decode(sig + "=")
    assert verify(auth, f"{head}.{sig[:-1]}{twin}") is None


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
def test_time_claims_that_are_not_numbers_are_refused(claim):
    auth = JwtAuthenticator(SECRET)
    now = int(time.time())
    for value in (str(now - 100), str(now + 100), True, None, [now + 100]):
        assert verify(auth, hs256_by_hand({"sub": "a", claim: value})) is None, value


def test_an_unknown_critical_header_is_refused():
    auth = JwtAuthenticator(SECRET)
    assert verify(auth, hs256_by_hand({"sub": "a"}, crit=["exp-ext"], **{"exp-ext": 1})) is None
    assert verify(auth, hs256_by_hand({"sub": "a"}, crit=[])) is None


def test_empty_and_short_secrets_are_refused_at_construction():
    with pytest.raises(ValueError, match="must not be empty"):
        JwtAuthenticator("")
    with pytest.raises(ValueError, match="must not be empty"):
        JwtAuthenticator(b"")
    with pytest.raises(ValueError, match="too short: 31 bytes"):
        JwtAuthenticator("x" * 31)
    with pytest.raises(ValueError, match="exactly one of"):
        JwtAuthenticator()
    with pytest.raises(ValueError, match="exactly one of"):
        JwtAuthenticator(SECRET, public_key=pem(ED_KEY.public_key()))


def test_a_short_secret_works_only_when_allowed_and_warns_nothing():
    auth = JwtAuthenticator("short", allow_short_secret=True)
    # filterwarnings=error: PyJWT's short-key warning would fail this.
    assert verify(auth, hs256_by_hand({"sub": "a"}, "short")) == {"sub": "a"}
    assert verify(auth, hs256_by_hand({"sub": "a"}, "other")) is None


def test_wrong_key_expired_not_yet_valid_and_garbage_are_refused():
    auth = JwtAuthenticator(SECRET)
    now = time.time()
    assert verify(auth, hs256_by_hand({"sub": "u"}, "t" * 64)) is None
    assert verify(auth, hs256_by_hand({"sub": "u", "exp": now - 1})) is None
    assert verify(auth, hs256_by_hand({"sub": "u", "nbf": now + 60})) is None
    for junk in (None, 5, "", "a.b", "a.b.c", "é.é.é", "...", b"x.y.z"):
        assert verify(auth, junk) is None
    assert run(auth({})) is None
    assert run(auth({"token": ["x"]})) is None


def test_rsa_keys_shorter_than_2048_bits_and_private_keys_are_refused():
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="rsa key too short: 1024 bits"):
        JwtAuthenticator(public_key=pem(small.public_key()))
    private_pem = ED_KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="this is a private key"):
        JwtAuthenticator(public_key=private_pem)


# -- claims ----------------------------------------------------------------------------------


def test_audience_issuer_and_leeway():
    auth = JwtAuthenticator(SECRET, audience="chat", issuer="https://id.example", leeway=30)
    now = time.time()
    good = {"sub": "a", "aud": "chat", "iss": "https://id.example", "exp": now - 10}
    assert verify(auth, hs256_by_hand(good)) is not None  # 10 s late, within the leeway
    assert verify(auth, hs256_by_hand({**good, "exp": now - 60})) is None
    assert verify(auth, hs256_by_hand({**good, "aud": "other"})) is None
    assert verify(auth, hs256_by_hand({**good, "iss": "https://evil.example"})) is None
    without_aud = dict(good)
    del without_aud["aud"]
    assert verify(auth, hs256_by_hand(without_aud)) is None
    # Without a configured audience, a token meant for some audience is not taken.
    assert verify(JwtAuthenticator(SECRET), hs256_by_hand({"sub": "a", "aud": "x"})) is None


def test_the_user_claim_becomes_the_user_id():
    auth = JwtAuthenticator(SECRET, user_claim="email")
    result = run(auth({"token": hs256_by_hand({"sub": "1", "email": "ann@example.com"})}))
    assert result["user_id"] == "ann@example.com"
    assert run(auth({"token": hs256_by_hand({"sub": "1", "email": 42})}))["user_id"] == "42"
    anonymous = run(auth({"token": hs256_by_hand({"sub": "1"})}))
    assert anonymous is not None and anonymous["user_id"] is None
    assert run(auth({"token": hs256_by_hand({"email": {"x": 1}})})) is None


# -- a JWKS served over HTTP -----------------------------------------------------------------


@pytest.fixture
def jwks():
    server = JwksServer([jwk(RSA_KEY, "k1", "RS256")])
    try:
        yield server
    finally:
        server.stop()


def test_jwks_keys_are_fetched_cached_and_a_new_kid_is_fetched_on_rotation(jwks):
    auth = JwtAuthenticator(jwks_url=jwks.url, jwks_allow_http=True)  # default intervals

    async def body():
        async with running(authenticate_fn=auth) as node:
            token = jwt.encode({"sub": "ann"}, RSA_KEY, algorithm="RS256", headers={"kid": "k1"})
            ws, data = await authed(node.url, token)
            assert data["userId"] == "ann"
            again, _ = await authed(node.url, token)
            assert jwks.requests == 1  # cached
            # The provider rotates to an EC key: a token naming it makes us fetch again.
            jwks.keys = [jwk(RSA_KEY, "k1", "RS256"), jwk(P256_KEY, "k2", "ES256")]
            rotated = jwt.encode({"sub": "bob"}, P256_KEY, algorithm="ES256", headers={"kid": "k2"})
            ws2, data2 = await authed(node.url, rotated)
            assert data2["userId"] == "bob"
            assert jwks.requests == 2
            # A JWK pinned to ES256 does not verify another algorithm, nor a key another kid.
            wrong_kid = jwt.encode({"sub": "x"}, P256_KEY, algorithm="ES256", headers={"kid": "k1"})
            bad = await open_client(node.url)
            await send(bad, {"event": "authenticate", "data": {"token": wrong_kid}})
            code, _, received = await closed_with(bad)
            assert code == 4003 and received[0]["data"]["message"] == "Authentication failed"
            for client in (ws, again, ws2):
                await client.close()

    run(body())


def test_an_unknown_kid_refetches_at_most_once_per_interval(jwks):
    auth = JwtAuthenticator(jwks_url=jwks.url, jwks_allow_http=True, jwks_refetch_interval=0.5)

    def junk(n: int) -> str:
        return jwt.encode({"sub": "a"}, RSA_KEY, algorithm="RS256", headers={"kid": f"x{n}"})

    async def body():
        good = jwt.encode({"sub": "a"}, RSA_KEY, algorithm="RS256", headers={"kid": "k1"})
        assert await auth.verify(good) == {"sub": "a"}
        for n in range(5):
            assert await auth.verify(junk(n)) is None
        assert jwks.requests == 2  # the first fetch, then one refetch for all the junk kids
        await asyncio.sleep(0.6)  # the interval itself, not a wait for something to happen
        assert await auth.verify(junk(5)) is None
        assert await auth.verify(junk(6)) is None
        assert jwks.requests == 3

    run(body())


def test_a_jwks_that_cannot_be_fetched_fails_the_login_not_the_server(jwks):
    auth = JwtAuthenticator(jwks_url=jwks.url, jwks_allow_http=True, jwks_timeout=2)

    def echo(client_id, user_id, message):
        holder[0].helper.send_to_client(client_id, "echo", message.get("data"))

    holder: list[Any] = []

    async def body():
        async with running(authenticate_fn=auth, message_handler=echo) as n:
            holder.append(n)
            token = jwt.encode({"sub": "ann"}, RSA_KEY, algorithm="RS256", headers={"kid": "k1"})
            ws, _ = await authed(n.url, token)
            jwks.stop()  # the provider goes away
            unknown = jwt.encode({"sub": "bob"}, P256_KEY, algorithm="ES256", headers={"kid": "k9"})
            bob = await open_client(n.url)
            await send(bob, {"event": "authenticate", "data": {"token": unknown}})
            code, reason, received = await closed_with(bob)
            assert (code, reason) == (4003, "Authentication failed")
            assert received == [{"event": "error", "data": {"message": "Authentication failed"}}]
            # The server and its other clients carry on; the cached key still logs in.
            await send(ws, {"event": "ping", "data": 1})
            assert await recv(ws) == {"event": "echo", "data": 1}
            ws2, data = await authed(n.url, token)
            assert data["userId"] == "ann"
            for client in (ws, ws2):
                await client.close()

    run(body())


def test_a_slow_jwks_fetch_does_not_block_other_clients(jwks):
    auth = JwtAuthenticator(jwks_url=jwks.url, jwks_allow_http=True, jwks_timeout=10)

    def echo(client_id, user_id, message):
        holder[0].helper.send_to_client(client_id, "echo", message.get("data"))

    holder: list[Any] = []

    async def body():
        async with running(authenticate_fn=auth, message_handler=echo) as n:
            holder.append(n)
            token = jwt.encode({"sub": "ann"}, RSA_KEY, algorithm="RS256", headers={"kid": "k1"})
            ws, _ = await authed(n.url, token)
            jwks.hold.clear()  # the next answer waits until released
            jwks.keys = [jwk(RSA_KEY, "k1", "RS256"), jwk(ED_KEY, "k3", "EdDSA")]
            new = jwt.encode({"sub": "eve"}, ED_KEY, algorithm="EdDSA", headers={"kid": "k3"})
            eve = await open_client(n.url)
            await send(eve, {"event": "authenticate", "data": {"token": new}})
            await eventually(lambda: jwks.requests == 2)  # eve's fetch is now held
            for i in range(3):  # others are served while it hangs
                await send(ws, {"event": "ping", "data": i})
                assert await recv(ws) == {"event": "echo", "data": i}
            assert not jwks.hold.is_set()
            jwks.hold.set()
            connected = await recv(eve)
            assert connected["event"] == "connected" and connected["data"]["userId"] == "eve"
            await asyncio.gather(ws.close(), eve.close())

    run(body())


def test_jwks_url_must_be_http():
    with pytest.raises(ValueError, match="must be http:// or https://"):
        JwtAuthenticator(jwks_url="file:///etc/passwd")


def test_a_jwks_url_over_plain_http_is_refused_unless_allowed():
    with pytest.raises(ValueError) as refused:
        JwtAuthenticator(jwks_url="http://id.test/jwks.json")
    assert str(refused.value) == (
        "jwks url over plain http:// refused: 'http://id.test/jwks.json' (anyone on the way "
        "could hand out their own keys; use https://, or allow it with jwks_allow_http)"
    )
    JwtAuthenticator(jwks_url="HTTP://id.test/jwks.json", jwks_allow_http=True)
    JwtAuthenticator(jwks_url="https://id.test/jwks.json")


def test_require_exp_refuses_a_token_without_exp():
    strict = JwtAuthenticator(SECRET, require_exp=True)
    lax = JwtAuthenticator(SECRET)
    forever = jwt.encode({"sub": "ann"}, SECRET, algorithm="HS256")
    timed = jwt.encode({"sub": "ann", "exp": time.time() + 60}, SECRET, algorithm="HS256")
    expired = jwt.encode({"sub": "ann", "exp": time.time() - 60}, SECRET, algorithm="HS256")
    assert verify(strict, forever) is None
    assert verify(lax, forever) == {"sub": "ann"}
    assert verify(strict, timed) is not None
    assert verify(strict, expired) is None


def without_waiting(coro: Any) -> Any:
    """The result of `coro` when it completes without suspending once (so without waiting
    for anything: no fetch, no timer), else AssertionError."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("it waited")


def test_an_outage_of_the_provider_costs_one_wait_per_attempt_not_one_per_login(jwks):
    # The set goes stale quickly; after a failed attempt, 60 s before the next.
    auth = JwtAuthenticator(jwks_url=jwks.url, jwks_allow_http=True, jwks_timeout=1,
                            jwks_lifespan=0.2, jwks_refetch_interval=60)  # fmt: skip
    token = jwt.encode({"sub": "ann"}, RSA_KEY, algorithm="RS256", headers={"kid": "k1"})
    unknown = jwt.encode({"sub": "bob"}, P256_KEY, algorithm="ES256", headers={"kid": "k9"})

    async def body():
        assert await auth.verify(token) == {"sub": "ann"}
        assert jwks.requests == 1
        jwks.hold.clear()  # the provider stops answering
        await asyncio.sleep(0.3)  # the lifespan itself, not a wait for something to happen
        # Twenty logins at once: one attempt for all; they keep the stale key.
        results = await asyncio.wait_for(
            asyncio.gather(*(auth.verify(token) for _ in range(20))), 10
        )
        assert results == [{"sub": "ann"}] * 20
        assert jwks.requests == 2
        # Within the interval, logins do not wait for the provider, nor ask it again.
        for _ in range(20):
            assert without_waiting(auth.verify(token)) == {"sub": "ann"}
            assert without_waiting(auth.verify(unknown)) is None
        assert jwks.requests == 2
        jwks.hold.set()

    run(body())


def test_a_provider_down_from_the_start_costs_one_wait_then_refuses_at_once(jwks):
    auth = JwtAuthenticator(jwks_url=jwks.url, jwks_allow_http=True, jwks_timeout=1,
                            jwks_refetch_interval=60)  # fmt: skip
    token = jwt.encode({"sub": "ann"}, RSA_KEY, algorithm="RS256", headers={"kid": "k1"})

    async def body():
        jwks.hold.clear()
        first = asyncio.ensure_future(auth.verify(token))
        await eventually(lambda: jwks.requests == 1)
        # Logins arriving while the attempt runs join it rather than start their own.
        later = [asyncio.ensure_future(auth.verify(token)) for _ in range(19)]
        results = await asyncio.wait_for(asyncio.gather(first, *later), 10)
        assert results == [None] * 20
        assert jwks.requests == 1
        for _ in range(20):
            assert without_waiting(auth.verify(token)) is None
        assert jwks.requests == 1
        jwks.hold.set()

    run(body())
