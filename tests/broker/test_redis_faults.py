"""Redis going away: absent at start, killed and restarted, a subscriber that silently stops."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from redis_support import (  # redis_parser: a fixture, tests with it run on both parsers
    FreezingProxy,
    free_port,
    node,
    raw_redis,
    redis_parser,  # noqa: F401
    settle,
    wait_numsub,
)
from roomcast import BrokerUnavailable, RedisHelper, WebSocketEmitter, WebSocketServerHelper
from support import authed, eventually, nothing_more, recv, run, send, token_auth


def redis_at(port: int, **kwargs) -> RedisHelper:
    kwargs.setdefault("unsubscribe_delay", 0.2)
    kwargs.setdefault("ready_timeout", 5)
    return RedisHelper(port=port, **kwargs)


def test_configure_fails_naming_the_address_when_redis_is_absent():
    port = free_port()

    async def body():
        helper = WebSocketServerHelper("t", "/ws", redis_at(port, ready_timeout=0.5), token_auth)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as error:
            await helper.configure()
        assert time.monotonic() - started < 5  # the bound, not a hang
        assert str(error.value).startswith(f"cannot reach redis at 127.0.0.1:{port} within 0.5 s:")
        await helper.shutdown()

    run(body())


def test_helper_configure_and_emitter_fail_within_the_bound_when_redis_is_absent():
    port = free_port()

    async def body():
        redis = redis_at(port, ready_timeout=0.3)
        with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{port} within 0.3 s"):
            await redis.configure()
        assert not await redis.ping()
        await redis.close()
        emitter = WebSocketEmitter(redis)
        with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{port}"):
            await emitter.configure()
        with pytest.raises(BrokerUnavailable, match="not configured"):
            await emitter.to_room("r", "e", 1)
        await emitter.shutdown()

    run(body())


def test_configure_waits_for_a_redis_that_comes_up_within_the_bound(redis_server):
    redis_server.kill()

    async def body():
        helper = WebSocketServerHelper("t", "/ws", redis_at(redis_server.port), token_auth)
        configuring = asyncio.ensure_future(helper.configure())
        done, _ = await asyncio.wait({configuring}, timeout=0.3)
        assert not done  # still waiting for Redis

        redis_server.start()
        await asyncio.wait_for(configuring, 5)
        await helper.shutdown()

    run(body())


@pytest.mark.usefixtures("redis_parser")
def test_delivery_resumes_after_redis_is_killed_and_restarted(redis_server, caplog):
    async def body():
        redis = redis_at(redis_server.port)
        async with node(redis) as a, node(redis) as b:
            wa, da = await authed(a.url, "user:ann")
            wb, db = await authed(b.url, "user:bob")
            for n, ws, data in ((a, wa, da), (b, wb, db)):
                await send(ws, {"event": "join", "data": {"rooms": ["lobby"]}})
                await eventually(
                    lambda n=n, data=data: "lobby" in n.helper.get_clients(data["id"]).rooms
                )
            await settle(a, b)
            a.helper.send("lobby", {"topic": "before", "data": 1})
            assert await recv(wa) == {"event": "before", "data": 1}
            assert await recv(wb) == {"event": "before", "data": 1}

            redis_server.kill()
            await eventually(
                lambda: (
                    not a.helper.stats()["broker_connected"]
                    and not b.helper.stats()["broker_connected"]
                )
            )
            # Publishing fails fast and never blocks the loop; local delivery goes on.
            started = time.monotonic()
            for i in range(1000):
                a.helper.send("lobby", {"topic": "during", "data": i})
            assert time.monotonic() - started < 2
            assert a.helper.stats()["broker_dropped"] >= 1000
            for i in range(1000):
                assert await recv(wa) == {"event": "during", "data": i}
            # A client joining while Redis is down is subscribed once it is back.
            await send(wb, {"event": "join", "data": {"rooms": ["late"]}})
            await eventually(lambda: "late" in b.helper.get_clients(db["id"]).rooms)

            redis_server.start()
            await eventually(
                lambda: (
                    a.helper.stats()["broker_connected"] and b.helper.stats()["broker_connected"]
                ),
                timeout=10,
            )
            await settle(a, b)
            a.helper.send("lobby", {"topic": "after", "data": 2})
            a.helper.send("late", {"topic": "late", "data": 3})
            assert await recv(wa) == {"event": "after", "data": 2}
            assert await recv(wb) == {"event": "after", "data": 2}
            assert await recv(wb) == {"event": "late", "data": 3}
            await asyncio.gather(nothing_more(wa), nothing_more(wb))
            assert a.helper.stats()["broker_reconnects"] == 1
            await wa.close()
            await wb.close()

    with caplog.at_level(logging.INFO, logger="roomcast.redis"):
        run(body(), timeout=40)
    messages = [r.getMessage() for r in caplog.records if r.name == "roomcast.redis"]
    # One line per state change and node, not one per message or per retry.
    assert sum("lost" in m for m in messages) == 2, messages
    assert sum("restored" in m for m in messages) == 2, messages
    assert any("1000 publishes dropped" in m for m in messages), messages


@pytest.mark.usefixtures("redis_parser")
def test_emitter_raises_while_redis_is_down_and_works_again_after(redis_server):
    async def body():
        emitter = WebSocketEmitter(redis_at(redis_server.port, watchdog_interval=0.1))
        await emitter.configure()
        assert await emitter.broadcast("x") == 0
        redis_server.kill()
        # An idle emitter notices (it PINGs every watchdog interval) and fails fast.
        await eventually(lambda: not emitter.broker.connected)
        with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{redis_server.port}"):
            await emitter.broadcast("x")
        redis_server.start()
        await eventually(lambda: emitter.broker.connected, timeout=10)
        assert await emitter.broadcast("x") == 0
        await emitter.shutdown()

    run(body(), timeout=30)


@pytest.mark.usefixtures("redis_parser")
def test_watchdog_rebuilds_a_subscriber_that_silently_stopped_receiving(redis_server, caplog):
    async def body():
        proxy = await FreezingProxy(redis_server.port).start()
        try:
            via_proxy = redis_at(proxy.port, watchdog_interval=0.3)
            async with node(via_proxy) as a, node(redis_at(redis_server.port)) as b:
                ws, data = await authed(a.url, "user:ann")
                await settle(a)
                b.helper.send(data["id"], {"topic": "first", "data": 1})
                assert await recv(ws) == {"event": "first", "data": 1}

                # Counted from here: a loaded machine may already have rebuilt once.
                before = a.helper.stats()
                assert proxy.freeze_subscribers() >= 1
                await eventually(
                    lambda: (
                        a.helper.stats()["broker_watchdog_rebuilds"]
                        > before["broker_watchdog_rebuilds"]
                    ),
                    timeout=10,
                )
                await eventually(
                    lambda: a.helper.stats()["broker_reconnects"] > before["broker_reconnects"],
                    timeout=15,
                )
                await settle(a)
                b.helper.send(data["id"], {"topic": "second", "data": 2})
                assert await recv(ws) == {"event": "second", "data": 2}
                await nothing_more(ws)
                await ws.close()
        finally:
            await proxy.close()

    with caplog.at_level(logging.INFO, logger="roomcast.redis"):
        run(body())
    assert any("stopped receiving" in r.getMessage() for r in caplog.records)


def test_watchdog_leaves_a_subscriber_that_is_behind_but_receiving(redis_server, caplog):
    """A subscriber behind by more than the watchdog interval (its probe waits in Redis'
    output buffer behind a backlog) is alive: no rebuild, which would throw the backlog
    away, and every message arrives."""
    sent = 1500
    pad = "x" * 2000  # a backlog of many socket reads, so the loop runs between them

    async def body():
        broker = redis_at(redis_server.port, watchdog_interval=0.2).create_broker()
        got: list[bytes] = []

        def slow(channel: str, data: bytes) -> None:
            time.sleep(0.002)  # a consumer far slower than the publisher: ~3 s of backlog
            got.append(data)

        await broker.start(slow)
        try:
            broker.interest("flood", True)
            await broker.sync(timeout=5)
            async with raw_redis(redis_server.port) as client:
                await wait_numsub(client, "flood", 1)
                async with client.pipeline(transaction=False) as pipe:
                    for i in range(sent):
                        pipe.publish("flood", f"{i}:{pad}")
                    await pipe.execute()
            await eventually(lambda: len(got) == sent, timeout=30)
            assert got == [f"{i}:{pad}".encode() for i in range(sent)]
            assert broker.stats()["watchdog_rebuilds"] == 0
        finally:
            await broker.close()

    with caplog.at_level(logging.INFO, logger="roomcast.redis"):
        run(body(), timeout=60)
    assert not any("stopped receiving" in r.getMessage() for r in caplog.records)


def test_publish_buffer_limit_drops_instead_of_growing(redis_server, caplog):
    async def body():
        redis = redis_at(redis_server.port, publish_buffer_limit=4096)
        async with node(redis) as a:
            for i in range(2000):
                a.helper.send("nobody", {"topic": "flood", "data": i})
            stats = a.helper.stats()
            assert stats["broker_dropped"] > 0
            assert stats["broker_published"] + stats["broker_dropped"] == 2000
            await eventually(lambda: a.helper.stats()["broker_queued"] == 0)

    with caplog.at_level(logging.ERROR, logger="roomcast.redis"):
        run(body())
    assert sum("buffer" in r.getMessage() for r in caplog.records) == 1
