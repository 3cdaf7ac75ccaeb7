"""`server_options["write_delay"]`: deliveries queued within the window share one write."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from roomcast import WebSocketServerHelper
from support import RawClient, run, running, token_auth


def frames(chunk: bytes) -> list[dict]:
    """The server's (unmasked, unfragmented, short) text frames in `chunk`, parsed."""
    out = []
    while chunk:
        assert chunk[0] == 0x81 and chunk[1] < 126, chunk[:2]
        n = chunk[1]
        out.append(orjson.loads(chunk[2 : 2 + n]))
        chunk = chunk[2 + n :]
    return out


async def connected_raw(port: int) -> RawClient:
    raw, head = await RawClient.connect(port)
    assert head.startswith(b"HTTP/1.1 101")
    auth = {"event": "authenticate", "data": {"type": "Bearer", "token": "user:alice"}}
    raw.send_text(orjson.dumps(auth))
    opcode, payload = await raw.read_frame()
    assert opcode == 0x1 and orjson.loads(payload)["event"] == "connected"
    return raw


def test_without_write_delay_a_message_is_written_alone():
    async def body():
        async with running() as node:
            raw = await connected_raw(node.port)
            node.helper.broadcast("a", 1)
            # The second message is only sent once the first has arrived.
            chunk = await asyncio.wait_for(raw.reader.read(65536), 10)
            assert [m["event"] for m in frames(chunk)] == ["a"]
            node.helper.broadcast("b", 2)
            chunk = await asyncio.wait_for(raw.reader.read(65536), 10)
            assert [m["event"] for m in frames(chunk)] == ["b"]

    run(body())


def test_write_delay_coalesces_messages_queued_within_the_window():
    async def body():
        async with running(server_options={"writeDelay": 1.0}) as node:
            raw = await connected_raw(node.port)
            node.helper.broadcast("a", 1)
            await asyncio.sleep(0.05)  # a later loop iteration, well inside the window
            node.helper.broadcast("b", 2)
            node.helper.broadcast("c", 3)
            # One write: the first read returns all three frames, in order.
            chunk = await asyncio.wait_for(raw.reader.read(65536), 10)
            assert [(m["event"], m["data"]) for m in frames(chunk)] == [
                ("a", 1),
                ("b", 2),
                ("c", 3),
            ]
            assert node.helper.stats()["pending_bytes"] == 0

    run(body())


def test_write_delay_must_not_be_negative():
    for bad, shown in ((-0.5, "-0.5"), (float("nan"), "nan")):
        with pytest.raises(ValueError, match=f"write_delay must not be negative: {shown}"):
            WebSocketServerHelper(
                "t",
                redis_connection="memory://",
                authenticate_fn=token_auth,
                server_options={"write_delay": bad},
            )
