"""A three-master Redis Cluster: classic pub/sub (interoperable with the original) and sharded
pub/sub (SSUBSCRIBE/SPUBLISH, roomcast nodes only)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from process_support import SECRET, sign, stop, wait_listening
from redis_support import node, raw_redis, redis_parser, settle  # noqa: F401  (a fixture)
from roomcast import RedisClusterHelper, WebSocketEmitter
from support import authed, eventually, nothing_more, recv, run, send


def cluster_helper(cluster, **kwargs) -> RedisClusterHelper:
    kwargs.setdefault("unsubscribe_delay", 0.2)
    kwargs.setdefault("ready_timeout", 5)
    return RedisClusterHelper(cluster.url, **kwargs)


async def join(n, ws, client_id: str, *rooms: str) -> None:
    await send(ws, {"event": "join", "data": {"rooms": list(rooms)}})
    await eventually(lambda: set(rooms) <= n.helper.get_clients(client_id).rooms)
    await settle(n)


async def exchange(a, b, emitter) -> None:
    """Room, client, user and broadcast between two nodes and from the emitter."""
    wa, da = await authed(a.url, "user:ann")
    wb, db = await authed(b.url, "user:bob")
    wb2, db2 = await authed(b.url, "user:ann")
    for n, ws, data in ((a, wa, da), (b, wb, db), (b, wb2, db2)):
        await join(n, ws, data["id"], *[f"room-{i}" for i in range(8)])
    for i in range(8):
        a.helper.send(f"room-{i}", {"topic": "chat", "data": i})
    for ws in (wa, wb, wb2):
        got = sorted([(await recv(ws))["data"] for _ in range(8)])
        assert got == list(range(8))
    a.helper.send(db["id"], {"topic": "dm", "data": "to-bob"})
    assert await recv(wb) == {"event": "dm", "data": "to-bob"}
    await emitter.to_user("ann", "note", 1)
    assert await recv(wa) == {"event": "note", "data": 1}
    assert await recv(wb2) == {"event": "note", "data": 1}
    await emitter.to_client(db["id"], "dm", 2)
    assert await recv(wb) == {"event": "dm", "data": 2}
    await emitter.to_room("room-3", "r", 3, exclude=[db2["id"]])
    assert await recv(wa) == {"event": "r", "data": 3}
    assert await recv(wb) == {"event": "r", "data": 3}
    b.helper.send(None, {"topic": "all", "data": None})
    for ws in (wa, wb, wb2):
        assert await recv(ws) == {"event": "all", "data": None}
    await asyncio.gather(*(nothing_more(ws) for ws in (wa, wb, wb2)))
    for ws in (wa, wb, wb2):
        await ws.close()


async def shard_channels(cluster) -> list[set[str]]:
    """The shard channels each master has subscribers for."""
    found = []
    for port in cluster.ports:
        async with raw_redis(port) as r:
            names = await r.execute_command("PUBSUB", "SHARDCHANNELS", "ws:*")
            found.append({n.decode() for n in names})
    return found


async def classic_channels(cluster) -> set[str]:
    found: set[str] = set()
    for port in cluster.ports:
        async with raw_redis(port) as r:
            found |= {c.decode() for c in await r.pubsub_channels("ws:[bcru]*")}
    return found


@pytest.mark.parametrize("subscribe", ["interest", "pattern"])
@pytest.mark.usefixtures("redis_parser")
def test_classic_pub_sub_across_a_cluster(redis_cluster, subscribe):
    async def body():
        helper = cluster_helper(redis_cluster, subscribe=subscribe)
        emitter = WebSocketEmitter(helper)
        await emitter.configure()
        try:
            async with node(helper) as a, node(helper) as b:
                await exchange(a, b, emitter)
        finally:
            await emitter.shutdown()

    run(body())


def test_classic_cluster_nodes_take_envelopes_published_on_any_master(redis_cluster):
    async def body():
        async with node(cluster_helper(redis_cluster)) as a:
            ws, _ = await authed(a.url, "user:ann")
            await settle(a)
            for i, port in enumerate(redis_cluster.ports):
                async with raw_redis(port) as r:
                    # What the original's nodes and emitter do: a classic PUBLISH anywhere.
                    await r.publish(
                        "ws:user:ann",
                        '{"serverId":"emitter","type":"user","target":"ann","event":"n",'
                        '"data":' + str(i) + "}",
                    )
            for i in range(len(redis_cluster.ports)):
                assert await recv(ws) == {"event": "n", "data": i}
            await nothing_more(ws)
            await ws.close()

    run(body())


@pytest.mark.usefixtures("redis_parser")
def test_sharded_pub_sub_spreads_channels_over_the_masters(redis_cluster):
    async def body():
        helper = cluster_helper(redis_cluster, sharded=True)
        emitter = WebSocketEmitter(helper)
        await emitter.configure()
        try:
            async with node(helper) as a, node(helper) as b:
                ws, _ = await authed(a.url, "user:ann")
                await join(a, ws, a.helper.get_clients_by_user("ann")[0].id, "lobby")
                per_master = await shard_channels(redis_cluster)
                assert all(per_master), per_master  # every master serves some channels
                assert "ws:room:lobby" in set().union(*per_master)
                assert await classic_channels(redis_cluster) == set()
                await ws.close()
                await exchange(a, b, emitter)
        finally:
            await emitter.shutdown()

    run(body())


def test_sharded_mode_via_the_url(redis_cluster):
    helper = RedisClusterHelper(redis_cluster.url + "?sharded=yes")
    assert helper.options["sharded"] is True
    assert helper.address == ",".join(f"127.0.0.1:{p}" for p in redis_cluster.ports)


def test_cluster_helper_configure_and_application_client(redis_cluster):
    async def body():
        helper = cluster_helper(redis_cluster)
        await helper.configure()
        client = helper.get_client()
        await client.set("a-key", "v")
        assert await client.get("a-key") == b"v"
        await helper.close()

    run(body())


def test_roomcast_serve_takes_a_cluster_url(redis_cluster):
    url = redis_cluster.url + "?sharded=yes"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "roomcast",
            "serve",
            "--port",
            "0",
            "--jwt-secret",
            SECRET,
            "--redis-url",
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port, _ = wait_listening(proc)

        async def body():
            ws, data = await authed(f"ws://127.0.0.1:{port}/ws", sign({"sub": "ann"}))
            emitter = WebSocketEmitter(cluster_helper(redis_cluster, sharded=True))
            await emitter.configure()
            try:
                async with asyncio.timeout(5):
                    while not await emitter.to_client(data["id"], "dm", 1):
                        await asyncio.sleep(0.01)  # until the node's SSUBSCRIBE is in place
                assert await recv(ws) == {"event": "dm", "data": 1}
            finally:
                await emitter.shutdown()
            await ws.close()

        run(body())
        assert stop(proc) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_sharded_join_then_publish_never_loses_a_message(redis_cluster):
    # SSUBSCRIBE has the same gap as SUBSCRIBE: the join barrier waits for every shard's
    # confirmation, so a message SPUBLISHed right after the join is observed arrives.
    async def body():
        helper = cluster_helper(redis_cluster, sharded=True)
        emitter = WebSocketEmitter(helper)
        await emitter.configure()
        helpers = []

        def echo(client_id, user_id, message):
            helpers[-1].send_to_client(client_id, "echo", message.get("data"))

        async with node(helper) as a, node(helper, message_handler=echo) as b:
            helpers.append(b.helper)
            ws, _ = await authed(b.url, "user:sharded")
            for i in range(40):
                rooms = [f"s{i}-{k}" for k in range(3)]  # likely on several shards
                await send(ws, {"event": "join", "data": {"rooms": rooms}})
                # Observed: the client's next message was handled ...
                await send(ws, {"event": "echo", "data": i})
                assert await recv(ws) == {"event": "echo", "data": i}
                # ... so publishes from now on reach it.
                a.helper.send(rooms[i % 3], {"topic": "hit", "data": i})
                await emitter.to_room(rooms[(i + 1) % 3], "hit", i)
                assert await recv(ws) == {"event": "hit", "data": i}
                assert await recv(ws) == {"event": "hit", "data": i}
            stats = b.helper.stats()
            assert stats["subscribe_waits"] >= 40 and stats["subscribe_unconfirmed"] == 0
            await ws.close()
        await emitter.shutdown()

    run(body())
