"""Tokens made independently of roomcast (by hand, with hmac and cryptography), and a JWKS
endpoint served over HTTP in a thread."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa

SECRET = "s" * 64  # long enough for HS512


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def by_hand(header: dict[str, Any], claims: dict[str, Any], sign: Any) -> str:
    signing_input = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(claims))}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def hs256_by_hand(claims: dict[str, Any], secret: str = SECRET, **header: Any) -> str:
    return by_hand(
        {"alg": "HS256", "typ": "JWT", **header},
        claims,
        lambda data: hmac.new(secret.encode(), data, hashlib.sha256).digest(),
    )


def jwk(private_key: Any, kid: str, alg: str) -> dict[str, Any]:
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        entry = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        entry = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        entry = jwt.algorithms.OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**entry, "kid": kid, "alg": alg, "use": "sig"}


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 in a thread; `hold` blocks answers until released."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys
        self.requests = 0
        self.hold = threading.Event()
        self.hold.set()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                owner.hold.wait(10)
                body = json.dumps({"keys": owner.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.hold.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
