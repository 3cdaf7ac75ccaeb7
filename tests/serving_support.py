"""Tools for tests of `roomcast serve` as a whole process: stdout watched in a thread, stderr
in a file, metrics scraped and parsed with prometheus_client's own parser, TLS certificates
made on the spot."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families
from support import authed, eventually, send
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

STARTUP_TIMEOUT = 30.0
# The built-in authenticator refuses secrets under 32 bytes.
SECRET = "serving-tests-secret-0123456789abcdef"

# An app whose clients can ask their worker for its pid and make it send (through
# helper.send: local delivery plus a published envelope) to a room, a client or everyone.
RELAY_APP = """
import os

class App:
    def setup(self, helper):
        self.helper = helper

    def authenticate_fn(self, data):
        token = data.get("token")
        if token == "raise":
            raise RuntimeError("boom")
        return {"user_id": token} if token and token != "bad" else None

    def validate_room_fn(self, client_id, user_id, rooms):
        return rooms

    def message_handler(self, client_id, user_id, message):
        data = message.get("data") or {}
        if message["event"] == "whoami":
            self.helper.send_to_client(client_id, "me", {"pid": os.getpid()})
        elif message["event"] == "relay":
            self.helper.send(data.get("to"), {"topic": "got", "data": data.get("tag")})

app = App()
"""


class Served:
    """A `roomcast serve` process: its stdout lines collected by a thread."""

    def __init__(
        self,
        args: list[str],
        cwd: Path,
        stderr: Path,
        new_session: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.stderr_path = stderr
        self._stderr = stderr.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roomcast", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=cwd,
            start_new_session=new_session,  # its own process group, as under a terminal
            env=None if env is None else {**os.environ, **env},
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(
        self, pattern: str, start: int = 0, timeout: float = STARTUP_TIMEOUT
    ) -> re.Match[str]:
        """The first stdout line from index `start` on that matches `pattern`."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        with self._cond:
            index = start
            while True:
                while index < len(self.lines):
                    match = regex.search(self.lines[index])
                    if match:
                        return match
                    index += 1
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._thread.is_alive()):
                    raise AssertionError(
                        f"no line matching {pattern!r}: {self.lines} {self.stderr_text()[-3000:]}"
                    )
                self._cond.wait(min(left, 0.1))

    def listening_port(self) -> int:
        return int(self.wait_line(r"^roomcast: listening on wss?://127\.0\.0\.1:(\d+)/").group(1))

    def stderr_text(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text()

    def close(self) -> None:
        """Stop it (gracefully first, so a supervisor takes its workers along)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait()
        self._thread.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def http_get(url: str, context: Any = None, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(url: str, context: Any = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, parsed by prometheus_client: (name, labels) -> value."""
    status, body = http_get(url, context)
    assert status == 200, (status, body)
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def make_certificates(directory: Path, password: bytes | None = None) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 signed by it (key optionally encrypted with
    `password`) and a client certificate signed by it; PEM files in `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("roomcast test ca"))
        .issuer_name(name("roomcast test ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common: str, usage: x509.ObjectIdentifier, server: bool) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return key, builder.sign(ca_key, hashes.SHA256())

    server_key, server_cert = leaf("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH, True)
    client_key, client_cert = leaf("roomcast test client", ExtendedKeyUsageOID.CLIENT_AUTH, False)
    pem = serialization.Encoding.PEM
    files = {
        "ca": directory / "ca.pem",
        "cert": directory / "server.pem",
        "key": directory / "server.key",
        "client_cert": directory / "client.pem",
        "client_key": directory / "client.key",
    }
    files["ca"].write_bytes(ca.public_bytes(pem))
    files["cert"].write_bytes(server_cert.public_bytes(pem))
    encryption: Any = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    files["key"].write_bytes(
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, encryption)
    )
    files["client_cert"].write_bytes(client_cert.public_bytes(pem))
    files["client_key"].write_bytes(
        client_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files


WAIT = 15.0


class Member:
    """One authenticated client with a task collecting what it receives."""

    def __init__(self, ws: ClientConnection, data: dict[str, Any], token: str) -> None:
        self.ws = ws
        self.id: str = data["id"]
        self.token = token
        self.pid: int | None = None
        self.inbox: list[dict[str, Any]] = []
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = orjson.loads(raw)
                if message["event"] == "me":
                    self.pid = message["data"]["pid"]
                else:
                    self.inbox.append(message)
        except ConnectionClosed:
            pass

    def tags(self) -> list[Any]:
        return [m.get("data") for m in self.inbox if m["event"] == "got"]

    @property
    def close(self) -> tuple[int | None, str | None]:
        return self.ws.close_code, self.ws.close_reason


async def connect_many(url: str, tokens: Iterable[str], batch: int = 50) -> list[Member]:
    tokens = list(tokens)
    members: list[Member] = []
    for first in range(0, len(tokens), batch):
        pairs = await asyncio.gather(*(authed(url, t) for t in tokens[first : first + batch]))
        members += [
            Member(ws, data, t) for (ws, data), t in zip(pairs, tokens[first:], strict=False)
        ]
    return members


async def whoami(members: list[Member]) -> None:
    for m in members:
        await send(m.ws, {"event": "whoami"})
    await eventually(lambda: all(m.pid is not None for m in members), WAIT, "every worker pid")


def serve_workers(tmp_path: Path, redis_url: str, workers: int, *extra: str) -> Served:
    (tmp_path / "relay_app.py").write_text(RELAY_APP)
    return Served(
        [
            "--port",
            "0",
            "--workers",
            str(workers),
            "--redis-url",
            redis_url,
            "--app",
            "relay_app:app",
            "--log-level",
            "warning",
            *extra,
        ],
        tmp_path,
        tmp_path / "stderr.log",
    )
