"""Hostile input over raw sockets: payload limits in every way of running roomcast, upgrade
answers as RFC 6455 says, non-HTTP bytes, slow handshakes, the CLI's room policy, sealed
error events, and what a flood of connections writes to the log."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from process_support import STARTUP_TIMEOUT, stop, wait_listening
from roomcast import WebSocketEmitter
from roomcast.app import Application
from roomcast.cli import room_policy
from roomcast.component import LazyWebSocket, WebSocketBindingKeys, WebSocketComponent
from roomcast.crypto import EcdhClient, EcdhScheme
from roomcast.log import FaultLog
from roomcast.node.jwt import mint
from roomcast.redis import RedisHelper
from roomcast.transport.upgrade import request_line_verdict
from support import authed, nothing_more, open_client, recv, run, running, send

LIMIT = 2048
SIZES = (LIMIT - 1, LIMIT, LIMIT + 1, 1_572_864)  # 1.5 MB
TEXT, CONTINUATION, CLOSE = 0x1, 0x0, 0x8
WAIT = 5.0  # deadline for anything the server must do "at once"
ROOMCAST_SERVE = [sys.executable, "-m", "roomcast", "serve", "--port", "0"]

SECRET = "hostile-tests-secret-0123456789abcdef"  # >= 32 bytes, as the CLI requires


# -- a raw client that reads with sock_recv --------------------------------------------------


class Wire:
    """RFC 6455 by hand over a plain socket. It reads with `sock_recv`, so every byte the
    server sent before closing (or resetting) the connection is still read."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.eof = False

    @classmethod
    async def open(cls, port: int) -> Wire:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return cls(sock)

    def close(self) -> None:
        self.sock.close()

    async def send(self, data: bytes) -> bool:
        """False when the server has already closed or reset the connection."""
        try:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)
        except OSError:
            return False
        return True

    async def _more(self) -> None:
        try:
            chunk = await asyncio.get_running_loop().sock_recv(self.sock, 1 << 16)
        except OSError:
            chunk = b""
        if not chunk:
            self.eof = True
        self.buffer += chunk

    async def read_until_closed(self, timeout: float = WAIT) -> bytes:
        async with asyncio.timeout(timeout):
            while not self.eof:
                await self._more()
        data, self.buffer = self.buffer, b""
        return data

    async def frames_until_closed(self, timeout: float = WAIT) -> list[tuple[int, bytes]]:
        """Every frame until the server drops the connection; a close frame is answered, as
        a well-behaved client would, so the server need not wait for it."""
        frames: list[tuple[int, bytes]] = []
        answered = False
        async with asyncio.timeout(timeout):
            while not self.eof:
                await self._more()
                more, self.buffer = parse_frames(self.buffer)
                frames += more
                if not answered and any(opcode == CLOSE for opcode, _ in more):
                    answered = True
                    await self.send(frame(CLOSE, struct.pack("!H", 1000)))
        return frames

    async def read_head(self, timeout: float = WAIT) -> bytes:
        async with asyncio.timeout(timeout):
            while b"\r\n\r\n" not in self.buffer:
                if self.eof:
                    raise AssertionError(f"closed before a response head: {self.buffer!r}")
                await self._more()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head

    async def upgrade(self, path: str = "/ws") -> None:
        await self.send(request(path, handshake_headers()))
        head = await self.read_head()
        assert head.startswith(b"HTTP/1.1 101"), head

    async def read_frame(self, timeout: float = WAIT) -> tuple[int, bytes]:
        async with asyncio.timeout(timeout):
            while True:
                frames, rest = parse_frames(self.buffer, limit=1)
                if frames:
                    self.buffer = rest
                    return frames[0]
                if self.eof:
                    raise AssertionError("closed before a frame")
                await self._more()

    async def authenticate(self, token: str) -> dict[str, Any]:
        await self.send(
            frame(TEXT, orjson.dumps({"event": "authenticate", "data": {"token": token}}))
        )
        opcode, payload = await self.read_frame()
        message = orjson.loads(payload)
        assert opcode == TEXT and message["event"] == "connected", message
        return message["data"]


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One masked client frame."""
    mask = os.urandom(4)
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        head = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + masked


def parse_frames(data: bytes, limit: int | None = None) -> tuple[list[tuple[int, bytes]], bytes]:
    """Whole server frames at the start of `data` (opcode, payload), and the rest."""
    frames = []
    while len(data) >= 2 and (limit is None or len(frames) < limit):
        n = data[1] & 0x7F
        head = 2 if n < 126 else 4 if n == 126 else 10
        if len(data) < head:
            break
        if n == 126:
            n = struct.unpack("!H", data[2:4])[0]
        elif n == 127:
            n = struct.unpack("!Q", data[2:10])[0]
        if len(data) < head + n:
            break
        frames.append((data[0] & 0x0F, data[head : head + n]))
        data = data[head + n :]
    return frames, data


def handshake_headers() -> dict[str, str]:
    return {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }


def request(path: str, headers: dict[str, str], method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def close_code(frames: list[tuple[int, bytes]]) -> int | None:
    for opcode, payload in frames:
        if opcode == CLOSE:
            return int(struct.unpack("!H", payload[:2])[0])
    return None


# -- 1. the payload limit, in the three ways of running roomcast -----------------------------


def message_of(size: int) -> bytes:
    """A JSON message of exactly `size` bytes, as orjson would write it."""
    head, tail = b'{"event":"big","data":"', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


class Recorder:
    """A message_handler that records each message's size and echoes it to the sender."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.helper: Any = None

    def __call__(self, client_id: str, user_id: str | None, message: dict[str, Any]) -> None:
        size = len(orjson.dumps(message))
        self.sizes.append(size)
        self.helper.send_to_client(client_id, "got", size)


ECHO_APP = """
import orjson

class App:
    def setup(self, helper):
        self.helper = helper

    def authenticate_fn(self, data):
        token = data.get("token")
        return {"user_id": token} if token else None

    def message_handler(self, client_id, user_id, message):
        self.helper.send_to_client(client_id, "got", len(orjson.dumps(message)))

app = App()
"""


async def send_message(wire: Wire, size: int, fragmented: bool) -> None:
    payload = message_of(size)
    if not fragmented:
        await wire.send(frame(TEXT, payload))
        return
    # Fragments each within the limit: only the reassembled size is over it.
    step = LIMIT // 2 if size > LIMIT else (size + 1) // 2
    parts = [payload[i : i + step] for i in range(0, len(payload), step)]
    data = b"".join(
        frame(TEXT if i == 0 else CONTINUATION, part, fin=i == len(parts) - 1)
        for i, part in enumerate(parts)
    )
    await wire.send(data)


async def check_payload_limit(port: int, path: str, token: str) -> None:
    """Each size, in one frame and in fragments: up to LIMIT the handler echoes it and the
    connection stays open; over it the client gets 1009 and no echo, before or after."""
    for fragmented in (False, True):
        for size in SIZES:
            wire = await Wire.open(port)
            try:
                await wire.upgrade(path)
                await wire.authenticate(token)
                if size <= LIMIT:
                    await send_message(wire, size, fragmented)
                    _, payload = await wire.read_frame()
                    assert orjson.loads(payload) == {"event": "got", "data": size}
                    continue
                reader = asyncio.ensure_future(wire.frames_until_closed())
                await send_message(wire, size, fragmented)
                frames = await reader
                texts = [orjson.loads(p) for op, p in frames if op == TEXT]
                assert texts == [], (size, fragmented, texts)
                assert close_code(frames) == 1009, (size, fragmented, frames)
            finally:
                wire.close()


def test_payload_limit_with_the_helper():
    recorder = Recorder()

    async def body():
        async with running(
            message_handler=recorder, server_options={"max_payload_length": LIMIT}
        ) as node:
            recorder.helper = node.helper
            await check_payload_limit(node.port, "/ws", "user:alice")
            assert sorted(recorder.sizes) == [LIMIT - 1, LIMIT - 1, LIMIT, LIMIT]

    run(body(), timeout=60)


def test_payload_limit_with_application_and_component_bindings(redis_server):
    recorder = Recorder()
    app = Application(port=0)
    app.bind(WebSocketBindingKeys.REDIS_CONNECTION).to_value(RedisHelper(url=redis_server.url))
    app.bind(WebSocketBindingKeys.AUTHENTICATE_HANDLER).to_value(
        lambda data: {"user_id": data["token"]} if data.get("token") else None
    )
    app.bind(WebSocketBindingKeys.MESSAGE_HANDLER).to_value(recorder)
    app.bind(WebSocketBindingKeys.SERVER_OPTIONS).to_value(
        {"path": "/live", "serverOptions": {"maxPayloadLength": LIMIT}}
    )
    app.component(WebSocketComponent)

    async def body():
        await app.start()  # the route is added by a post-start hook, after the server listens
        try:
            recorder.helper = LazyWebSocket(app).get()
            await check_payload_limit(app.bound_port, "/live", "alice")
            assert sorted(recorder.sizes) == [LIMIT - 1, LIMIT - 1, LIMIT, LIMIT]
        finally:
            await app.stop()

    run(body(), timeout=60)


def test_payload_limit_with_the_cli(tmp_path):
    (tmp_path / "echo_app.py").write_text(ECHO_APP)
    proc = subprocess.Popen(
        [*ROOMCAST_SERVE, "--app", "echo_app:app", "--max-payload-length", str(LIMIT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        port, _ = wait_listening(proc)
        run(check_payload_limit(port, "/ws", "alice"), timeout=60)
        assert stop(proc) == 0
    finally:
        proc.kill()
        proc.communicate()


# -- 2. upgrade answers ------------------------------------------------------------------------


def _without(name: str) -> dict[str, str]:
    headers = handshake_headers()
    del headers[name]
    return headers


def _with(name: str, value: str) -> dict[str, str]:
    return {**handshake_headers(), name: value}


UPGRADES = {
    "version 8": (_with("Sec-WebSocket-Version", "8"), "GET", 426, b"sec-websocket-version: 13"),
    "version 14": (_with("Sec-WebSocket-Version", "14"), "GET", 426, b"sec-websocket-version: 13"),
    "no version": (_without("Sec-WebSocket-Version"), "GET", 400, None),
    "no key": (_without("Sec-WebSocket-Key"), "GET", 400, None),
    "short key": (
        _with("Sec-WebSocket-Key", base64.b64encode(b"x" * 15).decode()),
        "GET",
        400,
        None,
    ),
    "key not base64": (_with("Sec-WebSocket-Key", "not base64 at all!!!"), "GET", 400, None),
    "no upgrade": (_without("Upgrade"), "GET", 426, b"upgrade: websocket"),
    "no connection": (_without("Connection"), "GET", 426, b"upgrade: websocket"),
    "post": (handshake_headers(), "POST", 400, None),
}


@pytest.mark.parametrize("case", list(UPGRADES))
def test_malformed_upgrade_gets_its_status_and_is_closed(case):
    headers, method, status, header = UPGRADES[case]

    async def body():
        # A long handshake timeout: the answer must come from the request, not the timer.
        async with running(server_options={"handshake_timeout": 60}) as node:
            wire = await Wire.open(node.port)
            await wire.send(request("/ws", headers, method))
            answer = await wire.read_until_closed()  # answered and closed within WAIT
            head = answer.partition(b"\r\n\r\n")[0]
            assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
            if header is not None:
                assert header in head.lower(), head
            assert node.helper.get_clients() == {}
            wire.close()

    run(body())


def test_valid_upgrade_and_plain_http_are_unchanged():
    async def body():
        async with running(server_options={"handshake_timeout": 60}) as node:
            wire = await Wire.open(node.port)
            await wire.upgrade()
            await wire.authenticate("user:alice")
            wire.close()
            # A Connection list, as Firefox sends it, is a valid upgrade.
            firefox = await Wire.open(node.port)
            await firefox.send(request("/ws", _with("Connection", "keep-alive, Upgrade")))
            assert (await firefox.read_head()).startswith(b"HTTP/1.1 101 ")
            firefox.close()
            # No WebSocket headers at all: plain HTTP, for the HTTP handler (default 404).
            plain = await Wire.open(node.port)
            await plain.send(request("/ws", {}))
            assert (await plain.read_until_closed()).startswith(b"HTTP/1.1 404 ")
            plain.close()

    run(body())


CLIENT_HELLO = bytes.fromhex("16030100c4010000c00303") + os.urandom(32) + b"\x00" * 40


@pytest.mark.parametrize(
    "first_bytes",
    [CLIENT_HELLO, b"SSH-2.0-OpenSSH_9.6\r\n", b"\x00\x01\x02", b"GET\r\n", b"GET /ws FTP/1.0\r\n"],
    ids=["tls", "ssh", "binary", "no-target", "not-http-version"],
)
def test_non_http_first_bytes_get_400_and_close_at_once(first_bytes):
    async def body():
        async with running(server_options={"handshake_timeout": 60}) as node:
            wire = await Wire.open(node.port)
            await wire.send(first_bytes)
            answer = await wire.read_until_closed()  # within WAIT, not the 60 s timeout
            assert answer.startswith(b"HTTP/1.1 400 "), answer
            wire.close()

    run(body())


def test_request_line_verdicts():
    assert request_line_verdict(b"G") is None
    assert request_line_verdict(b"GET /ws HT") is None
    assert request_line_verdict(b"GET /ws HTTP/1.1\r\n") is True
    assert request_line_verdict(b"GET /ws HTTP/") is True
    assert request_line_verdict(b"\x16\x03\x01") is False
    assert request_line_verdict(b" GET") is False
    assert request_line_verdict(b"GET  /ws HTTP/1.1") is False
    assert request_line_verdict(b"GET /ws\r\n") is False
    assert request_line_verdict(b"GET /w\x01s HTTP/1.1") is False
    assert request_line_verdict(b"G" * 40) is False
    assert request_line_verdict(b"GET /" + b"a" * 9000) is False


def test_silent_client_is_closed_after_the_handshake_timeout():
    async def body():
        async with running(server_options={"handshake_timeout": 0.5}) as node:
            wire = await Wire.open(node.port)
            started = time.monotonic()
            assert await wire.read_until_closed() == b""
            assert time.monotonic() - started >= 0.45
            wire.close()

    run(body())


def test_byte_at_a_time_client_is_closed_after_the_handshake_timeout():
    async def body():
        async with running(server_options={"handshake_timeout": 0.5}) as node:
            wire = await Wire.open(node.port)
            head = request("/ws", handshake_headers())  # ~150 bytes: 7 s at 20 bytes/s
            started = time.monotonic()
            sent = 0

            async def dribble() -> None:
                nonlocal sent
                for i in range(len(head)):
                    if not await wire.send(head[i : i + 1]):
                        return
                    sent += 1
                    await asyncio.sleep(0.05)

            sender = asyncio.ensure_future(dribble())
            assert await wire.read_until_closed() == b""
            assert time.monotonic() - started >= 0.45
            assert sent < len(head)
            sender.cancel()
            wire.close()

    run(body())


# -- 3. the CLI's default room policy -----------------------------------------------------------


def test_room_policy_refuses_client_ids_internal_names_and_names_outside_the_glob():
    policy = room_policy("chat-*")
    own, other = "6f1c8a52-0d7b-4c4e-9a51-2a0f3c7d9b11", "0B5D7E7A-9C3F-4A55-8E2B-1D2C3B4A5F60"
    rooms = ["chat-1", other, other.lower(), own, "ws:broadcast", "lobby"]
    assert policy(own, None, rooms) == ["chat-1"]
    assert room_policy("*")(own, None, rooms) == ["chat-1", own, "lobby"]


def test_cli_refuses_joining_another_clients_id_room(redis_server):
    url = redis_server.url
    proc = subprocess.Popen(
        [*ROOMCAST_SERVE, "--jwt-secret", SECRET, "--allow-rooms", "*", "--redis-url", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port, _ = wait_listening(proc)

        async def body():
            url = f"ws://127.0.0.1:{port}/ws"
            victim, victim_data = await authed(url, mint({"sub": "victim"}, SECRET, "HS256"))
            spy, _ = await authed(url, mint({"sub": "spy"}, SECRET, "HS256"))
            rooms = [victim_data["id"], "ws:client:" + victim_data["id"], "chat"]
            await send(spy, {"event": "join", "data": {"rooms": rooms}})
            emitter = WebSocketEmitter(RedisHelper(url=redis_server.url))
            await emitter.configure()
            try:
                # A normal room is allowed (emit until the node's subscription is live).
                async with asyncio.timeout(WAIT):
                    while True:
                        await emitter.to_room("chat", "news", 1)
                        try:
                            assert await recv(spy, 0.2) == {"event": "news", "data": 1}
                            break
                        except TimeoutError:
                            continue
                await emitter.to_room(victim_data["id"], "private", "for the victim")
                assert await recv(victim) == {"event": "private", "data": "for the victim"}
                await nothing_more(spy)
            finally:
                await emitter.shutdown()
            await victim.close()
            await spy.close()

        run(body())
        assert stop(proc) == 0
    finally:
        proc.kill()
        proc.communicate()


# -- 4. sealed error events ---------------------------------------------------------------------


def test_error_events_to_an_encrypted_client_are_sealed():
    async def body():
        async with running(encryption=EcdhScheme()) as node:
            crypto = EcdhClient()
            ws = await open_client(node.url)
            await send(ws, {"event": "authenticate", "data": crypto.authenticate_data("user:a")})
            connected = await recv(ws)
            assert connected["event"] == "connected"
            crypto.complete(connected["data"])
            await ws.send("not json")
            await send(ws, {"event": "authenticate", "data": {"token": "user:a"}})
            await send(ws, {"event": "encrypted", "data": {"iv": "AAAA", "ct": "AAAA"}})
            expected = ["Invalid message format", "Already authenticated", "Decryption failed"]
            for message in expected:
                sealed = await recv(ws)
                assert sealed["event"] == "encrypted", sealed
                assert crypto.decrypt(sealed) == {"event": "error", "data": {"message": message}}
            await ws.close()

    run(body())


def test_error_before_the_key_is_usable_stays_in_clear():
    async def body():
        async with running(
            require_encryption=True,
            handshake_fn=lambda **kw: None,
            outbound_transformer=lambda **kw: None,
        ) as node:
            ws = await open_client(node.url)
            await send(
                ws, {"event": "authenticate", "data": EcdhClient().authenticate_data("user:a")}
            )
            assert await recv(ws) == {
                "event": "error",
                "data": {"message": "Encryption handshake failed"},
            }
            await ws.close()

    run(body())


# -- 5. logging ----------------------------------------------------------------------------------


def serve_logging(*flags: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*ROOMCAST_SERVE, "--jwt-secret", SECRET, *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def run_against(
    proc: subprocess.Popen[str], clients: Callable[[int], Awaitable[Any]]
) -> tuple[Any, list[str]]:
    """Run `clients(port)`, stop the server, return the result and its stderr lines."""
    try:
        port, _ = wait_listening(proc)
        result = run(clients(port), timeout=120)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=STARTUP_TIMEOUT)
        assert proc.returncode == 0, err
        return result, [line for line in err.splitlines() if line.strip()]
    finally:
        proc.kill()
        proc.communicate()


async def connect_many(port: int, count: int) -> list[str]:
    """`count` clients: each connects, authenticates (every fifth with a bad token), says
    something and leaves. Returns the ids of those that got `connected`."""
    url = f"ws://127.0.0.1:{port}/ws"
    good = mint({"sub": "u"}, SECRET, "HS256")
    ids = []
    for i in range(count):
        ws = await open_client(url)
        await send(ws, {"event": "authenticate", "data": {"token": "bad" if i % 5 == 0 else good}})
        message = await recv(ws)
        if message["event"] == "connected":
            ids.append(message["data"]["id"])
            await ws.send("not json")
            assert (await recv(ws))["event"] == "error"
        await ws.close()
    return ids


def test_a_hundred_connects_at_info_write_no_per_connection_line():
    ids, lines = run_against(serve_logging(), lambda port: connect_many(port, 100))
    assert len(ids) == 80
    assert not [line for line in lines if any(i in line for i in ids)], lines
    per_connection = [
        line
        for line in lines
        if ("picows" in line or "onnect" in line) and "open file limit" not in line
    ]
    assert not per_connection, lines
    assert len(lines) < 5, lines  # what there is does not grow with the connections


def test_client_faults_are_warnings_at_most_one_per_kind_every_few_seconds():
    async def faults(port: int) -> float:
        started = time.monotonic()
        for i in range(40):
            wire = await Wire.open(port)
            await wire.upgrade()
            await wire.authenticate(mint({"sub": "u"}, SECRET, "HS256"))
            if i % 2:
                await wire.send(frame(TEXT, b"\xff\xfe"))  # not UTF-8: 1007
            else:
                await wire.send(frame(TEXT, message_of(4096)))  # over the limit: 1009
            frames = await wire.frames_until_closed()
            assert close_code(frames) == (1007 if i % 2 else 1009)
            wire.close()
        return time.monotonic() - started

    elapsed, lines = run_against(serve_logging("--max-payload-length", "1024"), faults)
    budget = 1 + int(elapsed // 5) + 1
    for kind in ("oversized message", "invalid utf-8"):
        mine = [line for line in lines if kind in line]
        assert 1 <= len(mine) <= budget, (kind, lines)
        assert all(" WARNING " in line for line in mine), mine
    assert not [line for line in lines if " ERROR " in line], lines


def test_json_log_format_has_one_object_per_line_with_the_client_id():
    async def clients(port: int) -> list[dict[str, str]]:
        url = f"ws://127.0.0.1:{port}/ws"
        seen = []
        for sub in ("ann", "bob", "cy"):
            ws, data = await authed(url, mint({"sub": sub}, SECRET, "HS256"))
            seen.append(data)
            await ws.close()
        wire = await Wire.open(port)
        await wire.upgrade()
        data = await wire.authenticate(mint({"sub": "big"}, SECRET, "HS256"))
        await wire.send(frame(TEXT, message_of(4096)))
        await wire.frames_until_closed()
        wire.close()
        seen.append(data)
        return seen

    proc = serve_logging(
        "--log-level",
        "debug",
        "--max-payload-length",
        "1024",
        env={"ROOMCAST_LOG_FORMAT": "json"},
    )
    seen, lines = run_against(proc, clients)
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert records
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
        assert record["time"].endswith("Z")
    for data in seen[:3]:
        # DEBUG: one line per connection, carrying the client id and user id.
        about = [r for r in records if r.get("client_id") == data["id"]]
        assert len(about) == 1, about
        assert about[0]["user_id"] == data["userId"] and about[0]["level"] == "DEBUG"
    faults = [r for r in records if r.get("client_id") == seen[3]["id"] and r["level"] == "WARNING"]
    assert len(faults) == 1 and "oversized message" in faults[0]["message"], records
    assert not [r for r in records if "picows" in r["logger"] and r["level"] != "WARNING"]


def test_fault_log_writes_one_line_per_kind_per_interval_and_counts_the_rest():
    records: list[logging.LogRecord] = []
    target = logging.getLogger("roomcast.test_fault_log")
    target.propagate = False
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    target.addHandler(handler)
    faults = FaultLog(target, interval=3600)
    for i in range(5):
        faults("oversized message", "closing %s", f"c{i}", extra={"client_id": f"c{i}"})
    faults("invalid utf-8", "closing %s", "c9")
    assert [r.getMessage() for r in records] == [
        "oversized message: closing c0",
        "invalid utf-8: closing c9",
    ]
    assert records[0].levelno == logging.WARNING and records[0].client_id == "c0"
    faults.interval = 0
    faults("oversized message", "closing %s", "c5")
    assert records[-1].getMessage() == (
        "oversized message: closing c5 (and 4 more since the last such line)"
    )
