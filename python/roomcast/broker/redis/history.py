"""Room history in Redis: one stream per room, numbered and published by one Lua script.

Keys of room R, in one cluster slot by the hash tag `{r:R}` (never empty, unlike `{R}` for
the room ""): `ws:history:{r:R}:s`, a stream whose entry ids are `0-<offset>` (field `m`:
the envelope as published, `t`: Redis time in ms), and
`ws:history:{r:R}:m`, a hash with the room's `epoch` and last `offset`. The append script
creates the epoch when the hash is missing (first message, or history lost to a restart or
the TTL: clients then learn they cannot recover), takes the next offset, XADDs with MAXLEN,
PUBLISHes the envelope with its offset and epoch, and refreshes both keys' TTL, atomically:
every node and the emitter agree on the order and no offset is given twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from ..history import new_epoch
from .target import RedisTarget

logger = logging.getLogger("roomcast.redis")

# KEYS: stream, meta. ARGV: maxlen, ttl ms, new epoch, channel, envelope without its "}".
APPEND = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[3]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'offset', 0)
end
local offset = redis.call('HINCRBY', KEYS[2], 'offset', 1)
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local message = ARGV[5] .. ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '"}'
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '0-' .. offset, 'm', message, 't', ms)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local receivers = redis.call('PUBLISH', ARGV[4], message)
return {epoch, offset, receivers}
"""

# KEYS: stream, meta. ARGV: ttl ms, new epoch, wanted epoch ('' for none), wanted offset.
# Returns {epoch, offset, now ms, entries or false}; entries only when the wanted epoch is
# the room's and the wanted offset is behind it.
READ = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[2]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
local offset = tonumber(redis.call('HGET', KEYS[2], 'offset'))
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local wanted = tonumber(ARGV[4])
local entries = false
if ARGV[3] == epoch and wanted < offset then
  entries = redis.call('XRANGE', KEYS[1], '0-' .. (wanted + 1), '+')
end
return {epoch, offset, ms, entries}
"""


# Reads in flight at once per node: a reconnect burst (a thousand recoveries) waits its
# turn instead of failing past redis-py's connection limit (100 per pool or cluster node)
# with "Too many connections", which clients would see as `recovered: false`.
CONCURRENT_READS = 64


def keys_of(room: str) -> list[str]:
    """The stream and meta keys of a room, in one cluster slot."""
    return [f"ws:history:{{r:{room}}}:s", f"ws:history:{{r:{room}}}:m"]


def client_for(target: RedisTarget) -> Any:
    """A redis-py client of its own (not the broker's connections) for `target`."""
    kwargs = dict(target.connection_kwargs)
    if target.cluster:
        kwargs.pop("db", None)
        ssl = target.connection_class.__name__ == "SSLConnection"
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            ssl=ssl,
            **kwargs,
        )
    ((host, port),) = target.nodes
    from redis.asyncio import ConnectionPool

    pool = ConnectionPool(connection_class=target.connection_class, host=host, port=port, **kwargs)
    return Redis.from_pool(pool)


class _Script:
    """EVALSHA, falling back to EVAL when the server does not know the script (a restart,
    a new cluster node), which also loads it for next time."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


_APPEND = _Script(APPEND)
_READ = _Script(READ)


class RedisHistory:
    """History rooms' streams in Redis, for a node or the emitter.

    `publish` queues an append (which also publishes) and never waits: one task writes them
    in order, so one node's messages to a room keep their order. `append` waits for the
    offset. `read` gives a room's position and, when they can all be given, the messages
    after an offset.
    """

    def __init__(self, target: RedisTarget, size: int, ttl: float) -> None:
        self.target = target
        self.size = size
        self.ttl_ms = max(1, round(ttl * 1000))
        self.ttl = ttl
        self._client: Any = None
        self._connecting = asyncio.Lock()
        self._queue: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._reads = asyncio.Semaphore(CONCURRENT_READS)
        self.failed = 0

    async def _redis(self) -> Any:
        """The client, connected once: a cluster client's first commands, run concurrently
        (several rooms recovering at once), would each start its discovery and one would
        close connections the others are using."""
        if self._client is None:
            async with self._connecting:
                if self._client is None:
                    client = client_for(self.target)
                    if self.target.cluster:
                        await client.initialize()
                    self._client = client
        return self._client

    async def append(self, room: str, channel: str, envelope: bytes) -> tuple[str, int, int]:
        """Number, keep and publish one room envelope (a JSON object): (epoch, offset, how
        many subscribers it was published to)."""
        head = envelope[:-1]  # the script closes it with the offset and epoch
        reply = await _APPEND(
            await self._redis(),
            keys_of(room),
            [self.size, self.ttl_ms, new_epoch(), channel, head],
        )
        epoch, offset, receivers = reply
        return _text(epoch), int(offset), int(receivers)

    def publish(self, room: str, channel: str, envelope: bytes) -> None:
        self._queue.put_nowait((room, channel, envelope))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        queue = self._queue
        while True:
            room, channel, envelope = await queue.get()
            try:
                await self.append(room, channel, envelope)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # at-most-once, as every broker
                self.failed += 1
                logger.warning("history message to room %s dropped: %s", room, exc)

    async def read(
        self, room: str, epoch: str | None, offset: int
    ) -> tuple[str, int, list[bytes] | None]:
        """(epoch, offset, the envelopes after `offset`); None for the envelopes unless the
        epoch is the room's and every one of them is still kept and younger than the TTL."""
        args = [self.ttl_ms, new_epoch(), epoch or "", offset]
        async with self._reads:
            try:
                reply = await _READ(await self._redis(), keys_of(room), args)
            except (RedisConnectionError, RuntimeError):
                # A pooled connection closed under us (uvloop says "the handler is closed");
                # the read is idempotent, so once more on a fresh connection.
                reply = await _READ(await self._redis(), keys_of(room), args)
        room_epoch, room_offset, now, entries = (
            _text(reply[0]),
            int(reply[1]),
            int(reply[2]),
            reply[3],
        )
        if epoch != room_epoch or offset > room_offset:
            return room_epoch, room_offset, None
        if offset == room_offset:
            return room_epoch, room_offset, []
        if not entries:
            return room_epoch, room_offset, None
        messages: list[bytes] = []
        expected = offset + 1
        oldest = now - self.ttl_ms
        for entry_id, fields in entries:
            if _offset_of(entry_id) != expected:
                return room_epoch, room_offset, None  # trimmed (MAXLEN) in between
            values = _fields(fields)
            if int(values.get(b"t", b"0")) < oldest:
                return room_epoch, room_offset, None
            messages.append(values[b"m"])
            expected += 1
        if expected != room_offset + 1:
            return room_epoch, room_offset, None
        return room_epoch, room_offset, messages

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            try:
                await writer
            except asyncio.CancelledError:
                pass
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _offset_of(entry_id: Any) -> int:
    return int(_text(entry_id).partition("-")[2])


def _fields(fields: Any) -> dict[bytes, bytes]:
    if isinstance(fields, dict):
        return {_bytes(k): _bytes(v) for k, v in fields.items()}
    items = list(fields)
    return {_bytes(items[i]): _bytes(items[i + 1]) for i in range(0, len(items), 2)}


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


__all__ = ["APPEND", "CONCURRENT_READS", "READ", "RedisHistory", "client_for", "keys_of"]
