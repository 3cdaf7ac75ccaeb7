"""permessage-deflate (RFC 7692, SPEC §11) over real sockets: negotiation, outbound frames
compressed once per message, bounded inbound inflation and the protocol errors."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import subprocess
import sys
import zlib
from typing import Any

import orjson
import pytest
from roomcast.app import Application
from roomcast.cli.flags import build_parser, config_from_args
from roomcast.component import WebSocketBindingKeys, WebSocketComponent
from roomcast.config import resolve_server_options
from roomcast.redis import RedisHelper
from support import (
    RawClient,
    allow_all,
    authed,
    closed_with,
    eventually,
    open_client,
    recv,
    run,
    running,
    send,
)

SECRET = "a-test-secret-of-at-least-32-bytes"
BASE = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
TAIL = b"\x00\x00\xff\xff"


def deflate(payload: bytes) -> bytes:
    """An RFC 7692 payload: raw deflate, sync-flushed, the empty stored block stripped."""
    compressor = zlib.compressobj(wbits=-15)
    out = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def inflate(payload: bytes) -> bytes:
    return zlib.decompressobj(wbits=-15).decompress(payload + TAIL)


def scores(n: int = 30) -> dict[str, Any]:
    """About 1.5 KB of JSON that compresses well."""
    return {"players": [{"id": i, "name": f"player-{i % 5}", "score": i * 7} for i in range(n)]}


def extensions(head: bytes) -> list[str]:
    lines = head.decode("latin-1").split("\r\n")
    return [
        line.split(":", 1)[1].strip()
        for line in lines
        if line.lower().startswith("sec-websocket-extensions:")
    ]


def upgrade_headers(offer: str | None) -> dict[str, str]:
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    if offer is not None:
        headers["Sec-WebSocket-Extensions"] = offer
    return headers


async def raw_authed(port: int, offer: str | None = "permessage-deflate") -> RawClient:
    raw, head = await RawClient.connect(port, headers=upgrade_headers(offer))
    assert head.startswith(b"HTTP/1.1 101"), head
    raw.send_text(orjson.dumps({"event": "authenticate", "data": {"token": "user:raw"}}))
    opcode, payload = await raw.read_frame()
    assert opcode == 0x1 and orjson.loads(payload)["event"] == "connected"
    return raw


async def read_message(raw: RawClient) -> tuple[bool, dict[str, Any]]:
    """(compressed?, message) of the next data frame."""
    opcode, payload = await raw.read_frame()
    assert opcode == 0x1
    compressed = bool(raw.first_byte & 0x40)
    return compressed, orjson.loads(inflate(payload) if compressed else payload)


def deflate_on(**options: Any) -> dict[str, Any]:
    return {"per_message_deflate": True, **options}


# -- negotiation ----------------------------------------------------------------------------


def test_websockets_client_negotiates_and_receives_compressed_broadcast() -> None:
    async def body() -> None:
        async with running(server_options=deflate_on()) as node:
            ws, _ = await authed(node.url, compression="deflate")
            answer = ws.response.headers["Sec-WebSocket-Extensions"]
            assert answer.startswith(BASE)
            node.helper.broadcast("scores", scores())
            assert await recv(ws) == {"event": "scores", "data": scores()}
            assert node.helper.stats()["deflated"] == 1
            await ws.close()

    run(body())


def test_client_that_offers_nothing_gets_plain_frames() -> None:
    async def body() -> None:
        async with running(server_options=deflate_on()) as node:
            ws, _ = await authed(node.url, compression=None)
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            node.helper.broadcast("scores", scores())
            assert await recv(ws) == {"event": "scores", "data": scores()}
            assert node.helper.stats()["deflated"] == 0
            await ws.close()

    run(body())


def test_offer_is_ignored_while_the_option_is_off() -> None:
    async def body() -> None:
        async with running() as node:
            raw, head = await RawClient.connect(
                node.port, headers=upgrade_headers("permessage-deflate")
            )
            assert head.startswith(b"HTTP/1.1 101") and extensions(head) == []
            raw.send_text(orjson.dumps({"event": "authenticate", "data": {"token": "anon"}}))
            await raw.read_frame()
            node.helper.broadcast("scores", scores())
            compressed, message = await read_message(raw)
            assert not compressed and message["data"] == scores()

    run(body())


@pytest.mark.parametrize(
    ("offer", "answer"),
    [
        ("permessage-deflate", BASE),
        ("permessage-deflate; client_max_window_bits", BASE),
        ("permessage-deflate; server_max_window_bits=10", BASE + "; server_max_window_bits=10"),
        ("permessage-deflate; server_no_context_takeover; client_no_context_takeover", BASE),
        ("permessage-deflate; server_max_window_bits=7, permessage-deflate", BASE),
        ("x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=9", BASE),
    ],
)
def test_raw_offer_gets_the_rfc_answer(offer: str, answer: str) -> None:
    async def body() -> None:
        async with running(server_options=deflate_on()) as node:
            _, head = await RawClient.connect(node.port, headers=upgrade_headers(offer))
            assert head.startswith(b"HTTP/1.1 101")
            assert extensions(head) == [answer]

    run(body())


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; unknown=1",
        "permessage-deflate; client_max_window_bits; client_max_window_bits",
        'permessage-deflate; server_max_window_bits="10',
        "x-webkit-deflate-frame",
    ],
)
def test_declined_offer_still_upgrades_without_the_extension(offer: str) -> None:
    async def body() -> None:
        async with running(server_options=deflate_on()) as node:
            raw, head = await RawClient.connect(node.port, headers=upgrade_headers(offer))
            assert head.startswith(b"HTTP/1.1 101") and extensions(head) == []
            # RSV1 is a protocol error on this connection.
            raw.send_frame(0x41, deflate(b'{"event":"heartbeat"}'))
            assert (await raw.read_close())[0] == 1002

    run(body())


def test_option_takes_a_boolean_and_the_original_alias() -> None:
    assert resolve_server_options({"perMessageDeflate": True})["per_message_deflate"] is True
    with pytest.raises(ValueError, match="per_message_deflate must be true or false: 'yes'"):
        resolve_server_options({"per_message_deflate": "yes"})
    with pytest.raises(ValueError, match="deflate_threshold must be a non-negative integer"):
        resolve_server_options({"deflateThreshold": -1})


# -- outbound -------------------------------------------------------------------------------


def test_compressed_and_plain_clients_in_one_room_get_identical_messages() -> None:
    async def body() -> None:
        async with running(server_options=deflate_on(), validate_room_fn=allow_all) as node:
            clients = [await raw_authed(node.port) for _ in range(3)]
            clients += [await raw_authed(node.port, offer=None) for _ in range(2)]
            ws_plain, _ = await authed(node.url, compression=None)
            ws_deflate, _ = await authed(node.url, compression="deflate")
            for raw in clients:
                raw.send_text(orjson.dumps({"event": "join", "data": {"rooms": ["lobby"]}}))
            for ws in (ws_plain, ws_deflate):
                await send(ws, {"event": "join", "data": {"rooms": ["lobby"]}})
            await eventually(lambda: len(node.helper.get_clients_by_room("lobby")) == 7)
            node.helper.send_to_room("lobby", "scores", scores())
            expected = {"event": "scores", "data": scores()}
            got = [await read_message(raw) for raw in clients]
            assert [compressed for compressed, _ in got] == [True, True, True, False, False]
            assert all(message == expected for _, message in got)
            assert await recv(ws_plain) == expected
            assert await recv(ws_deflate) == expected
            # Four recipients took the compressed frame; it was compressed once.
            assert node.helper.stats()["deflated"] == 1

    run(body())


def test_messages_under_the_threshold_go_uncompressed() -> None:
    async def body() -> None:
        async with running(server_options=deflate_on(deflate_threshold=600)) as node:
            raw = await raw_authed(node.port)
            node.helper.broadcast("small", "x" * 100)
            node.helper.broadcast("large", "x" * 1000)
            compressed, message = await read_message(raw)
            assert not compressed and message == {"event": "small", "data": "x" * 100}
            compressed, message = await read_message(raw)
            assert compressed and message == {"event": "large", "data": "x" * 1000}

    run(body())


def test_burst_of_messages_in_one_write_stays_in_order() -> None:
    async def body() -> None:
        async with running(server_options=deflate_on()) as node:
            raw = await raw_authed(node.port)
            for i in range(20):
                node.helper.broadcast("tick", {"i": i, **scores(i % 5 * 10)})
            for i in range(20):
                _, message = await read_message(raw)
                assert message["data"] == {"i": i, **scores(i % 5 * 10)}

    run(body())


# -- inbound --------------------------------------------------------------------------------


def _recording(received: list[dict[str, Any]]) -> Any:
    def message_handler(client_id: str, user_id: str | None, message: dict[str, Any]) -> None:
        received.append(message)

    return message_handler


def test_compressed_inbound_single_frame_reaches_message_handler() -> None:
    async def body() -> None:
        received: list[dict[str, Any]] = []
        handler = _recording(received)
        async with running(server_options=deflate_on(), message_handler=handler) as node:
            ws, _ = await authed(node.url, compression="deflate")
            await send(ws, {"event": "chat", "data": scores()})
            raw = await raw_authed(node.port)
            raw.send_frame(0x41, deflate(orjson.dumps({"event": "chat", "data": "raw"})))
            await eventually(lambda: len(received) == 2)
            assert {"event": "chat", "data": scores()} in received
            assert {"event": "chat", "data": "raw"} in received

    run(body())


def test_compressed_inbound_fragments_reach_message_handler() -> None:
    async def body() -> None:
        received: list[dict[str, Any]] = []
        handler = _recording(received)
        async with running(server_options=deflate_on(), message_handler=handler) as node:
            raw = await raw_authed(node.port)
            compressed = deflate(orjson.dumps({"event": "chat", "data": scores(60)}))
            third = len(compressed) // 3
            raw.send_frame(0x41, compressed[:third], fin=False)  # RSV1 on the first only
            raw.send_frame(0x9, b"in between")  # a control frame may interleave
            assert await raw.read_frame() == (0xA, b"in between")
            raw.send_frame(0x0, compressed[third : 2 * third], fin=False)
            raw.send_frame(0x0, compressed[2 * third :])
            # websockets fragments a message given as an iterable, compressed as one.
            ws, _ = await authed(node.url, compression="deflate")
            text = orjson.dumps({"event": "chat", "data": "ws"}).decode()
            await ws.send([text[:5], text[5:12], text[12:]])
            await eventually(lambda: len(received) == 2)
            assert received[0] == {"event": "chat", "data": scores(60)}
            assert received[1] == {"event": "chat", "data": "ws"}

    run(body())


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_decompression_bomb_gets_1009_with_rss_flat_and_no_callback() -> None:
    async def body() -> None:
        received: list[dict[str, Any]] = []
        handler = _recording(received)
        async with running(server_options=deflate_on(), message_handler=handler) as node:
            raw = await raw_authed(node.port)
            inner = b'{"event":"chat","data":"' + b"0" * (64 << 20) + b'"}'
            bomb = deflate(inner)
            assert len(bomb) < node.helper.server_options["max_payload_length"]
            del inner
            before = _rss()
            raw.send_frame(0x41, bomb)
            assert await raw.read_close() == (1009, "Message too big")
            grown = _rss() - before
            assert grown < 8 << 20, f"RSS grew by {grown} bytes for a 64 MiB bomb"
            assert received == []

    run(body())


def test_inflated_size_limit_is_exact() -> None:
    async def body() -> None:
        received: list[dict[str, Any]] = []
        handler = _recording(received)
        options = deflate_on(max_payload_length=1000)
        async with running(server_options=options, message_handler=handler) as node:
            raw = await raw_authed(node.port)
            at_limit = b'{"event":"chat","data":"' + b"a" * (1000 - 26) + b'"}'
            assert len(at_limit) == 1000
            raw.send_frame(0x41, deflate(at_limit))
            await eventually(lambda: len(received) == 1)
            raw.send_frame(0x41, deflate(at_limit[:-2] + b'a"}'))
            assert await raw.read_close() == (1009, "Message too big")
            assert len(received) == 1

    run(body())


def test_bad_deflate_data_gets_1007() -> None:
    async def body() -> None:
        async with running(server_options=deflate_on()) as node:
            raw = await raw_authed(node.port)
            raw.send_frame(0x41, b"\xff\xff\xff\xff")
            assert (await raw.read_close())[0] == 1007

    run(body())


def test_compressed_invalid_utf8_text_gets_1007() -> None:
    async def body() -> None:
        async with running(server_options=deflate_on()) as node:
            raw = await raw_authed(node.port)
            raw.send_frame(0x41, deflate(b'{"event":"chat","data":"\xff"}'))
            assert (await raw.read_close())[0] == 1007

    run(body())


@pytest.mark.parametrize(
    ("frames", "why"),
    [
        ([(0x49, b"ping")], "RSV1 on a control frame"),
        ([(0x21, b"{}")], "RSV2"),
        ([(0x11, b"{}")], "RSV3"),
        ([(0x01, b'{"ev'), (0x40, b'ent":"x"}')], "RSV1 on a continuation frame"),
    ],
)
def test_reserved_bits_misused_get_1002(frames: list[tuple[int, bytes]], why: str) -> None:
    async def body() -> None:
        async with running(server_options=deflate_on()) as node:
            raw = await raw_authed(node.port)
            for i, (opcode, payload) in enumerate(frames):
                raw.send_frame(opcode, payload, fin=i == len(frames) - 1)
            assert (await raw.read_close())[0] == 1002, why

    run(body())


def test_rsv1_without_negotiation_gets_1002() -> None:
    async def body() -> None:
        async with running() as node:  # the option is off
            raw = await raw_authed(node.port, offer="permessage-deflate")
            raw.send_frame(0x41, deflate(b'{"event":"heartbeat"}'))
            assert (await raw.read_close())[0] == 1002
        async with running(server_options=deflate_on()) as node:  # on, but not offered
            raw = await raw_authed(node.port, offer=None)
            raw.send_frame(0x41, deflate(b'{"event":"heartbeat"}'))
            assert (await raw.read_close())[0] == 1002

    run(body())


def test_pings_are_still_answered() -> None:
    async def body() -> None:
        async with running() as node:
            raw = await raw_authed(node.port, offer=None)
            raw.send_frame(0x9, b"hello")
            assert await raw.read_frame() == (0xA, b"hello")

    run(body())


# -- records and figures ---------------------------------------------------------------------


def test_small_server_window_gets_longer_messages_uncompressed() -> None:
    async def body() -> None:
        async with running(server_options=deflate_on()) as node:
            raw = await raw_authed(node.port, "permessage-deflate; server_max_window_bits=10")
            (client,) = node.helper.get_clients().values()
            assert client.deflate_window == 10
            fits = "x" * (1024 - len('{"event":"fits","data":""}'))
            node.helper.broadcast("fits", fits)  # 1024 bytes: within the 2^10 window
            node.helper.broadcast("long", fits + "x")
            compressed, message = await read_message(raw)
            assert compressed and message == {"event": "fits", "data": fits}
            compressed, message = await read_message(raw)
            assert not compressed and message == {"event": "long", "data": fits + "x"}
            # What the client's decompressor with a 2^10 window reads.
            node.helper.broadcast("scores", scores(20))
            opcode, payload = await raw.read_frame()
            assert opcode == 0x1 and raw.first_byte & 0x40
            assert orjson.loads(zlib.decompressobj(wbits=-10).decompress(payload + TAIL)) == {
                "event": "scores",
                "data": scores(20),
            }

    run(body())


def test_close_code_reaches_a_websockets_client() -> None:
    async def body() -> None:
        async with running(server_options=deflate_on(max_payload_length=2000)) as node:
            ws, _ = await authed(node.url, compression="deflate")
            await send(ws, {"event": "chat", "data": "a" * 5000})  # compresses to ~30 bytes
            code, _, _ = await closed_with(ws)
            assert code == 1009

    run(body())


def test_wire_bytes_shrink_for_a_compressing_client() -> None:
    async def body() -> None:
        async with running(server_options=deflate_on()) as node:
            raw = await raw_authed(node.port)
            before = node.helper.stats()["bytes_out"]
            node.helper.broadcast("scores", scores())
            await read_message(raw)
            wire = node.helper.stats()["bytes_out"] - before
            plain = len(orjson.dumps({"event": "scores", "data": scores()}))
            assert wire < plain / 3, (wire, plain)

    run(body())


def test_compression_survives_many_connections_at_once() -> None:
    async def body() -> None:
        async with running(server_options=deflate_on()) as node:
            clients = await asyncio.gather(*(raw_authed(node.port) for _ in range(50)))
            node.helper.broadcast("scores", scores())
            for raw in clients:
                compressed, message = await read_message(raw)
                assert compressed and message["data"] == scores()
            assert node.helper.stats()["deflated"] == 1

    run(body())


# -- the option everywhere ------------------------------------------------------------------


def test_envelope_from_another_node_is_compressed_on_the_delivering_node(redis_server) -> None:
    async def body() -> None:
        url = redis_server.url
        async with (
            running(redis_connection=RedisHelper(url=url)) as sender,
            running(redis_connection=RedisHelper(url=url), server_options=deflate_on()) as node,
        ):
            raw = await raw_authed(node.port)
            ws, _ = await authed(node.url, compression=None)
            await node.helper.settle()
            await sender.helper.settle()
            sender.helper.send(None, {"topic": "scores", "data": scores()})
            compressed, message = await read_message(raw)
            assert compressed and message == {"event": "scores", "data": scores()}
            assert await recv(ws) == {"event": "scores", "data": scores()}
            assert node.helper.stats()["deflated"] == 1
            assert sender.helper.stats()["deflated"] == 0  # nobody there negotiated it
            await ws.close()

    run(body())


def test_component_server_options_binding_turns_it_on(redis_server) -> None:
    app = Application(port=0)
    app.bind(WebSocketBindingKeys.REDIS_CONNECTION).to_value(RedisHelper(url=redis_server.url))
    app.bind(WebSocketBindingKeys.AUTHENTICATE_HANDLER).to_value(
        lambda data: {"user_id": data.get("token")}
    )
    app.bind(WebSocketBindingKeys.SERVER_OPTIONS).to_value(
        {"serverOptions": {"perMessageDeflate": True}}
    )
    app.component(WebSocketComponent)

    async def body() -> None:
        await app.start()
        try:
            ws, _ = await authed(f"ws://127.0.0.1:{app.bound_port}/ws", "u", compression="deflate")
            assert ws.response.headers["Sec-WebSocket-Extensions"].startswith(BASE)
            helper = app.get(WebSocketBindingKeys.WEBSOCKET_INSTANCE)
            helper.broadcast("scores", scores())
            assert await recv(ws) == {"event": "scores", "data": scores()}
            assert helper.stats()["deflated"] == 1
            await ws.close()
        finally:
            await app.stop()

    run(body())


def _serve(*flags: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "roomcast", "serve", "--port", "0", "--jwt-secret", SECRET, *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _listening_port(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    while line := proc.stdout.readline():
        match = re.search(r"listening on ws://127\.0\.0\.1:(\d+)/", line)
        if match:
            return int(match.group(1))
    raise AssertionError(f"server exited: {proc.wait(timeout=20)} {proc.stderr}")


@pytest.mark.parametrize(
    ("flags", "env", "negotiated"),
    [
        (("--per-message-deflate",), None, True),
        ((), {"ROOMCAST_PER_MESSAGE_DEFLATE": "1"}, True),
        ((), None, False),
    ],
)
def test_cli_flag_and_environment_variable(
    flags: tuple[str, ...], env: dict[str, str] | None, negotiated: bool
) -> None:
    proc = _serve(*flags, env=env)
    try:
        port = _listening_port(proc)

        async def body() -> None:
            ws = await open_client(f"ws://127.0.0.1:{port}/ws", compression="deflate")
            answer = ws.response.headers.get("Sec-WebSocket-Extensions")
            assert (answer is not None and answer.startswith(BASE)) is negotiated, answer
            await ws.close()

        run(body())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)  # and closes the pipes
    assert proc.returncode == 0


def test_cli_threshold_flag_reaches_the_server_options() -> None:
    args = build_parser().parse_args(["serve", "--per-message-deflate", "--deflate-threshold", "0"])
    options = config_from_args(args, {}).server_config().options
    assert options["per_message_deflate"] is True and options["deflate_threshold"] == 0
    args = build_parser().parse_args(["serve"])
    options = config_from_args(args, {"ROOMCAST_DEFLATE_THRESHOLD": "1024"}).server_config().options
    assert options["per_message_deflate"] is False and options["deflate_threshold"] == 1024
