"""The Redis presence store (`broker/redis/presence.py`) against a real redis-server: a
member's entry is in Redis once its write is answered, leaves as promptly, a dead node's
members expire, what Redis lost is written whole again, answers are capped, and a flood of
reads waits on a bounded pool."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest
from redis.exceptions import RedisError
from redis_support import raw_redis
from roomcast.broker.redis.presence import CONCURRENT_READS, RedisPresence, key_of
from roomcast.broker.redis.target import RedisTarget
from support import run

TTL = 1.0


def store(port: int, node: str, members: dict[str, dict[str, list[dict[str, str]]]]) -> Any:
    """A store for `node`, whose local members are `members[node][room]`."""
    target = RedisTarget(nodes=(("127.0.0.1", port),))
    return RedisPresence(target, TTL, node, lambda room: members[node].get(room, []))


def ids(members: list[dict[str, str]]) -> set[str]:
    return {m["clientId"] for m in members}


def test_an_added_member_is_read_by_another_node_once_its_write_is_answered(redis_server):
    local: dict[str, dict[str, list[dict[str, str]]]] = {"a": {}, "b": {}}

    async def body():
        a, b = store(redis_server.port, "a", local), store(redis_server.port, "b", local)
        try:
            assert await a.add("team", {"clientId": "c1", "userId": "ann"}) is True
            assert await b.read("team", 10) == ([{"clientId": "c1", "userId": "ann"}], 1)
            assert await a.read("team", 10) == ([], 0)  # a node reads the others only
            # Changes made together go in one pipeline, in order: the last one wins.
            a.add("team", {"clientId": "c2"})
            a.remove("team", "c2")
            assert await a.add("team", {"clientId": "c3"}) is True
            assert ids((await b.read("team", 10))[0]) == {"c1", "c3"}
            assert await a.remove("team", "c1") is True
            assert ids((await b.read("team", 10))[0]) == {"c3"}
        finally:
            await a.close()
            await b.close()

    run(body())


def test_a_node_that_stops_stamping_leaves_within_the_ttl_and_readers_delete_it(redis_server):
    local: dict[str, dict[str, list[dict[str, str]]]] = {"a": {}, "b": {}}

    async def body():
        a, b = store(redis_server.port, "a", local), store(redis_server.port, "b", local)
        try:
            await a.add("team", {"clientId": "c1"})
            await b.add("team", {"clientId": "c2"})
            async with asyncio.timeout(TTL + 3):
                while True:  # b keeps stamping, a does not
                    await b.refresh(["team"])
                    if (await b.read("team", 10))[1] == 0:
                        break
                    await asyncio.sleep(0.1)
            async with raw_redis(redis_server.port) as redis:
                fields = {f.decode() for f in await redis.hkeys(key_of("team"))}
            assert fields == {"n:b", "m:b:c2"}
            assert ids((await a.read("team", 10))[0]) == {"c2"}
        finally:
            await a.close()
            await b.close()

    run(body())


def test_members_redis_lost_are_written_whole_at_the_next_stamp(redis_server):
    local = {"a": {"team": [{"clientId": "c1"}, {"clientId": "c2", "userId": "bo"}]}, "b": {}}

    async def body():
        a, b = store(redis_server.port, "a", local), store(redis_server.port, "b", local)
        try:
            for member in local["a"]["team"]:
                await a.add("team", member)
            async with raw_redis(redis_server.port) as redis:
                await redis.flushall()  # a restart without persistence looks the same
            assert await b.read("team", 10) == ([], 0)
            await a.refresh(["team"])  # finds its stamp gone: writes the room whole
            async with asyncio.timeout(5):
                while (await b.read("team", 10))[1] != 2:
                    await asyncio.sleep(0.02)
            assert ids((await b.read("team", 10))[0]) == {"c1", "c2"}
        finally:
            await a.close()
            await b.close()

    run(body())


def test_a_read_returns_at_most_the_limit_and_the_count(redis_server):
    local: dict[str, dict[str, list[dict[str, str]]]] = {"a": {}, "b": {}}

    async def body():
        a, b = store(redis_server.port, "a", local), store(redis_server.port, "b", local)
        try:
            for i in range(2500):
                a.add("big", {"clientId": f"c{i}"})
            assert await a.refresh(["big"]) is True
            members, count = await b.read("big", 1000)
            assert (len(members), count) == (1000, 2500)
            assert len(ids(members)) == 1000
        finally:
            await a.close()
            await b.close()

    run(body())


def test_a_flood_of_reads_waits_on_a_bounded_pool(redis_server):
    local: dict[str, dict[str, list[dict[str, str]]]] = {"a": {}, "b": {}}

    async def body():
        a, b = store(redis_server.port, "a", local), store(redis_server.port, "b", local)
        try:
            await a.add("team", {"clientId": "c1"})
            async with raw_redis(redis_server.port) as redis:
                before = (await redis.info("clients"))["connected_clients"]
                answers = await asyncio.gather(*(b.read("team", 10) for _ in range(2000)))
                after = (await redis.info("clients"))["connected_clients"]
            assert all(answer == ([{"clientId": "c1"}], 1) for answer in answers)
            assert after - before <= CONCURRENT_READS, (before, after)
        finally:
            await a.close()
            await b.close()

    run(body())


def test_forget_takes_the_node_out_of_every_room_it_wrote(redis_server):
    local: dict[str, dict[str, list[dict[str, str]]]] = {"a": {}, "b": {}}

    async def body():
        a, b = store(redis_server.port, "a", local), store(redis_server.port, "b", local)
        try:
            await a.add("one", {"clientId": "c1"})
            await a.add("two", {"clientId": "c1"})
            await a.forget()
            assert await b.read("one", 10) == ([], 0)
            assert await b.read("two", 10) == ([], 0)
        finally:
            await a.close()
            await b.close()

    run(body())


def test_with_redis_frozen_reads_and_writes_give_up_within_the_timeout(redis_server):
    local: dict[str, dict[str, list[dict[str, str]]]] = {"a": {"team": []}, "b": {}}

    async def body():
        target = RedisTarget(nodes=(("127.0.0.1", redis_server.port),))
        a = RedisPresence(target, TTL, "a", lambda room: local["a"].get(room, []), timeout=0.3)
        b = RedisPresence(target, TTL, "b", lambda room: [], timeout=0.3)
        try:
            await a.add("team", {"clientId": "c1"})
            assert await b.read("team", 10) == ([{"clientId": "c1"}], 1)
            os.kill(redis_server.proc.pid, signal.SIGSTOP)
            try:
                # Well within the test's bound: each call waits the timeout, not TCP's.
                async with asyncio.timeout(5):
                    assert await a.add("team", {"clientId": "c2"}) is False
                    with pytest.raises(RedisError):
                        await b.read("team", 10)
            finally:
                os.kill(redis_server.proc.pid, signal.SIGCONT)
            local["a"]["team"] = [{"clientId": "c1"}, {"clientId": "c2"}]
            assert await a.refresh(["team"]) is True  # the failed room is written whole
            async with asyncio.timeout(5):
                while (await b.read("team", 10))[1] != 2:
                    await asyncio.sleep(0.02)
        finally:
            await a.close()
            await b.close()

    run(body())
