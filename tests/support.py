"""Shared test tools: a real server on a free port, real WebSocket clients, a raw-frame client."""

from __future__ import annotations

import asyncio
import base64
import inspect
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import uvloop
from roomcast import WebServer, WebSocketServerHelper
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

RECV_TIMEOUT = 5.0


def run(coro: Awaitable[Any], timeout: float = 30.0) -> Any:
    """Run one test body on a fresh uvloop event loop; raw clients it opened are closed after."""

    async def bounded() -> Any:
        try:
            return await asyncio.wait_for(coro, timeout)
        finally:
            while _raw_clients:
                await _raw_clients.pop().aclose()

    return uvloop.run(bounded())


def token_auth(data: dict[str, Any]) -> dict[str, Any] | None:
    """Test authenticator: token "user:<id>" -> that user, "anon" -> anonymous, else refused."""
    token = data.get("token")
    if token == "anon":
        return {}
    if isinstance(token, str) and token.startswith("user:"):
        return {"user_id": token[5:], "metadata": {"token": token}}
    return None


def allow_all(client_id: str, user_id: str | None, rooms: list[str]) -> list[str]:
    return rooms


class Node:
    def __init__(self, helper: WebSocketServerHelper, server: WebServer) -> None:
        self.helper = helper
        self.server = server
        self.port = server.bound_port
        self.url = f"ws://127.0.0.1:{self.port}{helper.get_path()}"


@asynccontextmanager
async def running(http_handler: Any = None, **kwargs: Any) -> AsyncIterator[Node]:
    """A configured helper listening on a free port; shut down on exit."""
    kwargs.setdefault("redis_connection", "memory://")
    kwargs.setdefault("authenticate_fn", token_auth)
    helper = WebSocketServerHelper("test", **kwargs)
    server = await helper.serve("127.0.0.1", 0, http_handler)
    try:
        yield Node(helper, server)
    finally:
        await server.stop()
        await helper.shutdown()


async def open_client(url: str, **kwargs: Any) -> ClientConnection:
    kwargs.setdefault("open_timeout", RECV_TIMEOUT)
    kwargs.setdefault("max_size", None)
    return await connect(url, **kwargs)


async def recv(ws: ClientConnection, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    return orjson.loads(raw)


async def send(ws: ClientConnection, message: Any) -> None:
    await ws.send(orjson.dumps(message).decode())


async def authed(
    url: str, token: str = "user:alice", **kwargs: Any
) -> tuple[ClientConnection, dict[str, Any]]:
    """An authenticated client and its `connected` data."""
    ws = await open_client(url, **kwargs)
    await send(ws, {"event": "authenticate", "data": {"type": "Bearer", "token": token}})
    message = await recv(ws)
    assert message["event"] == "connected", message
    return ws, message["data"]


async def closed_with(
    ws: ClientConnection, timeout: float = RECV_TIMEOUT
) -> tuple[int | None, str | None, list[dict[str, Any]]]:
    """Read until the server closes; return (code, reason, messages received before)."""
    received: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                received.append(orjson.loads(await ws.recv()))
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        return (rcvd.code if rcvd else None, rcvd.reason if rcvd else None, received)
    raise AssertionError("unreachable")


async def nothing_more(ws: ClientConnection, wait: float = 0.3) -> None:
    """Assert that no message arrives within `wait` seconds."""
    try:
        raw = await asyncio.wait_for(ws.recv(), wait)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected message: {raw!r}")


async def eventually(
    predicate: Callable[[], Any], timeout: float = RECV_TIMEOUT, what: str | None = None
) -> None:
    """Wait until `predicate()` is true (awaited first when it returns an awaitable: a Redis
    read, a query), polling; past `timeout` raise AssertionError saying what was awaited."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = predicate()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(
            f"timed out after {timeout:g} s waiting for {what or predicate}"
        ) from None


# -- a raw client, for what a well-behaved WebSocket library refuses to send ----------------


_raw_clients: list[RawClient] = []


class RawClient:
    """Speaks RFC 6455 by hand: arbitrary frames, and it reads only when asked to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        _raw_clients.append(self)

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str = "/ws",
        headers: dict[str, str] | None = None,
        rcvbuf: int | None = None,
    ) -> tuple[RawClient, bytes]:
        """Connect and send an upgrade request; return the client and the response head."""
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
        if headers is None:
            headers = {
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
                "Sec-WebSocket-Version": "13",
            }
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RECV_TIMEOUT)
        return cls(reader, writer), head

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        mask = os.urandom(4)
        first = (0x80 if fin else 0) | opcode
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", first, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", first, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", first, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)

    def send_text(self, text: str | bytes) -> None:
        self.send_frame(0x1, text.encode() if isinstance(text, str) else text)

    async def read_frame(self, timeout: float = RECV_TIMEOUT) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame."""
        async with asyncio.timeout(timeout):
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return b0 & 0x0F, await self.reader.readexactly(n)

    async def read_close(self, timeout: float = RECV_TIMEOUT) -> tuple[int, str]:
        """Skip data frames until a close frame; return its (code, reason)."""
        while True:
            opcode, payload = await self.read_frame(timeout)
            if opcode == 0x8:
                (code,) = struct.unpack("!H", payload[:2])
                return code, payload[2:].decode()

    def close(self) -> None:
        self.writer.close()

    async def aclose(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


async def join(ws: Any, rooms: list[str], recover: dict[str, Any] | None = None) -> None:
    data: dict[str, Any] = {"rooms": rooms}
    if recover is not None:
        data["recover"] = recover
    await send(ws, {"event": "join", "data": data})


async def joined(ws: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Messages up to `joined`, and the `joined` data."""
    before = []
    while True:
        message = await recv(ws)
        if message["event"] == "joined":
            return before, message["data"]
        before.append(message)
