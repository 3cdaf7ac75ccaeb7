"""Cross-node delivery through a real redis-server: several nodes in one process, the emitter,
envelopes written as the original writes them, interest and pattern subscriptions."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest
from redis_support import (
    FreezingProxy,
    node,
    numsub,
    raw_redis,
    redis_parser,  # noqa: F401  (a fixture: the tests marked with it run on both parsers)
    settle,
    wait_numsub,
)
from roomcast import RedisHelper, WebSocketEmitter, WebSocketServerHelper
from support import authed, eventually, nothing_more, recv, run, send


def redis_at(port: int, **kwargs) -> RedisHelper:
    kwargs.setdefault("unsubscribe_delay", 0.2)
    kwargs.setdefault("ready_timeout", 5)
    return RedisHelper(port=port, **kwargs)


async def join(n, ws, client_id: str, *rooms: str) -> None:
    """Join rooms and wait until the node has them and Redis has its subscriptions."""
    await send(ws, {"event": "join", "data": {"rooms": list(rooms)}})
    await eventually(lambda: set(rooms) <= n.helper.get_clients(client_id).rooms)
    await settle(n)


async def quiet(*clients) -> None:
    """None of the clients receives anything more (no duplicates, nothing stray)."""
    await asyncio.gather(*(nothing_more(ws, 0.3) for ws in clients))


# -- two and three nodes -----------------------------------------------------------------------


@pytest.mark.usefixtures("redis_parser")
def test_room_message_reaches_members_on_every_node_exactly_once(redis_server):
    async def body():
        redis = redis_at(redis_server.port)
        async with node(redis) as a, node(redis) as b:
            a1, da1 = await authed(a.url, "user:ann")
            b1, db1 = await authed(b.url, "user:bob")
            b2, db2 = await authed(b.url, "user:bea")
            await join(a, a1, da1["id"], "lobby")
            await join(b, b1, db1["id"], "lobby")
            await join(b, b2, db2["id"], "lobby")
            a.helper.send("lobby", {"topic": "chat", "data": {"text": "hi"}})
            for ws in (a1, b1, b2):
                assert await recv(ws) == {"event": "chat", "data": {"text": "hi"}}
            await quiet(a1, b1, b2)
            for ws in (a1, b1, b2):
                await ws.close()

    run(body())


def test_three_nodes_deliver_broadcast_room_and_a_remote_client_id_once(redis_server):
    async def body():
        redis = redis_at(redis_server.port)
        async with node(redis) as a, node(redis) as b, node(redis) as c:
            wa, _ = await authed(a.url, "user:ann")
            wb, db = await authed(b.url, "user:bob")
            wc, dc = await authed(c.url, "anon")
            await settle(a, b, c)
            c.helper.send(None, {"topic": "news", "data": [1, 2]})
            for ws in (wa, wb, wc):
                assert await recv(ws) == {"event": "news", "data": [1, 2]}
            # A client id on another node is a send() destination too, through its own room.
            a.helper.send(db["id"], {"topic": "dm", "data": None})
            assert await recv(wb) == {"event": "dm", "data": None}
            # A local client id: delivered here, and the `client` envelope is ignored elsewhere.
            c.helper.send(dc["id"], {"topic": "self", "data": 1})
            assert await recv(wc) == {"event": "self", "data": 1}
            # The default room spans the three nodes.
            b.helper.send("ws-default", {"topic": "all", "data": "x"})
            for ws in (wa, wb, wc):
                assert await recv(ws) == {"event": "all", "data": "x"}
            await quiet(wa, wb, wc)
            for ws in (wa, wb, wc):
                await ws.close()

    run(body())


@pytest.mark.usefixtures("redis_parser")
def test_emitter_reaches_client_user_room_and_everyone_with_exclude(redis_server):
    async def body():
        redis = redis_at(redis_server.port)
        emitter = WebSocketEmitter(redis)
        await emitter.configure()
        try:
            async with node(redis) as a, node(redis) as b:
                a1, da1 = await authed(a.url, "user:kim")
                b1, db1 = await authed(b.url, "user:kim")
                b2, db2 = await authed(b.url, "user:lee")
                await join(a, a1, da1["id"], "ops")
                await join(b, b2, db2["id"], "ops")
                await join(b, b1, db1["id"], "ops")

                assert await emitter.to_client(db2["id"], "dm", {"n": 1}) == 1
                assert await recv(b2) == {"event": "dm", "data": {"n": 1}}

                assert await emitter.to_user("kim", "note") == 2  # both nodes subscribed
                assert await recv(a1) == {"event": "note"}
                assert await recv(b1) == {"event": "note"}

                await emitter.to_room("ops", "alert", 3, exclude=[db1["id"], "not-a-client"])
                assert await recv(a1) == {"event": "alert", "data": 3}
                assert await recv(b2) == {"event": "alert", "data": 3}

                await emitter.broadcast("bye", None, exclude=[da1["id"]])
                assert await recv(b1) == {"event": "bye", "data": None}
                assert await recv(b2) == {"event": "bye", "data": None}
                await quiet(a1, b1, b2)
                for ws in (a1, b1, b2):
                    await ws.close()
        finally:
            await emitter.shutdown()

    run(body())


def test_unauthenticated_clients_get_nothing_from_other_nodes(redis_server):
    async def body():
        redis = redis_at(redis_server.port)
        emitter = WebSocketEmitter(redis)
        await emitter.configure()
        try:
            async with node(redis) as a:
                from support import open_client

                raw = await open_client(a.url)
                await eventually(lambda: len(a.helper.get_clients()) == 1)
                [client_id] = a.helper.get_clients()
                await emitter.to_client(client_id, "secret", 1)
                await emitter.broadcast("secret", 2)
                await quiet(raw)
                await raw.close()
        finally:
            await emitter.shutdown()

    run(body())


# -- the original's envelopes, both ways -------------------------------------------------------

# Written as the original does (JSON.stringify of {serverId, type, target, event, data, exclude},
# absent fields left out), independently of roomcast's encoder.
ORIGINAL_NODE = "3d0f6a52-1f7e-4c3b-9a55-0c1d2e3f4a5b"


def test_envelopes_in_the_original_format_are_delivered(redis_server):
    async def body():
        async with node(redis_at(redis_server.port)) as a, raw_redis(redis_server.port) as r:
            ws, data = await authed(a.url, "user:bob")
            me = data["id"]
            other, other_data = await authed(a.url, "user:eve")
            await join(a, ws, me, "lobby")
            await join(a, other, other_data["id"], "lobby")
            published = [
                (
                    "ws:room:lobby",
                    '{"serverId":"' + ORIGINAL_NODE + '","type":"room","target":"lobby",'
                    '"event":"chat","data":{"text":"hi"}}',
                ),
                (
                    "ws:broadcast",
                    '{"serverId":"' + ORIGINAL_NODE + '","type":"broadcast","event":"news",'
                    '"data":[1,2]}',
                ),
                (
                    f"ws:client:{me}",
                    '{"serverId":"emitter","type":"client","target":"' + me + '","event":"dm",'
                    '"data":"x"}',
                ),
                (
                    "ws:user:bob",
                    '{"serverId":"emitter","type":"user","target":"bob","event":"note","data":null}',
                ),
                (
                    "ws:room:lobby",
                    '{"serverId":"emitter","type":"room","target":"lobby","event":"chat",'
                    '"data":1,"exclude":["' + other_data["id"] + '"]}',
                ),
                ("ws:broadcast", '{"serverId":"emitter","type":"broadcast","event":"ping"}'),
            ]
            for channel, message in published:
                assert await r.publish(channel, message) == 1
            assert await recv(ws) == {"event": "chat", "data": {"text": "hi"}}
            assert await recv(ws) == {"event": "news", "data": [1, 2]}
            assert await recv(ws) == {"event": "dm", "data": "x"}
            assert await recv(ws) == {"event": "note", "data": None}
            assert await recv(ws) == {"event": "chat", "data": 1}
            assert await recv(ws) == {"event": "ping"}
            assert await recv(other) == {"event": "chat", "data": {"text": "hi"}}
            assert await recv(other) == {"event": "news", "data": [1, 2]}
            assert await recv(other) == {"event": "ping"}
            await quiet(ws, other)
            await ws.close()
            await other.close()

    run(body())


def test_published_envelopes_have_the_original_fields_channels_and_order(redis_server):
    async def body():
        redis = redis_at(redis_server.port)
        emitter = WebSocketEmitter(redis)
        await emitter.configure()
        async with node(redis) as a, raw_redis(redis_server.port) as r:
            pubsub = r.pubsub()
            await pubsub.psubscribe("ws:*")
            sid = a.helper.server_id
            a.helper.send("lobby", {"topic": "chat", "data": {"text": "hi"}})
            a.helper.send(None, {"topic": "news", "data": None})
            await emitter.to_room("lobby", "chat", [1], exclude=["c1"])
            await emitter.to_user("bob", "note")
            await emitter.to_client("c2", "dm", "x")
            expected = [
                (
                    "ws:room:lobby",
                    '{"serverId":"' + sid + '","type":"room","target":"lobby","event":"chat",'
                    '"data":{"text":"hi"}}',
                ),
                (
                    "ws:broadcast",
                    '{"serverId":"' + sid + '","type":"broadcast","event":"news","data":null}',
                ),
                (
                    "ws:room:lobby",
                    '{"serverId":"emitter","type":"room","target":"lobby","event":"chat",'
                    '"data":[1],"exclude":["c1"]}',
                ),
                (
                    "ws:user:bob",
                    '{"serverId":"emitter","type":"user","target":"bob","event":"note"}',
                ),
                (
                    "ws:client:c2",
                    '{"serverId":"emitter","type":"client","target":"c2","event":"dm","data":"x"}',
                ),
            ]
            got = []
            async with asyncio.timeout(5):
                while len(got) < len(expected):
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                    if message is not None:
                        got.append((message["channel"].decode(), message["data"].decode()))
            assert got == expected
            await pubsub.aclose()
        await emitter.shutdown()

    run(body())


def test_malformed_envelopes_are_dropped_and_logged(redis_server, caplog):
    async def body():
        async with node(redis_at(redis_server.port)) as a, raw_redis(redis_server.port) as r:
            ws, _ = await authed(a.url, "user:bob")
            await settle(a)
            for bad in (
                b"not json",
                b"[1,2]",
                b"null",
                b'{"serverId":42,"type":"broadcast","event":"x"}',
                b'{"serverId":"n","type":"broadcast"}',
                b'{"serverId":"n","type":"broadcast","event":7}',
                b"\xff\xfe",
            ):
                await r.publish("ws:broadcast", bad)
            await r.publish("ws:broadcast", b'{"serverId":"n","type":"broadcast","event":"ok"}')
            assert await recv(ws) == {"event": "ok"}
            await quiet(ws)
            await ws.close()

    with caplog.at_level(logging.ERROR, logger="roomcast"):
        run(body())
    dropped = [r for r in caplog.records if "malformed envelope" in r.getMessage()]
    assert len(dropped) == 7


def test_envelopes_of_unknown_type_or_without_target_are_ignored(redis_server):
    async def body():
        async with node(redis_at(redis_server.port)) as a, raw_redis(redis_server.port) as r:
            ws, data = await authed(a.url, "user:bob")
            await settle(a)
            await r.publish("ws:broadcast", '{"serverId":"n","type":"carrier-pigeon","event":"x"}')
            await r.publish(
                f"ws:client:{data['id']}", '{"serverId":"n","type":"client","event":"x"}'
            )
            await r.publish("ws:broadcast", '{"serverId":"n","type":"broadcast","event":"ok"}')
            assert await recv(ws) == {"event": "ok"}
            await quiet(ws)
            await ws.close()

    run(body())


# -- subscriptions -----------------------------------------------------------------------------


def test_interest_mode_subscribes_only_to_channels_with_local_members(redis_server):
    async def body():
        redis = redis_at(redis_server.port, unsubscribe_delay=0.3)
        async with node(redis) as a, raw_redis(redis_server.port) as r:
            assert await r.pubsub_numpat() == 0
            ws, data = await authed(a.url, "user:bob")
            me = data["id"]
            await join(a, ws, me, "lobby")
            subscribed = {c.decode() for c in await r.pubsub_channels("ws:[bcru]*")}
            assert subscribed == {
                "ws:broadcast",
                "ws:room:lobby",
                "ws:room:ws-default",
                "ws:room:ws-notification",
                f"ws:room:{me}",
                f"ws:client:{me}",
                "ws:user:bob",
            }
            await send(ws, {"event": "leave", "data": {"rooms": ["lobby"]}})
            await eventually(lambda: "lobby" not in a.helper.get_clients(me).rooms)
            await settle(a)
            assert await numsub(r, "ws:room:lobby") == 1, "kept a moment after emptying"
            await wait_numsub(r, "ws:room:lobby", 0)
            await ws.close()
            await eventually(lambda: not a.helper.get_clients())
            await wait_numsub(r, f"ws:client:{me}", 0)  # client channels go at once
            await wait_numsub(r, "ws:user:bob", 0)
            await wait_numsub(r, "ws:room:ws-default", 0)
            assert await r.pubsub_channels("ws:[cru]*") == []

    run(body())


def test_a_room_left_and_joined_again_within_the_delay_stays_subscribed(redis_server):
    async def body():
        redis = redis_at(redis_server.port, unsubscribe_delay=5)
        async with node(redis) as a, raw_redis(redis_server.port) as r:
            ws, data = await authed(a.url, "user:bob")
            for _ in range(20):
                await send(ws, {"event": "join", "data": {"rooms": ["churn"]}})
                await send(ws, {"event": "leave", "data": {"rooms": ["churn"]}})
            await join(a, ws, data["id"], "churn")
            assert await numsub(r, "ws:room:churn") == 1
            # The churn cost Redis no UNSUBSCRIBE, and few SUBSCRIBE commands.
            stats = await r.info("commandstats")
            assert "cmdstat_unsubscribe" not in stats
            assert stats["cmdstat_subscribe"]["calls"] <= 4, stats["cmdstat_subscribe"]
            await ws.close()

    run(body())


def test_pattern_mode_uses_the_original_subscriptions_and_interoperates(redis_server):
    async def body():
        async with (
            node(redis_at(redis_server.port, subscribe="pattern")) as a,
            node(redis_at(redis_server.port)) as b,
            raw_redis(redis_server.port) as r,
        ):
            assert await r.pubsub_numpat() == 3
            wa, da = await authed(a.url, "user:ann")
            wb, db = await authed(b.url, "user:bob")
            await join(a, wa, da["id"], "lobby")
            await join(b, wb, db["id"], "lobby")
            assert await numsub(r, "ws:room:lobby") == 1  # only b subscribes exactly
            b.helper.send("lobby", {"topic": "from-b", "data": 1})
            a.helper.send("lobby", {"topic": "from-a", "data": 2})
            for ws in (wa, wb):
                got = sorted([await recv(ws), await recv(ws)], key=lambda m: m["event"])
                assert got == [{"event": "from-a", "data": 2}, {"event": "from-b", "data": 1}]
            await quiet(wa, wb)
            await wa.close()
            await wb.close()

    run(body())


def test_redis_url_strings_make_redis_brokers(redis_server):
    async def body():
        url = f"redis://127.0.0.1:{redis_server.port}/0?subscribe=pattern"
        helper = WebSocketServerHelper("u", "/ws", url, lambda data: {})
        await helper.configure()
        async with raw_redis(redis_server.port) as r:
            assert await r.pubsub_numpat() == 3
        await helper.shutdown()

    run(body())


def test_the_application_client_is_separate_from_the_broker_connections(redis_server):
    async def body():
        redis = redis_at(redis_server.port)
        await redis.configure()
        client = redis.get_client()
        await client.set("k", "v")
        async with node(redis) as a:
            ws, _ = await authed(a.url, "user:bob")
            assert await client.get("k") == b"v"  # not in subscribed mode
            await ws.close()
        assert await redis.ping()
        await redis.close()

    run(body())


def test_send_with_missing_data_publishes_nothing(redis_server):
    async def body():
        async with node(redis_at(redis_server.port)) as a:
            before = a.helper.stats()["broker_published"]
            a.helper.send("lobby", {"topic": "x"})
            a.helper.send("lobby", {"data": 1})
            assert a.helper.stats()["broker_published"] == before

    run(body())


@pytest.mark.parametrize("mode", ["interest", "pattern"])
def test_exclude_from_another_node_is_honoured(redis_server, mode):
    async def body():
        redis = redis_at(redis_server.port, subscribe=mode)
        async with node(redis) as a, raw_redis(redis_server.port) as r:
            w1, d1 = await authed(a.url, "user:a")
            w2, d2 = await authed(a.url, "user:b")
            await join(a, w1, d1["id"], "room")
            await join(a, w2, d2["id"], "room")
            envelope = {
                "serverId": ORIGINAL_NODE,
                "type": "room",
                "target": "room",
                "event": "e",
                "data": 1,
                "exclude": [d1["id"]],
            }
            await r.publish("ws:room:room", orjson.dumps(envelope))
            envelope.update(type="broadcast", target=None, exclude=[d2["id"]])
            await r.publish("ws:broadcast", orjson.dumps(envelope))
            assert await recv(w2) == {"event": "e", "data": 1}
            assert await recv(w1) == {"event": "e", "data": 1}
            await quiet(w1, w2)
            await w1.close()
            await w2.close()

    run(body())


def test_a_message_sent_through_redis_right_after_connected_arrives(redis_server):
    # With subscriptions by interest, `connected` waits until Redis has confirmed the
    # channels that reach the client, so nothing sent to it afterwards falls in a gap, even
    # when the node's SUBSCRIBEs are slow to reach Redis.
    async def body():
        proxy = await FreezingProxy(redis_server.port, subscribe_delay=0.3).start()
        emitter = WebSocketEmitter(redis_at(redis_server.port))
        await emitter.configure()
        try:
            async with node(redis_at(proxy.port)) as b:
                for i in range(3):
                    ws, data = await authed(b.url, f"user:new{i}")
                    await emitter.to_user(f"new{i}", "by-user", i)
                    await emitter.to_client(data["id"], "by-id", i)
                    assert await recv(ws) == {"event": "by-user", "data": i}
                    assert await recv(ws) == {"event": "by-id", "data": i}
                    await ws.close()
        finally:
            await emitter.shutdown()
            await proxy.close()

    run(body())
