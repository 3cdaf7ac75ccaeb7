"""One writer per node for history rooms: a client's messages to a history room, sent back to
back, get offsets in the order it sent them (memory, a real redis-server, a real Redis
Cluster), and a node writes them on one connection per Redis node."""

from __future__ import annotations

from typing import Any

import orjson
from redis_support import node, raw_redis, redis_at, settle
from roomcast import RedisClusterHelper
from roomcast.broker.redis.history import WRITER_NAME
from support import authed, join, joined, recv, run, running

COUNT = 1000
ROOM = "chat:order"


def relay(holder: list[Any]) -> Any:
    """message_handler: every `say` of a client goes to the room, as the application would."""

    def handle(client_id: str, user_id: str | None, message: dict[str, Any]) -> None:
        holder[0].send(ROOM, {"topic": "said", "data": message.get("data")})

    return handle


async def burst_and_check(sender_url: str, receivers: list[Any]) -> None:
    sender, _ = await authed(sender_url)
    frames = [orjson.dumps({"event": "say", "data": n}).decode() for n in range(COUNT)]
    for frame in frames:  # back to back: no wait for anything in between
        await sender.send(frame)
    for ws in receivers:
        got = [await recv(ws, timeout=20) for _ in range(COUNT)]
        assert [m["data"] for m in got] == list(range(COUNT))  # the order it sent them
        offsets = [m["offset"] for m in got]
        assert offsets == list(range(offsets[0], offsets[0] + COUNT))
        assert all(m["room"] == ROOM for m in got)
    await sender.close()


async def member(url: str) -> Any:
    ws, _ = await authed(url, "user:reader")
    await join(ws, [ROOM])
    await joined(ws)
    return ws


def test_a_burst_keeps_its_order_on_memory():
    holder: list[Any] = []

    async def body():
        async with running(
            default_rooms=[],
            validate_room_fn=lambda client_id, user_id, rooms: rooms,
            message_handler=relay(holder),
            server_options={"history_rooms": "chat:*"},
        ) as n:
            holder.append(n.helper)
            ws = await member(n.url)
            await burst_and_check(n.url, [ws])
            await ws.close()

    run(body(), timeout=60)


def history_node(redis: Any, holder: list[Any]) -> Any:
    return node(
        redis,
        default_rooms=[],
        message_handler=relay(holder),
        server_options={"history_rooms": "chat:*"},
    )


def test_a_burst_keeps_its_order_on_redis_with_one_writer_connection(redis_server):
    async def body():
        redis = redis_at(redis_server.port)
        ha: list[Any] = []
        hb: list[Any] = []
        async with history_node(redis, ha) as a, history_node(redis, hb) as b:
            ha.append(a.helper)
            hb.append(b.helper)
            near, far = await member(a.url), await member(b.url)
            await settle(a, b)
            await burst_and_check(a.url, [near, far])
            async with raw_redis(redis_server.port) as r:
                clients = await r.client_list()
            writers = [c for c in clients if _writes(c)]
            assert len(writers) == 1  # node a's one writer connection
            assert a.helper.history_store.pipelines <= COUNT
            for ws in (near, far):
                await ws.close()

    run(body(), timeout=90)


def test_a_burst_keeps_its_order_on_a_cluster(redis_cluster):
    def helper() -> RedisClusterHelper:
        return RedisClusterHelper(redis_cluster.url, ready_timeout=5)

    async def body():
        ha: list[Any] = []
        hb: list[Any] = []
        async with history_node(helper(), ha) as a, history_node(helper(), hb) as b:
            ha.append(a.helper)
            hb.append(b.helper)
            near, far = await member(a.url), await member(b.url)
            await settle(a, b)
            await burst_and_check(a.url, [near, far])
            writers = []
            for port in redis_cluster.ports:
                async with raw_redis(port) as r:
                    clients = await r.client_list()
                writers.append(sum(1 for c in clients if _writes(c)))
            assert sorted(writers) == [0, 0, 1]  # one room, one slot: one connection
            for ws in (near, far):
                await ws.close()

    run(body(), timeout=90)


def _writes(client: dict[str, Any]) -> bool:
    """A writer's connection that ran scripts (not the one cluster discovery used)."""
    return client.get("name") == WRITER_NAME and client.get("cmd") in ("eval", "evalsha")
