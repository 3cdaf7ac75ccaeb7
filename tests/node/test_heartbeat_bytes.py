"""Heartbeats: the canonical `{"event":"heartbeat"}` is recognised by its bytes, any other
spelling is decoded; both count as heartbeats, get no reply and keep a client alive."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from support import RawClient, eventually, run, running

CANONICAL = b'{"event":"heartbeat"}'
SPELLINGS = {
    "canonical": (0x1, CANONICAL),
    "canonical-binary": (0x2, CANONICAL),
    "spaced": (0x1, b'{ "event": "heartbeat" }'),
    "with-data": (0x1, b'{"event":"heartbeat","data":{"t":1}}'),
    "data-first": (0x1, b'{"data":null,"event":"heartbeat"}'),
    "escaped": (0x1, b'{"event":"heart\\u0062eat"}'),
}


async def raw_authed(port: int) -> RawClient:
    raw, head = await RawClient.connect(port)
    assert head.startswith(b"HTTP/1.1 101")
    raw.send_text(orjson.dumps({"event": "authenticate", "data": {"token": "user:hb"}}))
    opcode, payload = await raw.read_frame()
    assert opcode == 0x1 and orjson.loads(payload)["event"] == "connected"
    return raw


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_each_spelling_counts_once_gets_no_reply_and_later_messages_still_work(spelling):
    handled = []

    async def body():
        async with running() as node:
            node.helper.message_handler = lambda **kw: handled.append(kw["message"])
            counted = node.helper.counters.received
            raw = await raw_authed(node.port)
            opcode, payload = SPELLINGS[spelling]
            for _ in range(3):
                raw.send_frame(opcode, payload)
            await eventually(lambda: counted["heartbeat"] == 3, what="3 heartbeats counted")
            assert counted["custom"] == counted["invalid"] == 0
            raw.send_text(b'{"event":"after","data":1}')
            await eventually(lambda: handled == [{"event": "after", "data": 1}])
            assert counted["heartbeat"] == 3
            # No reply to any heartbeat: the next frame the client gets is this one.
            node.helper.broadcast("ping", 2)
            opcode, frame = await raw.read_frame()
            assert opcode == 0x1 and orjson.loads(frame) == {"event": "ping", "data": 2}

    run(body())


def test_near_misses_of_the_canonical_bytes_are_decoded_as_what_they_are():
    """Same length as the canonical heartbeat, different bytes: a custom event, and JSON
    that is not an object (an error, the connection stays open)."""
    handled = []

    async def body():
        async with running() as node:
            node.helper.message_handler = lambda **kw: handled.append(kw["message"]["event"])
            counted = node.helper.counters.received
            raw = await raw_authed(node.port)
            custom = b'{"event":"heartbeet"}'
            not_object = b'["event","heartbeat"]'
            assert len(custom) == len(not_object) == len(CANONICAL)
            raw.send_text(custom)
            await eventually(lambda: handled == ["heartbeet"])
            raw.send_text(not_object)
            opcode, frame = await raw.read_frame()
            assert opcode == 0x1
            assert orjson.loads(frame) == {
                "event": "error",
                "data": {"message": "Invalid message format"},
            }
            assert counted["heartbeat"] == 0 and counted["custom"] == 1
            assert counted["invalid"] == 1

    run(body())


@pytest.mark.parametrize("spelling", ["canonical", "spaced"])
def test_heartbeats_keep_an_authenticated_client_alive(spelling):
    async def body():
        async with running(heartbeat_timeout=0.5) as node:
            raw = await raw_authed(node.port)
            opcode, payload = SPELLINGS[spelling]
            for _ in range(8):  # 1.2 s in all, well past the timeout
                await asyncio.sleep(0.15)
                raw.send_frame(opcode, payload)
            await eventually(lambda: node.helper.counters.received["heartbeat"] == 8)
            assert len(node.helper.get_clients()) == 1
            code, _ = await raw.read_close()
            assert code == 4002  # silent from here on

    run(body())


def test_a_canonical_heartbeat_before_authentication_is_accepted_silently():
    async def body():
        async with running() as node:
            raw, head = await RawClient.connect(node.port)
            assert head.startswith(b"HTTP/1.1 101")
            raw.send_text(CANONICAL)
            await eventually(lambda: node.helper.counters.received["heartbeat"] == 1)
            raw.send_text(orjson.dumps({"event": "authenticate", "data": {"token": "user:x"}}))
            opcode, payload = await raw.read_frame()
            assert opcode == 0x1 and orjson.loads(payload)["event"] == "connected"

    run(body())
