"""`roomcast token`: mint a JWT to try a server with; prints only the token.

roomcast token --sub alice --secret "$ROOMCAST_JWT_SECRET" [--exp-s 3600] [--claim k=v]
roomcast token --sub alice --private-key key.pem [--alg RS256] [--kid k1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ..node.jwt import (
    HMAC_ALGORITHMS,
    HMAC_MIN_BYTES,
    MIN_SECRET_BYTES,
    algorithms_for_key,
    load_key_file,
    mint,
)


class TokenError(Exception):
    """A one-line, user-facing error (exit status 2)."""


def _claim(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = raw  # not JSON: the text itself
    return name, value


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def add_token_parser(commands: Any) -> None:
    """Add `token` to the CLI's subcommands."""
    token = commands.add_parser(
        "token",
        help="mint a JWT to try a server with (prints only the token)",
        description="Mint a JWT for `roomcast serve`'s built-in authenticator.",
    )
    token.add_argument("--sub", help="the subject (the user id by default)")
    token.add_argument(
        "--secret", help="HS256/384/512 secret (at least 32 bytes) [env ROOMCAST_JWT_SECRET]"
    )
    token.add_argument(
        "--private-key", metavar="FILE", help="PEM private key for RS*/PS*/ES*/EdDSA"
    )
    token.add_argument(
        "--alg", help="algorithm (default HS256, or the private key's: RS256, ES256, EdDSA...)"
    )
    token.add_argument("--kid", help="key id header (to pick a key of a JWKS)")
    token.add_argument(
        "--exp-s",
        type=non_negative_int,
        default=3600,
        help="seconds until it expires (default 3600; 0: no exp claim)",
    )
    token.add_argument(
        "--claim",
        type=_claim,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help='another claim; VALUE is JSON when it parses (5, true, ["a"]), else text',
    )
    token.add_argument(
        "--allow-short-secret",
        action="store_true",
        help="sign with a secret shorter than the algorithm's hash (insecure)",
    )


def make_token(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    """The token `args` describe; TokenError for a bad combination of flags."""
    secret = args.secret if args.secret is not None else environ.get("ROOMCAST_JWT_SECRET")
    if args.private_key is not None and args.secret is not None:
        raise TokenError("give --secret or --private-key, not both")
    now = int(time.time())
    claims: dict[str, Any] = {"iat": now}
    if args.sub is not None:
        claims["sub"] = args.sub
    if args.exp_s:
        claims["exp"] = now + args.exp_s
    for name, value in args.claim:
        claims[name] = value
    if args.private_key is not None:
        try:
            key = load_key_file(args.private_key, private=True)
            allowed = algorithms_for_key(key)
        except ValueError as exc:
            raise TokenError(str(exc)) from None
        alg = args.alg or allowed[0]
        if alg not in allowed:
            raise TokenError(f"--alg {alg} does not fit this key (use {', '.join(allowed)})")
        return mint(claims, key, alg, args.kid)
    if not secret:
        raise TokenError("give --secret (or ROOMCAST_JWT_SECRET) or --private-key")
    alg = args.alg or "HS256"
    if alg not in HMAC_ALGORITHMS:
        raise TokenError(f"--alg {alg} needs --private-key (a secret signs HS256/384/512)")
    size = len(secret.encode())
    needed = max(MIN_SECRET_BYTES, HMAC_MIN_BYTES[alg])
    if size < needed and not args.allow_short_secret:
        raise TokenError(
            f"secret too short for {alg}: {size} bytes (at least {needed}; "
            "--allow-short-secret to use it anyway)"
        )
    return mint(claims, secret, alg, args.kid)


def token_command(
    args: argparse.Namespace, environ: Mapping[str, str], out: Callable[[str], None]
) -> None:
    out(make_token(args, environ))
