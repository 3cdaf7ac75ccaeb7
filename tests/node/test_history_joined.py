"""`joined` for rooms joined other than by a client `join` (the default rooms at login, the
server's `join_room`), and history rooms for encrypted clients (SPEC §10), over real sockets:
the memory broker on one node and a real redis-server with two nodes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from encryption_support import encrypted_client
from redis_support import node, redis_at, settle
from roomcast.crypto import EcdhScheme
from support import (
    allow_all,
    authed,
    eventually,
    join,
    joined,
    nothing_more,
    recv,
    run,
    running,
    send,
)

HISTORY = {"history_rooms": "chat:*"}


def memory_node(**kwargs: Any) -> Any:
    kwargs.setdefault("default_rooms", [])
    return running(validate_room_fn=allow_all, server_options=HISTORY, **kwargs)


def redis_node(redis: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("default_rooms", [])
    return node(redis, server_options=HISTORY, **kwargs)


def check_split(before: list[dict[str, Any]], data: dict[str, Any], after: list[int]) -> None:
    """SPEC §10: what came before `joined` is at or below its offset, what follows is every
    later offset, once each, in order."""
    assert all(m["offset"] <= data["offset"] for m in before), (before, data)
    assert after == list(range(data["offset"] + 1, data["offset"] + 1 + len(after)))


# -- default rooms at login -------------------------------------------------------------------


def test_default_history_rooms_answer_joined_after_connected_on_memory():
    async def body():
        async with memory_node(default_rooms=["chat:home", "lobby"]) as n:
            for k in range(3):
                n.helper.send_to_room("chat:home", "m", k)
            ws, _me = await authed(n.url)  # `connected` first (authed checks it)
            before, data = await joined(ws)
            assert before == []
            assert data == {
                "room": "chat:home",
                "epoch": data["epoch"],
                "offset": 3,
                "recovered": False,
            }
            n.helper.send_to_room("chat:home", "m", "next")
            n.helper.send_to_room("lobby", "plain", 1)
            assert await recv(ws) == {
                "event": "m",
                "data": "next",
                "room": "chat:home",
                "offset": 4,
            }
            assert await recv(ws) == {"event": "plain", "data": 1}
            await nothing_more(ws)  # one `joined` only: lobby keeps no history
            # The position it learnt recovers on a later connection.
            await ws.close()
            n.helper.send_to_room("chat:home", "m", "missed")
            back, _ = await authed(n.url)
            _, fresh = await joined(back)  # the default room's own joined
            assert fresh["offset"] == 5
            await join(back, ["chat:other"])
            _, _ = await joined(back)
            await back.close()

    run(body())


def test_default_history_rooms_answer_joined_on_redis_while_publishing(redis_server):
    async def body():
        redis = redis_at(redis_server.port)
        async with (
            redis_node(redis, default_rooms=["chat:home"]) as a,
            redis_node(redis, default_rooms=[]) as b,
        ):
            stop = asyncio.Event()
            sent = 0

            async def publish() -> None:
                nonlocal sent
                while not stop.is_set():
                    sent += 1
                    b.helper.send_to_room("chat:home", "m", sent)
                    await asyncio.sleep(0.001)

            publisher = asyncio.create_task(publish())
            try:
                await eventually(lambda: sent > 20)
                # Unbounded client queues: each client ends with unread messages, and a bounded
                # queue stops reading, so it would never see the server's close reply.
                clients = [await authed(a.url, max_queue=None) for _ in range(5)]
                for ws, _ in clients:
                    before, data = await joined(ws)
                    assert data["room"] == "chat:home" and data["recovered"] is False
                    after = [(await recv(ws))["offset"] for _ in range(30)]
                    check_split(before, data, after)
            finally:
                stop.set()
                await publisher
            for ws, _ in clients:
                await ws.close()

    run(body())


# -- join_room --------------------------------------------------------------------------------


@pytest.mark.parametrize("confirmed", [False, True])
def test_join_room_answers_joined_on_memory(confirmed):
    async def body():
        async with memory_node() as n:
            helper = n.helper
            helper.send_to_room("chat:srv", "m", 1)
            ws, me = await authed(n.url)
            if confirmed:
                assert await helper.join_room_confirmed(me["id"], "chat:srv")
            else:
                assert helper.join_room(me["id"], "chat:srv")
            assert not helper.join_room(me["id"], "chat:srv")  # a member already: no joined
            before, data = await joined(ws)
            assert before == [] and data["offset"] == 1 and data["recovered"] is False
            assert helper.join_room(me["id"], "plain")  # no history: no joined
            helper.send_to_room("chat:srv", "m", 2)
            assert await recv(ws) == {"event": "m", "data": 2, "room": "chat:srv", "offset": 2}
            await nothing_more(ws)
            await ws.close()

    run(body())


@pytest.mark.parametrize("confirmed", [False, True])
def test_join_room_answers_joined_on_redis_while_another_node_publishes(redis_server, confirmed):
    async def body():
        redis = redis_at(redis_server.port)
        async with redis_node(redis) as a, redis_node(redis) as b:
            stop = asyncio.Event()
            sent = 0

            async def publish() -> None:
                nonlocal sent
                while not stop.is_set():
                    sent += 1
                    b.helper.send("chat:srv", {"topic": "m", "data": sent})
                    await asyncio.sleep(0.001)

            publisher = asyncio.create_task(publish())
            try:
                await eventually(lambda: sent > 20)
                ws, me = await authed(a.url)
                # The node has no member of the room yet: the join waits for redis.
                if confirmed:
                    assert await a.helper.join_room_confirmed(me["id"], "chat:srv")
                else:
                    assert a.helper.join_room(me["id"], "chat:srv")
                before, data = await joined(ws)
                assert data["room"] == "chat:srv" and data["offset"] > 0
                after = [(await recv(ws))["offset"] for _ in range(30)]
                check_split(before, data, after)
            finally:
                stop.set()
                await publisher
            await ws.close()

    run(body())


# -- encrypted clients ------------------------------------------------------------------------


async def sealed_until_joined(ws: Any, crypto: Any) -> tuple[list[dict[str, Any]], dict]:
    before = []
    while True:
        message = crypto.open(await recv(ws))
        if message["event"] == "joined":
            return before, message["data"]
        before.append(message)


def test_encrypted_clients_get_history_messages_and_joined_sealed_on_memory():
    async def body():
        async with memory_node(encryption=EcdhScheme(), default_rooms=["chat:enc"]) as n:
            helper = n.helper
            helper.send_to_room("chat:enc", "m", "old")
            ws, _me, crypto = await encrypted_client(n.url)
            before, data = await sealed_until_joined(ws, crypto)  # the default room's
            assert before == [] and data["room"] == "chat:enc" and data["offset"] == 1
            helper.send_to_room("chat:enc", "m", {"n": 2})
            helper.send("chat:enc", {"topic": "bare", "data": None})
            assert crypto.open(await recv(ws)) == {
                "event": "m",
                "data": {"n": 2},
                "room": "chat:enc",
                "offset": 2,
            }
            assert crypto.open(await recv(ws)) == {
                "event": "bare",
                "data": None,
                "room": "chat:enc",
                "offset": 3,
            }
            # Recovery on a new encrypted connection: the replay and joined sealed too.
            second, second_data, other = await encrypted_client(n.url)
            await sealed_until_joined(second, other)  # its default room's
            assert helper.leave_room(second_data["id"], "chat:enc")
            recover = {"chat:enc": {"epoch": data["epoch"], "offset": 1}}
            await send(second, other.seal("join", {"rooms": ["chat:enc"], "recover": recover}))
            before, again = await sealed_until_joined(second, other)
            assert [(m["room"], m["offset"], m["data"]) for m in before] == [
                ("chat:enc", 2, {"n": 2}),
                ("chat:enc", 3, None),
            ]
            assert again["recovered"] is True and again["offset"] == 3
            for client in (ws, second):
                await client.close()

    run(body())


def test_encrypted_clients_get_history_messages_sealed_with_offsets_on_redis(redis_server):
    async def body():
        redis = redis_at(redis_server.port)
        scheme = EcdhScheme()
        async with redis_node(redis, encryption=scheme) as a, redis_node(redis) as b:
            ws, _me, crypto = await encrypted_client(a.url)
            plain, _ = await authed(a.url, "user:bob")
            await send(ws, crypto.seal("join", {"rooms": ["chat:r"]}))
            _before, data = await sealed_until_joined(ws, crypto)
            await join(plain, ["chat:r"])
            await joined(plain)
            await settle(a, b)
            b.helper.send("chat:r", {"topic": "m", "data": 1})
            b.helper.send_to_room("chat:r", "m", 2)
            for expected in (1, 2):
                message = crypto.open(await recv(ws))
                assert message == {
                    "event": "m",
                    "data": expected,
                    "room": "chat:r",
                    "offset": data["offset"] + expected,
                }
                assert (await recv(plain))["offset"] == message["offset"]
            await ws.close()
            back, _, again = await encrypted_client(a.url)
            recover = {"chat:r": {"epoch": data["epoch"], "offset": data["offset"]}}
            await send(back, again.seal("join", {"rooms": ["chat:r"], "recover": recover}))
            replay, done = await sealed_until_joined(back, again)
            assert [(m["room"], m["offset"]) for m in replay] == [
                ("chat:r", data["offset"] + 1),
                ("chat:r", data["offset"] + 2),
            ]
            assert done["recovered"] is True
            await back.close()
            await plain.close()

    run(body())


def test_a_custom_transformer_that_takes_room_and_offset_gets_them():
    seen: list[tuple[str, Any, Any]] = []

    def transformer(client: Any, event: str, data: Any, room: Any = None, offset: Any = None):
        seen.append((event, room, offset))
        return {"event": "wrapped", "data": {"inner": data, "at": [room, offset]}}

    def handshake(client_id: str, user_id: str | None, data: Any) -> dict[str, str]:
        return {"ok": "1"}

    async def body():
        async with memory_node(
            handshake_fn=handshake, outbound_transformer=transformer, require_encryption=True
        ) as n:
            ws, me = await authed(n.url)
            await eventually(lambda: n.helper.get_clients(me["id"]).encrypted)
            await join(ws, ["chat:t"])
            message = await recv(ws)
            assert message["event"] == "wrapped" and message["data"]["at"] == [None, None]
            n.helper.send_to_room("chat:t", "m", 1)
            assert await recv(ws) == {
                "event": "wrapped",
                "data": {"inner": 1, "at": ["chat:t", 1]},
            }
            assert ("m", "chat:t", 1) in seen
            await ws.close()

    run(body())
