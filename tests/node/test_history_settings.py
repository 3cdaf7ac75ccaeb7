"""The emitter takes the servers' history settings from Redis, and a message to a history room
without an offset (from the original's nodes, or an emitter without the settings) is
delivered as a plain message and counted; real redis-server and a real Redis Cluster."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
from redis_support import node, raw_redis, redis_at, settle
from roomcast import RedisClusterHelper, WebSocketEmitter
from roomcast.broker.redis.settings import KEY, decode_settings
from roomcast.serving.metrics import samples
from support import authed, eventually, join, joined, recv, run

OPTIONS = {"history_rooms": "chat:*", "history_size": 50, "history_ttl": 120.0}
PUBLISHED = {"history_rooms": "chat:*", "history_size": 50, "history_ttl": 120.0}


def history_node(redis: Any) -> Any:
    return node(redis, default_rooms=[], server_options=OPTIONS)


async def member(n: Any, room: str) -> Any:
    ws, _ = await authed(n.url)
    await join(ws, [room])
    await joined(ws)
    return ws


def test_servers_publish_their_settings_and_the_emitter_takes_them(redis_server, caplog):
    async def body():
        redis = redis_at(redis_server.port)
        async with history_node(redis) as a, raw_redis(redis_server.port) as r:
            await eventually(lambda: r.exists(KEY))
            assert orjson.loads(await r.get(KEY)) == {"rooms": "chat:*", "size": 50, "ttl": 120.0}
            assert 0 < await r.pttl(KEY) <= 60_000  # gone a minute after the last server
            ws = await member(a, "chat:e")
            await settle(a)
            emitter = WebSocketEmitter(redis_at(redis_server.port))
            await emitter.configure()
            try:
                assert emitter.history_settings == PUBLISHED
                await emitter.to_room("chat:e", "m", 1)
                assert await recv(ws) == {"event": "m", "data": 1, "room": "chat:e", "offset": 1}
            finally:
                await emitter.shutdown()
            # Given settings win; a mismatch is logged, once.
            with caplog.at_level(logging.WARNING, logger="roomcast"):
                told = WebSocketEmitter(
                    redis_at(redis_server.port), history_rooms="chat:*", history_size=7
                )
                await told.configure()
                await told.to_room("chat:e", "m", 2)
                await told.to_room("chat:e", "m", 3)
                await told.shutdown()
            assert told.history_settings == {**PUBLISHED, "history_size": 7}
            warned = [r for r in caplog.records if "differ from the servers'" in r.getMessage()]
            assert len(warned) == 1 and "history_size" in warned[0].getMessage()
            assert [(await recv(ws))["offset"] for _ in range(2)] == [2, 3]
            await ws.close()

    run(body())


def test_roomcast_emit_numbers_without_history_flags(redis_server):
    from process_support import emit

    async def body():
        redis = redis_at(redis_server.port)
        async with history_node(redis) as a, raw_redis(redis_server.port) as r:
            await eventually(lambda: r.exists(KEY))
            ws = await member(a, "chat:cli")
            await settle(a)
            done = await asyncio.to_thread(
                emit, "--redis-url", redis_server.url, "--room", "chat:cli", "--event", "e"
            )
            assert done.returncode == 0, done.stderr
            assert await recv(ws) == {"event": "e", "room": "chat:cli", "offset": 1}
            await ws.close()

    run(body())


def test_unnumbered_messages_to_a_history_room_are_delivered_plain_and_counted(
    redis_server, caplog
):
    async def body():
        # An emitter that found no settings (no server had written them yet): it publishes
        # plainly, as the original's emitter and nodes do.
        old = WebSocketEmitter(redis_at(redis_server.port))
        await old.configure()
        assert old.history_settings is None
        redis = redis_at(redis_server.port)
        try:
            with caplog.at_level(logging.WARNING, logger="roomcast"):
                async with history_node(redis) as a, raw_redis(redis_server.port) as r:
                    ws = await member(a, "chat:u")
                    await settle(a)
                    await old.to_room("chat:u", "m", 1)
                    assert await recv(ws) == {"event": "m", "data": 1}  # no room, no offset
                    original = orjson.dumps(
                        {
                            "serverId": "a-node-of-the-original",
                            "type": "room",
                            "event": "o",
                            "data": 2,
                            "target": "chat:u",
                        }
                    )
                    await r.publish("ws:room:chat:u", original)
                    assert await recv(ws) == {"event": "o", "data": 2}
                    a.helper.send_to_room("chat:u", "m", 3)  # numbered ones go on
                    assert await recv(ws) == {
                        "event": "m",
                        "data": 3,
                        "room": "chat:u",
                        "offset": 1,
                    }
                    stats = a.helper.stats()
                    assert stats["history_unnumbered"] == 2 and stats["history_dropped"] == 0
                    figures = {s.name: s.values for s in samples(a.helper)}
                    assert figures["roomcast_history_unnumbered"] == [((), 2)]
                    await ws.close()
        finally:
            await old.shutdown()
        logged = [r for r in caplog.records if "without an offset" in r.getMessage()]
        assert len(logged) == 1  # once per spell, not per message

    run(body())


def test_the_emitter_takes_the_settings_on_a_cluster(redis_cluster):
    def helper() -> RedisClusterHelper:
        return RedisClusterHelper(redis_cluster.url, ready_timeout=5)

    async def body():
        async with history_node(helper()) as a:
            ws = await member(a, "chat:c")
            await settle(a)
            emitter = WebSocketEmitter(helper())
            await eventually_configured(emitter)
            try:
                await emitter.to_room("chat:c", "m", 1)
                assert await recv(ws) == {"event": "m", "data": 1, "room": "chat:c", "offset": 1}
            finally:
                await emitter.shutdown()
            await ws.close()

    run(body())


async def eventually_configured(emitter: WebSocketEmitter) -> None:
    """Configure until the servers' settings are in redis (the node writes them at start)."""
    async with asyncio.timeout(5):
        while True:
            await emitter.configure()
            if emitter.history_settings is not None:
                return
            await emitter.shutdown()
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"nope",
        b"[]",
        b'{"rooms": "", "size": 1, "ttl": 1}',
        b'{"rooms": "a", "size": 0, "ttl": 1}',
        b'{"rooms": "a", "size": 1, "ttl": true}',
        b'{"rooms": "a", "size": 1}',
    ],
)
def test_malformed_settings_are_ignored(raw):
    assert decode_settings(raw) is None


def test_settings_decode():
    raw = b'{"rooms": "a*", "size": 3, "ttl": 2}'
    assert decode_settings(raw) == {"history_rooms": "a*", "history_size": 3, "history_ttl": 2.0}
