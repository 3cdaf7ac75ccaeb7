"""The Redis history store's bounds against a real redis-server: appends sent again after
their connection was killed number nothing twice, a frozen Redis (SIGSTOP) makes no call
wait past `timeout`, the writer's queue is bounded in bytes, and an epoch is reset only
from the epoch that went back."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from redis_support import raw_redis
from roomcast.broker.redis.history import (
    WRITER_NAME,
    HistoryUnavailable,
    RedisHistory,
    keys_of,
)
from roomcast.broker.redis.target import RedisTarget
from support import eventually, run


def store(port: int, size: int = 10_000, **kwargs: Any) -> RedisHistory:
    return RedisHistory(RedisTarget((("127.0.0.1", port),)), size, 60.0, **kwargs)


def envelope(room: str, n: int, pad: int = 0) -> bytes:
    return orjson.dumps(
        {"serverId": "t", "type": "room", "target": room, "event": "m", "data": f"{n}{'x' * pad}"}
    )


@contextmanager
def frozen(server: Any) -> Iterator[None]:
    """redis-server stopped (SIGSTOP) inside the block: connections open, nothing answers."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


async def stored(r: Any, room: str) -> list[tuple[int, str]]:
    """(offset, data) of every entry of the room's stream."""
    out = []
    for entry_id, fields in await r.xrange(keys_of(room)[0]):
        offset = int(entry_id.decode().partition("-")[2])
        out.append((offset, orjson.loads(fields[b"m"])["data"]))
    return out


async def kill_writer(r: Any) -> bool:
    listing = await r.execute_command("CLIENT", "LIST", "TYPE", "normal")
    for line in (listing.decode() if isinstance(listing, bytes) else listing).splitlines():
        fields = dict(f.split("=", 1) for f in line.split(" ") if "=" in f)
        if fields.get("name") == WRITER_NAME:
            await r.execute_command("CLIENT", "KILL", "ID", fields["id"])
            return True
    return False


def test_a_writer_retry_after_client_kill_numbers_nothing_twice(redis_server):
    async def body():
        history = store(redis_server.port, size=50_000, timeout=5.0)
        room = "chat:kill"
        got: list[bytes] = []
        async with raw_redis(redis_server.port) as r, raw_redis(redis_server.port) as sub:
            pubsub = sub.pubsub()
            await pubsub.subscribe("ws:room:" + room)
            await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
            try:
                await history.append(room, "ws:room:" + room, envelope(room, 0))
                kills, n = 0, 1
                # Until a kill lands in the middle of a pipeline (at most 40 rounds).
                for _ in range(40):
                    for _ in range(1000):
                        history.publish(room, "ws:room:" + room, envelope(room, n, pad=200))
                        n += 1
                    await asyncio.sleep(0)  # the writer's first pipeline goes out
                    await asyncio.sleep(0.002)
                    kills += await kill_writer(r)
                    await eventually(lambda: history.queued_bytes == 0, timeout=10)
                    if history.writer.repeated:
                        break
                count = n
                # The last pipeline answered once every offset is stored.
                async with asyncio.timeout(10):
                    while len(await stored(r, room)) < count:
                        await asyncio.sleep(0.01)
                assert kills > 0 and history.writer.retried > 0, (kills, history.writer.retried)
                assert history.writer.repeated > 0, "a killed pipeline had run in part"
                entries = await stored(r, room)
                offsets = [o for o, _ in entries]
                datas = [d for _, d in entries]
                assert offsets == list(range(1, len(entries) + 1)), "no offset twice, no gap"
                assert len(set(datas)) == len(datas), "no payload twice"
                assert history.writer.unnumbered == 0 and len(entries) == count
                while True:
                    message = await pubsub.get_message(timeout=0.5)
                    if message is None:
                        break
                    if message["type"] == "message":
                        got.append(message["data"])
                published = [orjson.loads(m)["data"] for m in got]
                assert len(published) == len(set(published)) == count, "published once each"
            finally:
                await pubsub.aclose()
                await history.close()

    run(body())


def test_a_frozen_redis_makes_no_call_wait_past_the_timeout_and_numbering_resumes(redis_server):
    async def body():
        unnumbered: list[tuple[str, bytes]] = []
        history = store(
            redis_server.port,
            timeout=0.5,
            on_unnumbered=lambda room, _channel, env: unnumbered.append((room, env)),
        )
        room = "chat:freeze"
        loop = asyncio.get_running_loop()
        try:
            assert (await history.append(room, "ws:room:" + room, envelope(room, 0)))[1] == 1
            with frozen(redis_server):
                started = loop.time()
                history.publish(room, "ws:room:" + room, envelope(room, 1))
                await eventually(lambda: len(unnumbered) == 1, timeout=2.0)
                assert loop.time() - started < 1.0  # the timeout, plus scheduling
                assert history.down
                # Down: handed back at once, reads and appends fail at once.
                for n in range(2, 200):
                    history.publish(room, "ws:room:" + room, envelope(room, n))
                assert len(unnumbered) == 199 and history.queued_bytes == 0
                started = loop.time()
                with pytest.raises(HistoryUnavailable):
                    await history.read(room, None, 0)
                with pytest.raises(HistoryUnavailable):
                    await history.append(room, "ws:room:" + room, envelope(room, 999))
                assert loop.time() - started < 0.1
                await asyncio.sleep(1.2)  # probes time out meanwhile; still down
                assert history.down
            await eventually(lambda: not history.down, timeout=5.0)
            _, offset, _ = await history.append(room, "ws:room:" + room, envelope(room, 200))
            assert offset == 2, "numbering resumes; what was handed back was not kept"
            async with raw_redis(redis_server.port) as r:
                assert [d for _, d in await stored(r, room)] == ["0", "200"]
            assert history.writer.unnumbered == 199 and history.failed == 200
        finally:
            await history.close()

    run(body())


def test_a_read_waiting_for_its_turn_behind_frozen_reads_still_fails_within_the_timeout(
    redis_server,
):
    async def body():
        history = store(redis_server.port, timeout=0.5)
        loop = asyncio.get_running_loop()
        try:
            await history.read("chat:r", None, 0)  # connected
            with frozen(redis_server):
                started = loop.time()
                reads = [history.read(f"chat:r{i}", None, 0) for i in range(200)]
                results = await asyncio.gather(*reads, return_exceptions=True)
                assert loop.time() - started < 1.5
                assert all(isinstance(r, Exception) for r in results)
            _, offset, messages = await history.read("chat:r", None, 0)
            assert offset == 0 and messages is None
        finally:
            await history.close()

    run(body())


def test_the_writer_queue_is_bounded_in_bytes_and_hands_back_the_overflow(redis_server):
    async def body():
        unnumbered: list[bytes] = []
        history = store(
            redis_server.port,
            timeout=2.0,
            queue_limit=20_000,
            on_unnumbered=lambda _room, _channel, env: unnumbered.append(env),
        )
        room = "chat:queue"
        try:
            await history.append(room, "ws:room:" + room, envelope(room, 0))
            with frozen(redis_server):
                history.publish(room, "ws:room:" + room, envelope(room, 1, pad=900))
                await asyncio.sleep(0.05)  # that one is in flight, waiting for frozen redis
                for n in range(2, 102):
                    history.publish(room, "ws:room:" + room, envelope(room, n, pad=900))
                assert history.queued_bytes <= 20_000
                assert history.writer.overflowed == len(unnumbered) > 70
                await eventually(lambda: history.down, timeout=3.0)
            assert history.queued_bytes == 0 and len(unnumbered) == 101
        finally:
            await history.close()

    run(body())


def test_an_epoch_is_reset_only_from_the_epoch_that_went_back(redis_server):
    async def body():
        history = store(redis_server.port)
        room = "chat:reset"
        try:
            epoch, offset, _ = await history.append(room, "ws:room:" + room, envelope(room, 1))
            assert offset == 1
            assert await history.reset(room, "not-the-epoch") == epoch
            new = await history.reset(room, epoch)
            assert new != epoch
            assert await history.reset(room, epoch) == new  # another node came second
            assert (await history.append(room, "ws:room:" + room, envelope(room, 2)))[:2] == (
                new,
                1,
            )
            assert await history.read(room, epoch, 1) == (new, 1, None)
        finally:
            await history.close()

    run(body())
