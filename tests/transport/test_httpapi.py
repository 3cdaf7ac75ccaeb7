"""HTTP/1.1 of the server API (`roomcast.transport.httpapi`) on the library's server, over raw
sockets: keep-alive, pipelining in order, chunked bodies, the hand-over from the listener
(WebSocket routes and other paths untouched), and the answers to broken requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from api_support import KEY, check_answer
from roomcast import WebSocketServerHelper
from roomcast.serving.api import Api
from roomcast.transport import httpapi
from support import allow_all, authed, open_client, recv, run, send, token_auth

pytestmark = pytest.mark.timeout(60)


@asynccontextmanager
async def served(key: str | None = KEY, path: str = "/ws", **options: Any) -> AsyncIterator[int]:
    helper = WebSocketServerHelper(
        "api", path, "memory://", token_auth, validate_room_fn=allow_all, **options
    )
    server = await helper.serve("127.0.0.1", 0, health=True, api=Api(helper, key))
    try:
        yield server.bound_port
    finally:
        await server.stop()
        await helper.shutdown()


def request(
    path: str, body: bytes = b"", method: str = "POST", key: str = KEY, **extra: str
) -> bytes:
    headers = {"Host": "x", "X-API-Key": key, "Content-Length": str(len(body)), **extra}
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode() + body


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    body = await asyncio.wait_for(reader.readexactly(int(headers["Content-Length"])), 5)
    return status, headers, json.loads(body)


async def closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 5) == b""


def test_one_connection_takes_many_requests_and_stays_open():
    async def body() -> None:
        async with served() as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(3):
                writer.write(request("/api/broadcast", b'{"event":"e"}'))
                status, headers, parsed = await answer(reader)
                assert status == 200 and "Connection" not in headers
                check_answer("/api/broadcast", "POST", 200, parsed)
            writer.close()

    run(body())


def test_pipelined_requests_are_answered_in_order_past_the_queue_limit():
    async def body() -> None:
        async with served() as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            kinds = [
                (request("/api/info", b""), 200),
                (request("/api/publish", b"{nope"), 400),
                (request("/api/publish", b'{"room":"r","event":"e"}', key="bad"), 401),
                (request("/api/nothing", b"{}"), 404),
                (request("/api/publish", b'{"room":"r","event":"e"}'), 200),
            ]
            sequence = [kinds[i % len(kinds)] for i in range(httpapi.QUEUE_LIMIT * 3)]
            writer.write(b"".join(raw for raw, _ in sequence))
            statuses = [(await answer(reader))[0] for _ in sequence]
            assert statuses == [status for _, status in sequence]
            writer.close()

    run(body())


def test_a_chunked_body_is_read_whole():
    async def body() -> None:
        async with served() as port:
            ws, data = await authed(f"ws://127.0.0.1:{port}/ws", "user:u")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            payload = json.dumps({"client": data["id"], "event": "chunked", "data": "x" * 50})
            chunks = [payload[:10], payload[10:25], payload[25:]]
            raw = "".join(f"{len(c):x}\r\n{c}\r\n" for c in chunks) + "0\r\n\r\n"
            writer.write(
                f"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
                f"Transfer-Encoding: chunked\r\n\r\n{raw}".encode()
            )
            status, _, parsed = await answer(reader)
            assert status == 200, parsed
            assert await recv(ws) == {"event": "chunked", "data": "x" * 50}
            writer.close()
            await ws.close()

    run(body())


def test_broken_requests_get_an_error_and_the_connection_closes():
    async def body() -> None:
        async with served() as port:
            cases = [
                (b"POST /api/publish HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400, "bad_request"),
                (b"POST /api/publish HTTP/1.1\r\nX-Big: " + b"a" * (httpapi.HEAD_LIMIT + 10),
                 431, "head_too_large"),
                (b"GET /api/info HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                 b"Upgrade: websocket\r\n\r\n", 400, "bad_request"),
            ]  # fmt: skip
            for raw, status, code in cases:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(raw)
                got, headers, parsed = await answer(reader)
                assert (got, parsed["error"]["code"]) == (status, code), parsed
                assert headers["Connection"] == "close"
                assert await closed(reader)
                writer.close()

    run(body())


def test_http_1_0_is_answered_then_closed():
    async def body() -> None:
        async with served() as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"POST /api/info HTTP/1.0\r\nX-API-Key: {KEY}\r\nContent-Length: 2\r\n\r\n{{}}"
                .encode()
            )  # fmt: skip
            status, headers, parsed = await answer(reader)
            assert status == 200 and headers["Connection"] == "close"
            check_answer("/api/info", "POST", 200, parsed)
            assert await closed(reader)
            writer.close()

    run(body())


def test_other_paths_and_websocket_routes_under_api_are_left_to_the_listener():
    async def body() -> None:
        async with served(path="/api/ws") as port:
            # A WebSocket route under /api/ is a WebSocket route.
            ws, _ = await authed(f"ws://127.0.0.1:{port}/api/ws", "user:w")
            await send(ws, {"event": "heartbeat"})
            await ws.close()
            # Plain GETs outside /api/ still reach the HTTP handler (here /health).
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ")
            writer.close()
            # /apiary is not /api/.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /apiary HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert not head.startswith(b"HTTP/1.1 404 ")  # picows' own answer to a POST
            writer.close()

    run(body())


def test_an_api_without_a_key_answers_404_to_every_method():
    async def body() -> None:
        async with served(key=None) as port:
            for method in ("POST", "GET", "PUT", "DELETE"):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request("/api/publish", b"{}", method))
                status, _, parsed = await answer(reader)
                assert status == 404 and parsed["error"]["code"] == "not_found"
                writer.close()
            ws = await open_client(f"ws://127.0.0.1:{port}/ws")  # the rest works
            await ws.close()

    run(body())


def test_disconnect_and_history_on_the_memory_broker():
    async def body() -> None:
        async with served(server_options={"history_rooms": "h-*"}) as port:
            url = f"ws://127.0.0.1:{port}/ws"
            ws, data = await authed(url, "user:m")
            await send(ws, {"event": "join", "data": {"rooms": ["h-1"]}})
            joined = await recv(ws)
            assert joined["event"] == "joined"
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for i in range(3):
                body = json.dumps({"room": "h-1", "event": "m", "data": i}).encode()
                writer.write(request("/api/publish", body))
                assert (await answer(reader))[0] == 200
            for i in range(3):
                assert (await recv(ws))["data"] == i  # numbered on receipt, in order
            writer.write(request("/api/history", b'{"room":"h-1"}'))
            status, _, kept = await answer(reader)
            check_answer("/api/history", "POST", status, kept)
            assert [m["data"] for m in kept["messages"]] == [0, 1, 2]
            assert kept["epoch"] == joined["data"]["epoch"]
            body = json.dumps({"client": data["id"], "code": 4100, "reason": "bye"}).encode()
            writer.write(request("/api/disconnect", body))
            assert (await answer(reader))[0] == 200
            with pytest.raises(Exception) as closed_by:
                await recv(ws)
            assert closed_by.value.rcvd.code == 4100
            writer.close()

    run(body())


def test_the_api_answers_over_tls(tmp_path):
    import ssl

    from roomcast.transport.tls import server_context
    from serving_support import make_certificates

    files = make_certificates(tmp_path)
    context = ssl.create_default_context(cafile=str(files["ca"]))

    async def body() -> None:
        helper = WebSocketServerHelper("tls", "/ws", "memory://", token_auth)
        server_ssl = server_context(str(files["cert"]), str(files["key"]))
        server = await helper.serve("127.0.0.1", 0, ssl=server_ssl, api=Api(helper, KEY))
        try:
            port = server.bound_port
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            for _ in range(2):  # kept alive over TLS too
                writer.write(request("/api/broadcast", b'{"event":"e"}'))
                status, _, parsed = await answer(reader)
                assert status == 200, parsed
            writer.write(request("/api/publish", b"{nope"))  # a 400 keeps the connection
            assert (await answer(reader))[0] == 400
            writer.close()
        finally:
            await server.stop()
            await helper.shutdown()

    run(body())
