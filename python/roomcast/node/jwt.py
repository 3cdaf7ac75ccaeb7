"""JSON Web Token authentication through PyJWT: a shared secret (HS256/384/512), a public key
(RS256/384/512, PS256/384/512, ES256/384/512, EdDSA) or an identity provider's JWKS.

Algorithms are pinned to the key type (`none` never); on top of PyJWT's checks a token must be
strict compact base64url (no padding, no junk after the signature), its `exp`/`nbf`/`iat`
must be JSON numbers, and a `crit` header is refused (no extension is understood).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import re
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from ..log import fault

logger = logging.getLogger("roomcast.jwt")
# A refused token is one client's business (DEBUG); an identity provider that cannot be
# reached is the operator's (WARNING, rate-limited: every login would repeat it).

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
EDDSA_ALGORITHMS = ("EdDSA",)
# RFC 7518 §3.2: an HMAC key at least as long as the hash output.
HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048

_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_NUMERIC_CLAIMS = ("exp", "nbf", "iat")

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)
PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)


class JwksUnavailable(Exception):
    """The JWKS could not be fetched or held no usable key."""


def algorithms_for_key(key: Any) -> tuple[str, ...]:
    """The signature algorithms a public or private key may verify or make."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"rsa key too short: {key.key_size} bits (at least {MIN_RSA_BITS})")
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        alg = EC_ALGORITHMS.get(key.curve.name)
        if alg is None:
            raise ValueError(f"unsupported elliptic curve: {key.curve.name}")
        return (alg,)
    if isinstance(
        key,
        ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        return EDDSA_ALGORITHMS
    raise ValueError(f"unsupported key type: {type(key).__name__}")


def load_public_key(pem: str | bytes) -> PublicKey:
    """A PEM public key (or the key of a PEM X.509 certificate); ValueError otherwise."""
    raw = pem.encode() if isinstance(pem, str) else pem
    if b"PRIVATE KEY-----" in raw:
        raise ValueError("this is a private key: give the public key (openssl pkey -pubout)")
    if b"-----BEGIN CERTIFICATE-----" in raw:
        key: Any = x509.load_pem_x509_certificate(raw).public_key()
    else:
        try:
            key = serialization.load_pem_public_key(raw)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a PEM public key: {exc}") from None
    algorithms_for_key(key)
    return cast(PublicKey, key)


def load_private_key(pem: str | bytes) -> PrivateKey:
    """An unencrypted PEM private key (RSA, EC or Ed25519/Ed448); ValueError otherwise."""
    raw = pem.encode() if isinstance(pem, str) else pem
    try:
        key: Any = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not an unencrypted PEM private key: {exc}") from None
    algorithms_for_key(key)
    return cast(PrivateKey, key)


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _well_formed(token: object) -> bool:
    """Compact serialisation in canonical base64url: any byte appended to or changed in the
    signature's text, even one a lenient decoder ignores, makes a different token."""
    if type(token) is not str or _COMPACT.fullmatch(token) is None:
        return False
    signature = token.rsplit(".", 1)[1]
    if len(signature) % 4 == 1:
        return False
    canonical = base64.urlsafe_b64encode(_b64decode(signature)).rstrip(b"=").decode()
    return canonical == signature


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


class JwtAuthenticator:
    """`authenticate_fn` for `{"type": "Bearer", "token": <JWT>}`; give exactly one of:

    - `secret`: HS256/384/512 (at least 32 bytes; HS384/HS512 need 48/64 bytes unless
      `allow_short_secret`, which also lifts the 32-byte floor);
    - `public_key`: a PEM public key or certificate (str/bytes) or a `cryptography` key;
      RSA -> RS*/PS*, EC P-256/P-384/P-521 -> ES256/384/512, Ed25519/Ed448 -> EdDSA;
    - `jwks_url`: an identity provider's JWKS (https://; plain http:// only with
      `jwks_allow_http`), fetched in a worker thread, kept `jwks_lifespan` seconds (kept
      longer while the endpoint fails), refetched when a token names an unknown `kid` (at
      most once per `jwks_refetch_interval`, so junk `kid`s cannot hammer the provider).
      Logins that need a fetch share one attempt and wait for it at most `jwks_timeout`
      from its start; after it failed, logins for `jwks_refetch_interval` do not wait at all
      (the stale key if there is one, else refused), so an outage of the provider costs a
      wait once per attempt, not once per login.

    `algorithms` narrows the pinned set. `audience`/`issuer` are required when given;
    `require_exp` refuses tokens without an `exp`; `leeway` (seconds) applies to
    `exp`/`nbf`/`iat`. The user id is the `user_claim` claim
    (a string or integer; absent: an anonymous user); the metadata holds every claim.
    Calls return the authentication result, or None for any bad token or unreachable JWKS.
    """

    def __init__(
        self,
        secret: str | bytes | None = None,
        *,
        public_key: str | bytes | PublicKey | None = None,
        jwks_url: str | None = None,
        algorithms: Sequence[str] | None = None,
        audience: str | Iterable[str] | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
        user_claim: str = "sub",
        allow_short_secret: bool = False,
        require_exp: bool = False,
        jwks_allow_http: bool = False,
        jwks_timeout: float = 5.0,
        jwks_lifespan: float = 300.0,
        jwks_refetch_interval: float = 5.0,
    ) -> None:
        given = [name for name, v in (("secret", secret), ("public_key", public_key)) if v]
        if jwks_url:
            given.append("jwks_url")
        if secret is not None and not secret:
            raise ValueError("jwt secret must not be empty")
        if len(given) != 1:
            raise ValueError(
                "give exactly one of secret, public_key or jwks_url"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if leeway < 0:
            raise ValueError(f"leeway must not be negative: {leeway}")
        if not user_claim:
            raise ValueError("user_claim must not be empty")
        if audience is not None and not isinstance(audience, str):
            audience = list(audience)
        self.audience = audience
        self.issuer = issuer
        self.leeway = float(leeway)
        self.user_claim = user_claim
        self.require_exp = require_exp
        self._wanted = None if algorithms is None else frozenset(algorithms)
        if self._wanted is not None and "none" in {a.lower() for a in self._wanted}:
            raise ValueError("algorithm 'none' is never accepted")
        self._quiet = False
        self._key: Any = None
        self._algorithms: list[str] = []
        self._jwks: _Jwks | None = None
        if secret:
            key = secret.encode() if isinstance(secret, str) else bytes(secret)
            if len(key) < MIN_SECRET_BYTES and not allow_short_secret:
                raise ValueError(
                    f"jwt secret too short: {len(key)} bytes (at least {MIN_SECRET_BYTES}; "
                    "allow_short_secret to accept it)"
                )
            self._key = key
            self._quiet = allow_short_secret
            fitting = [
                a for a in HMAC_ALGORITHMS if allow_short_secret or len(key) >= HMAC_MIN_BYTES[a]
            ]
            self._algorithms = self._narrow(fitting)
        elif public_key:
            key_obj = (
                load_public_key(public_key) if isinstance(public_key, str | bytes) else public_key
            )
            self._key = key_obj
            self._algorithms = self._narrow(algorithms_for_key(key_obj))
        else:
            assert jwks_url is not None
            if not jwks_url.lower().startswith(("http://", "https://")):
                raise ValueError(f"jwks url must be http:// or https://: {jwks_url!r}")
            if jwks_url.lower().startswith("http://") and not jwks_allow_http:
                raise ValueError(
                    f"jwks url over plain http:// refused: {jwks_url!r} (anyone on the way could "
                    "hand out their own keys; use https://, or allow it with jwks_allow_http)"
                )
            self._jwks = _Jwks(jwks_url, jwks_timeout, jwks_lifespan, jwks_refetch_interval)

    def _narrow(self, algorithms: Iterable[str]) -> list[str]:
        allowed = [a for a in algorithms if self._wanted is None or a in self._wanted]
        if not allowed:
            raise ValueError(
                f"no algorithm fits the key: {sorted(self._wanted or ())} "
                f"(the key allows {', '.join(algorithms)})"
            )
        return allowed

    @property
    def algorithms(self) -> list[str]:
        """The algorithms accepted (for a JWKS: decided per key)."""
        return list(self._algorithms)

    async def __call__(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        token = data.get("token") if isinstance(data, Mapping) else None
        claims = await self.verify(token)
        if claims is None:
            return None
        user = claims.get(self.user_claim)
        if user is not None and (type(user) not in (str, int) or user == ""):
            logger.debug("token refused: claim %s is not a string or integer", self.user_claim)
            return None
        return {"user_id": None if user is None else str(user), "metadata": {"claims": claims}}

    async def verify(self, token: object) -> dict[str, Any] | None:
        """The claims of a valid token, else None (the reason is logged at info level)."""
        if not _well_formed(token):
            logger.debug("token refused: not a compact JWS in canonical base64url")
            return None
        assert isinstance(token, str)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            logger.debug("token refused: %s", exc)
            return None
        if "crit" in header:
            logger.debug("token refused: unsupported critical header %r", header["crit"])
            return None
        key, algorithms = self._key, self._algorithms
        if self._jwks is not None:
            kid = header.get("kid")
            if kid is not None and type(kid) is not str:
                logger.debug("token refused: kid is not a string")
                return None
            try:
                found = await self._jwks.key(kid)
            except JwksUnavailable as exc:
                fault("jwks unavailable", "token refused: %s", exc)
                return None
            if found is None:
                logger.debug("token refused: no key with kid %r in the jwks", kid)
                return None
            key, pinned = found
            algorithms = [a for a in pinned if self._wanted is None or a in self._wanted]
        return self._checked(token, key, algorithms)

    def _checked(self, token: str, key: Any, algorithms: list[str]) -> dict[str, Any] | None:
        try:
            if self._quiet:
                with warnings.catch_warnings():  # short secrets were explicitly allowed
                    warnings.simplefilter("ignore")
                    claims = self._decode(token, key, algorithms)
            else:
                claims = self._decode(token, key, algorithms)
        except jwt.InvalidTokenError as exc:
            logger.debug("token refused: %s", exc)
            return None
        for name in _NUMERIC_CLAIMS:
            if name in claims and not _is_number(claims[name]):
                logger.debug("token refused: %s is not a number", name)
                return None
        return claims

    def _decode(self, token: str, key: Any, algorithms: list[str]) -> dict[str, Any]:
        require = [name for name, v in (("aud", self.audience), ("iss", self.issuer)) if v]
        if self.require_exp:
            require.append("exp")
        return jwt.decode(
            token,
            key,
            algorithms=algorithms,
            audience=self.audience,
            issuer=self.issuer,
            leeway=self.leeway,
            options={"require": require},
        )


class _Jwks:
    """A JWKS endpoint's signing keys by kid, fetched off the event loop."""

    def __init__(self, url: str, timeout: float, lifespan: float, refetch_interval: float) -> None:
        if timeout <= 0 or lifespan <= 0 or refetch_interval < 0:
            raise ValueError(
                "jwks_timeout and jwks_lifespan must be positive, "
                "jwks_refetch_interval must not be negative"
            )
        self.url = url
        self.timeout = float(timeout)
        self.lifespan = float(lifespan)
        self.refetch_interval = float(refetch_interval)
        self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=self.timeout)
        self._keys: dict[str | None, tuple[Any, tuple[str, ...]]] = {}
        self._loaded_at = -math.inf
        self._refetched_at = -math.inf
        self._failed_at = -math.inf
        self._inflight: asyncio.Future[None] | None = None
        # When the waits for `_inflight` end (loop time): its start plus `timeout`.
        self._deadline = -math.inf

    async def key(self, kid: str | None) -> tuple[Any, tuple[str, ...]] | None:
        """(key, algorithms) for `kid`, None when the set has no such key; raises
        JwksUnavailable when the set must be fetched and cannot be."""
        now = time.monotonic()
        found = self._keys.get(kid)
        fresh = now - self._loaded_at < self.lifespan
        if found is not None and fresh:
            return found
        if self._failed_at > self._loaded_at and now - self._failed_at < self.refetch_interval:
            # The last attempt failed moments ago: no login waits for the provider again
            # until the interval is over.
            if found is not None:  # stale beats unavailable while the provider is down
                return found
            raise JwksUnavailable(f"{self.url} failed {now - self._failed_at:.1f} s ago")
        if found is None and fresh:
            # An unknown kid: perhaps a rotated key; junk kids cannot hammer the provider.
            if now - self._refetched_at < self.refetch_interval:
                return None
            self._refetched_at = now
        try:
            await self._refresh()
        except JwksUnavailable:
            self._failed_at = time.monotonic()
            if found is not None:
                return found
            raise
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        """One fetch at a time; concurrent logins wait for the same one, all of them until
        `timeout` after it started at most (a fetch still running past that counts as
        failed for every login until it ends)."""
        loop = asyncio.get_running_loop()
        if self._inflight is None:
            self._inflight = loop.run_in_executor(None, self._fetch)
            self._inflight.add_done_callback(self._fetched)
            self._deadline = loop.time() + self.timeout
        try:
            # The worker's socket timeout bounds each read; this bounds the whole wait.
            await asyncio.wait_for(asyncio.shield(self._inflight), self._deadline - loop.time())
        except TimeoutError:
            raise JwksUnavailable(f"no answer from {self.url} within {self.timeout:g} s") from None

    def _fetched(self, future: asyncio.Future[None]) -> None:
        self._inflight = None
        if future.cancelled():
            return
        if future.exception() is None:
            self._loaded_at = time.monotonic()
        else:  # perhaps after every login stopped waiting: the interval starts now
            self._failed_at = time.monotonic()

    def _fetch(self) -> None:
        """In a worker thread: fetch and parse the set; replaces the keys only on success."""
        try:
            data = self._client.fetch_data()
        except Exception as exc:  # connection, HTTP status, timeout, JSON: all "unavailable"
            raise JwksUnavailable(f"{self.url}: {exc}") from None
        entries = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise JwksUnavailable(f"{self.url}: not a JWK set")
        keys: dict[str | None, tuple[Any, tuple[str, ...]]] = {}
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            if entry.get("kty") == "oct":
                continue  # a shared secret has no place in a public key set
            try:
                key = jwt.PyJWK(entry).key
                algorithms = algorithms_for_key(key)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError) as exc:
                logger.warning("jwks %s: key %r skipped: %s", self.url, entry.get("kid"), exc)
                continue
            alg = entry.get("alg")
            if alg is not None:
                algorithms = tuple(a for a in algorithms if a == alg)
            kid = entry.get("kid")
            keys[kid if isinstance(kid, str) else None] = (key, algorithms)
        if not keys:
            raise JwksUnavailable(f"{self.url}: no usable signing key")
        self._keys = keys
        logger.info("jwks %s: %d signing keys", self.url, len(keys))


def mint(
    claims: Mapping[str, Any],
    key: str | bytes | PrivateKey,
    algorithm: str,
    kid: str | None = None,
) -> str:
    """A signed token (for `roomcast token` and for trying a server)."""
    headers = {"kid": kid} if kid else None
    if isinstance(key, str | bytes):
        with warnings.catch_warnings():  # the caller decided on the secret's length
            warnings.simplefilter("ignore")
            return jwt.encode(dict(claims), key, algorithm=algorithm, headers=headers)
    return jwt.encode(dict(claims), key, algorithm=algorithm, headers=headers)


def load_key_file(path: str | Path, private: bool = False) -> Any:
    """Read a PEM key file; ValueError naming the file when it cannot be used."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read key file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        return load_private_key(raw) if private else load_public_key(raw)
    except ValueError as exc:
        raise ValueError(f"key file {str(path)!r}: {exc}") from None
