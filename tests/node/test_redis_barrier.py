"""The join barrier: after a join (or a login) that a client can observe, every message published
to it from then on reaches it, on any node and from the emitter; a slow, frozen or dead Redis
bounds the wait (`subscribe_timeout`) and never stops logins; delivery is back within a second
of Redis."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any

import orjson
import pytest
from redis_support import FreezingProxy, RedisServer, node, raw_redis, settle
from roomcast import RedisHelper, WebSocketEmitter, WebSocketServerHelper
from roomcast.cli import build_helper, build_parser, config_from_args
from support import authed, eventually, open_client, recv, run, send
from websockets.asyncio.client import ClientConnection

RESTART_BOUND = 1.0
"""Delivery must be back this long after Redis answers again (the issue's bound)."""


def redis_at(port: int, **kwargs: Any) -> RedisHelper:
    kwargs.setdefault("unsubscribe_delay", 0.2)
    kwargs.setdefault("ready_timeout", 5)
    return RedisHelper(port=port, **kwargs)


def echo_handler(holder: dict[str, Any]):
    """`echo` replies with whether Redis has confirmed the client's rooms at that moment;
    `join-plain` joins a room with join_room; `join-live` with join_room_confirmed, then
    replies `joined`. A plain function: it runs in the client's message order."""
    tasks: set[asyncio.Task[None]] = set()

    def handler(client_id: str, user_id: str | None, message: dict[str, Any]) -> None:
        helper = holder["helper"]
        data = message.get("data")
        event = message["event"]
        if event == "echo":
            client = helper.get_clients(client_id)
            channels = [f"ws:room:{room}" for room in client.rooms]
            confirmed = helper.channels_live(channels)
            helper.send_to_client(client_id, "echo", {"data": data, "confirmed": confirmed})
        elif event == "join-plain":
            helper.join_room(client_id, data)
        elif event == "join-live":

            async def live() -> None:
                await helper.join_room_confirmed(client_id, data)
                helper.send_to_client(client_id, "joined", data)

            task = asyncio.ensure_future(live())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    return handler


async def echoing_node(redis: RedisHelper, **kwargs: Any):
    holder: dict[str, Any] = {}
    manager = node(redis, message_handler=echo_handler(holder), **kwargs)
    n = await manager.__aenter__()
    holder["helper"] = n.helper
    return manager, n


async def echo(ws: ClientConnection, tag: Any) -> dict[str, Any]:
    await send(ws, {"event": "echo", "data": tag})
    reply = await recv(ws)
    assert reply["event"] == "echo" and reply["data"]["data"] == tag, reply
    return reply["data"]


def envelope(type_: str, target: str | None, event: str, data: Any) -> bytes:
    message: dict[str, Any] = {"serverId": "emitter", "type": type_, "event": event, "data": data}
    if target is not None:
        message["target"] = target
    return orjson.dumps(message)


def test_join_then_publish_never_loses_a_message_across_nodes_and_the_emitter(redis_server):
    # Every round: a new client logs in (then is reached by user, client id and the
    # other node's send), joins a new room by a `join` message, through join_room and
    # through join_room_confirmed; each join is observed, then published to at once.
    rounds = 25

    async def body():
        emitter = WebSocketEmitter(redis_at(redis_server.port))
        await emitter.configure()
        ma, a = await echoing_node(redis_at(redis_server.port))
        mb, b = await echoing_node(redis_at(redis_server.port))
        checks = 0
        try:
            await settle(a, b)
            for i in range(rounds):
                here, there = (a, b) if i % 2 else (b, a)
                ws, data = await authed(here.url, f"user:u{i}")
                cid = data["id"]
                await emitter.to_user(f"u{i}", "to-user", i)
                await emitter.to_client(cid, "to-client", i)
                there.helper.send(cid, {"topic": "via-node", "data": i})
                assert await recv(ws) == {"event": "to-user", "data": i}
                assert await recv(ws) == {"event": "to-client", "data": i}
                assert await recv(ws) == {"event": "via-node", "data": i}
                checks += 3

                await send(ws, {"event": "join", "data": {"rooms": [f"r{i}"]}})
                assert (await echo(ws, "after-join"))["confirmed"]
                await emitter.to_room(f"r{i}", "to-room", i)
                there.helper.send(f"r{i}", {"topic": "via-node-room", "data": i})
                assert await recv(ws) == {"event": "to-room", "data": i}
                assert await recv(ws) == {"event": "via-node-room", "data": i}
                checks += 2

                await send(ws, {"event": "join-plain", "data": f"p{i}"})
                await echo(ws, "after-join-room")
                await emitter.to_room(f"p{i}", "plain", i)
                assert await recv(ws) == {"event": "plain", "data": i}
                checks += 1

                await send(ws, {"event": "join-live", "data": f"l{i}"})
                assert await recv(ws) == {"event": "joined", "data": f"l{i}"}
                there.helper.send(f"l{i}", {"topic": "live", "data": i})
                await emitter.to_room(f"l{i}", "live", i)
                assert await recv(ws) == {"event": "live", "data": i}
                assert await recv(ws) == {"event": "live", "data": i}
                checks += 2
                await ws.close()
            assert checks == 8 * rounds >= 200
            # Nothing went ahead unconfirmed, and each node waited for Redis.
            for n in (a, b):
                stats = n.helper.stats()
                assert stats["subscribe_unconfirmed"] == 0, stats
                assert stats["subscribe_waits"] >= rounds, stats
        finally:
            await mb.__aexit__(None, None, None)
            await ma.__aexit__(None, None, None)
            await emitter.shutdown()

    run(body(), timeout=60)


def test_ten_thousand_rooms_joined_in_one_burst_are_live_once_visible(redis_server):
    async def body():
        emitter = WebSocketEmitter(redis_at(redis_server.port))
        await emitter.configure()
        manager, b = await echoing_node(redis_at(redis_server.port))
        try:
            async with raw_redis(redis_server.port) as r:
                ws, _ = await authed(b.url, "user:many")
                before = (await r.info("commandstats")).get("cmdstat_subscribe", {"calls": 0})
                rooms = [f"room-{i}" for i in range(10_000)]
                for first in range(0, 10_000, 100):
                    await send(ws, {"event": "join", "data": {"rooms": rooms[first : first + 100]}})
                # Visible: the next reply is handled once every join took effect.
                assert await echo(ws, "visible") == {"data": "visible", "confirmed": True}
                assert len(b.helper.get_clients(_["id"]).rooms) == 10_000 + 3
                for room in (rooms[0], rooms[4_321], rooms[-1]):
                    await emitter.to_room(room, "hit", room)
                for room in (rooms[0], rooms[4_321], rooms[-1]):
                    assert await recv(ws) == {"event": "hit", "data": room}
                after = (await r.info("commandstats"))["cmdstat_subscribe"]
                # Coalesced: far fewer SUBSCRIBE commands than join messages.
                assert after["calls"] - before["calls"] < 100
                await ws.close()
        finally:
            await manager.__aexit__(None, None, None)
            await emitter.shutdown()

    run(body(), timeout=60)


def test_a_join_waits_for_a_slow_subscribe_and_holds_only_that_client(redis_server):
    async def body():
        proxy = await FreezingProxy(redis_server.port, subscribe_delay=0.5).start()
        emitter = WebSocketEmitter(redis_at(redis_server.port))
        await emitter.configure()
        # (It joins another client's own-id room below: a room known to be live.)
        options = {"private_client_rooms": False}
        manager, b = await echoing_node(redis_at(proxy.port), server_options=options)
        try:
            slow, data = await authed(b.url, "user:slow")
            other, other_data = await authed(b.url, "user:other")
            waits = b.helper.stats()["subscribe_waits"]
            await send(slow, {"event": "join", "data": {"rooms": ["slow-room"]}})
            await send(slow, {"event": "echo", "data": "next"})
            # Another client is served meanwhile, while the SUBSCRIBE is still on its way...
            assert not b.helper.channels_live(["ws:room:slow-room"])
            assert await echo(other, "meanwhile") == {"data": "meanwhile", "confirmed": True}
            assert not b.helper.channels_live(["ws:room:slow-room"])
            # ... and the joining client's next message is handled only after Redis answered.
            assert await recv(slow, timeout=5) == {
                "event": "echo",
                "data": {"data": "next", "confirmed": True},
            }
            await emitter.to_room("slow-room", "first", 1)
            assert await recv(slow) == {"event": "first", "data": 1}
            assert b.helper.stats()["subscribe_waits"] == waits + 1

            # A join that needs no new subscription does not wait at all.
            await send(other, {"event": "join", "data": {"rooms": ["slow-room"]}})
            assert await echo(other, "fast") == {"data": "fast", "confirmed": True}
            assert b.helper.stats()["subscribe_waits"] == waits + 1
            await emitter.to_room("slow-room", "both", 2)
            assert await recv(slow) == {"event": "both", "data": 2}
            assert await recv(other) == {"event": "both", "data": 2}
            # Joins take effect in order: a live room joined right behind a room still being
            # subscribed is joined only with it.
            await send(slow, {"event": "join", "data": {"rooms": ["slow-again"]}})
            live = other_data["id"]  # the other client's own-id room: subscribed and live
            await send(slow, {"event": "join", "data": {"rooms": [live]}})
            member = b.helper.get_clients(data["id"])
            seen = []
            async with asyncio.timeout(5):
                while "slow-again" not in member.rooms:
                    seen.append(member.rooms)
                    await asyncio.sleep(0.005)
            assert seen and all(live not in rooms for rooms in seen), seen
            assert live in member.rooms
            assert b.helper.stats()["subscribe_unconfirmed"] == 0
            await slow.close()
            await other.close()
        finally:
            await manager.__aexit__(None, None, None)
            await emitter.shutdown()
            await proxy.close()

    run(body())


def test_a_frozen_redis_bounds_logins_and_catches_up_after_sigcont(redis_server, caplog):
    timeout = 0.5

    async def body():
        a_manager, a = await echoing_node(redis_at(redis_server.port), subscribe_timeout=timeout)
        b_manager, b = await echoing_node(redis_at(redis_server.port))
        pid = redis_server.proc.pid
        try:
            await settle(a, b)
            early, _ = await authed(a.url, "user:early")
            os.kill(pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                clients = [await authed(a.url, f"user:frozen{i}") for i in range(3)]
                # The bound plus a margin: the first login waits at most subscribe_timeout,
                # and logins never stall for as long as Redis does.
                assert time.monotonic() - started < 3 * timeout + 2.0
                ws, data = clients[0]
                await send(ws, {"event": "join", "data": {"rooms": ["cold"]}})
                assert (await echo(ws, "joined"))["data"] == "joined"
                # Local delivery works meanwhile.
                a.helper.send_to_room("cold", "local", 1)
                a.helper.send_to_user("early", "local", 2)
                assert await recv(ws) == {"event": "local", "data": 1}
                assert await recv(early) == {"event": "local", "data": 2}
                assert a.helper.stats()["subscribe_unconfirmed"] >= 3
            finally:
                os.kill(pid, signal.SIGCONT)
            await settle(a, b)
            b.helper.send(data["id"], {"topic": "remote", "data": 3})
            b.helper.send("cold", {"topic": "remote-room", "data": 4})
            assert await recv(ws) == {"event": "remote", "data": 3}
            assert await recv(ws) == {"event": "remote-room", "data": 4}
            for ws, _ in [*clients, (early, None)]:
                await ws.close()
        finally:
            os.kill(pid, signal.SIGCONT)
            await b_manager.__aexit__(None, None, None)
            await a_manager.__aexit__(None, None, None)

    with caplog.at_level(logging.WARNING, logger="roomcast"):
        run(body(), timeout=40)
    unconfirmed = [r for r in caplog.records if "subscriptions unconfirmed" in r.getMessage()]
    assert len(unconfirmed) == 1, [r.getMessage() for r in unconfirmed]  # once per outage


def test_delivery_resumes_within_a_second_of_redis_coming_back(tmp_path):
    # Four Redis servers go away together: three killed and started again after 1 s, 3 s
    # and 10 s, one frozen (SIGSTOP) for 10 s. After each comes back, a message published
    # into it reaches the node's client within a second.
    outages = ((1.0, False), (3.0, False), (10.0, False), (10.0, True))

    async def resumed(server: RedisServer, ws: ClientConnection, down: float, frozen: bool):
        assert server.proc is not None
        pid = server.proc.pid
        if frozen:
            os.kill(pid, signal.SIGSTOP)
        else:
            server.kill()
        await asyncio.sleep(down)
        if frozen:
            os.kill(pid, signal.SIGCONT)
        else:
            await asyncio.to_thread(server.start)
        up = time.monotonic()
        async with raw_redis(server.port) as r:
            received = asyncio.ensure_future(recv(ws, timeout=10))
            n = 0
            while not received.done():
                await r.publish("ws:room:lobby", envelope("room", "lobby", "back", n))
                n += 1
                await asyncio.wait({received}, timeout=0.02)
            assert received.result()["event"] == "back"
            return time.monotonic() - up

    async def body():
        servers = [RedisServer(tmp_path / f"r{i}").start() for i in range(len(outages))]
        managers = []
        try:
            clients = []
            for server in servers:
                manager = node(redis_at(server.port))
                n = await manager.__aenter__()
                managers.append(manager)
                ws, data = await authed(n.url, "user:x")
                await send(ws, {"event": "join", "data": {"rooms": ["lobby"]}})
                member = n.helper.get_clients(data["id"])
                await eventually(lambda member=member: "lobby" in member.rooms)
                clients.append(ws)
            outage = zip(servers, clients, outages, strict=True)
            delays = await asyncio.gather(
                *(resumed(server, ws, down, frozen) for server, ws, (down, frozen) in outage)
            )
            assert all(d < RESTART_BOUND for d in delays), delays
            for ws in clients:
                await ws.close()
        finally:
            for server in servers:
                if server.proc is not None:
                    os.kill(server.proc.pid, signal.SIGCONT)
            for manager in reversed(managers):
                await manager.__aexit__(None, None, None)
            for server in servers:
                server.kill()

    run(body(), timeout=45)


def test_two_thousand_concurrent_connects_all_succeed(redis_server):
    count = 2000

    async def body():
        async with node(redis_at(redis_server.port)) as b, raw_redis(redis_server.port) as r:
            with open("/proc/sys/net/core/somaxconn") as f:
                assert b.server.backlog == min(4096, int(f.read()))
            before = (await r.info("commandstats")).get("cmdstat_subscribe", {"calls": 0})

            async def login(i: int) -> ClientConnection:
                ws = await open_client(b.url, open_timeout=20)
                await send(ws, {"event": "authenticate", "data": {"token": f"user:c{i}"}})
                assert (await recv(ws, timeout=20))["event"] == "connected"
                return ws

            results = await asyncio.gather(
                *(login(i) for i in range(count)), return_exceptions=True
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            assert not errors, errors[:3]
            assert b.helper.stats()["authenticated"] == count
            after = (await r.info("commandstats"))["cmdstat_subscribe"]
            # Logins arriving while a SUBSCRIBE is unconfirmed share the next one.
            assert after["calls"] - before["calls"] < count // 2
            await asyncio.gather(*(ws.close() for ws in results))  # type: ignore[union-attr]

    run(body(), timeout=60)


def test_subscribe_timeout_and_backlog_come_from_flags_and_environment(redis_server):
    args = build_parser().parse_args(["serve", "--subscribe-timeout-ms", "250"])
    config = config_from_args(
        args, {"ROOMCAST_BACKLOG": "1500", "ROOMCAST_SUBSCRIBE_TIMEOUT_MS": "9"}
    )
    assert config.subscribe_timeout == 0.25  # the flag wins over the environment
    assert config.backlog == 1500
    config.redis_url = redis_server.url
    helper = build_helper(config, out=lambda line: None)
    assert helper.subscribe_timeout == 0.25
    assert helper.server_options["backlog"] == 1500

    async def body():
        server = await helper.serve("127.0.0.1", 0)
        with open("/proc/sys/net/core/somaxconn") as f:
            assert server.backlog == min(1500, int(f.read()))  # clamped to the kernel's
        await server.stop()
        await helper.shutdown()

    run(body())
    with pytest.raises(ValueError, match="subscribe_timeout must be positive: 0"):
        WebSocketServerHelper("t", "/ws", "memory://", lambda data: {}, subscribe_timeout=0)
    with pytest.raises(ValueError, match="backlog must be positive: -1"):
        WebSocketServerHelper(
            "t", "/ws", "memory://", lambda data: {}, server_options={"backlog": -1}
        )


def test_a_client_flooding_behind_a_barrier_is_paused_and_served_in_order(redis_server):
    async def body():
        proxy = await FreezingProxy(redis_server.port, subscribe_delay=0.5).start()
        manager, b = await echoing_node(redis_at(proxy.port))
        try:
            flood, _ = await authed(b.url, "user:flood")
            other, _ = await authed(b.url, "user:calm")
            await send(flood, {"event": "join", "data": {"rooms": ["flooded"]}})
            for i in range(1000):
                await send(flood, {"event": "echo", "data": i})
            assert await echo(other, "unaffected") == {"data": "unaffected", "confirmed": True}
            for i in range(1000):
                reply = await recv(flood)
                assert reply == {"event": "echo", "data": {"data": i, "confirmed": True}}
            assert not b.helper.held_clients
            await flood.close()
            await other.close()
        finally:
            await manager.__aexit__(None, None, None)
            await proxy.close()

    run(body())
