"""A reconnect burst against a real redis-server: more recoveries at once than redis-py's
connection pool holds (100) must all be read, not fail with "Too many connections" (which
clients would see as `recovered: false`)."""

from __future__ import annotations

import asyncio

from roomcast.broker.redis.history import CONCURRENT_READS, RedisHistory
from roomcast.broker.redis.target import RedisTarget
from support import run


def test_many_concurrent_history_reads_all_succeed(redis_server):
    async def body():
        history = RedisHistory(RedisTarget((("127.0.0.1", redis_server.port),)), 100, 60.0)
        try:
            epoch, offset, _ = await history.read("chat:burst", None, 0)
            for i in range(5):
                await history.append("chat:burst", "ws:room:chat:burst", b'{"i":%d}' % i)
            readers = 4 * CONCURRENT_READS + 50  # past the pool's 100
            results = await asyncio.gather(
                *(history.read("chat:burst", epoch, offset) for _ in range(readers))
            )
            assert all(r[0] == epoch and r[1] == offset + 5 for r in results)
            assert all(r[2] is not None and len(r[2]) == 5 for r in results)
        finally:
            await history.close()

    run(body())
