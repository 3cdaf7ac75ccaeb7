"""Room history in Redis: one stream per room, numbered and published by one Lua script.

Keys of room R, in one cluster slot by the hash tag `{r:R}` (never empty, unlike `{R}` for
the room ""): `ws:history:{r:R}:s`, a stream whose entry ids are `0-<offset>` (field `m`:
the envelope as published, `t`: Redis time in ms), and
`ws:history:{r:R}:m`, a hash with the room's `epoch` and last `offset`. The append script
creates the epoch when the hash is missing (first message, or history lost to a restart or
the TTL: clients then learn they cannot recover), takes the next offset, XADDs with MAXLEN,
PUBLISHes the envelope with its offset and epoch, and refreshes both keys' TTL, atomically:
every node and the emitter agree on the order and no offset is given twice. The appends go
through the process's one writer (`roomcast.broker.redis.writer`: idempotent, bounded);
this module reads (`READ`) and resets (`RESET`) a room.

Every call has `timeout` (the server's `history_timeout`): past it, or while Redis is known
to be down, an append is handed back unnumbered (`on_unnumbered`) and a read fails.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from ...aio import stop_task
from ..history import new_epoch
from .script import HistoryUnavailable, Script, client_for, keys_of, text
from .target import RedisTarget
from .writer import (
    APPEND,
    QUEUE_LIMIT,
    TIMEOUT,
    WRITE_BATCH,
    WRITER_NAME,
    Appended,
    HistoryWriter,
    OnUnnumbered,
)

logger = logging.getLogger("roomcast.redis")

# KEYS: stream, meta. ARGV: the epoch that went back, new epoch, ttl ms. Starts a new epoch
# at offset 0 (the stream emptied) if the room is still in that epoch; returns the epoch.
RESET = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if epoch == ARGV[1] then
  epoch = ARGV[2]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return epoch or ''
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

# KEYS: stream, meta. Returns {epoch ('' for none yet), offset, now ms, every entry kept}.
KEPT = """
local epoch = redis.call('HGET', KEYS[2], 'epoch') or ''
local offset = tonumber(redis.call('HGET', KEYS[2], 'offset') or '0')
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
return {epoch, offset, ms, redis.call('XRANGE', KEYS[1], '-', '+')}
"""


# Reads in flight at once per node: a reconnect burst (a thousand recoveries) waits its
# turn instead of failing past redis-py's connection limit (100 per pool or cluster node)
# with "Too many connections", which clients would see as `recovered: false`.
CONCURRENT_READS = 64


_READ = Script(READ)
_RESET = Script(RESET)
_KEPT = Script(KEPT)
# (Older names, still imported by the presence and settings modules.)
_Script = Script
_text = text


class RedisHistory:
    """History rooms' streams in Redis, for a node or the emitter: appends through the one
    `HistoryWriter` of the process (`publish` never waits, `append` waits for the offset),
    `read` gives a room's position and, when they can all be given, the messages after an
    offset, `reset` starts a new epoch for a room that went back in time.

    Bounds: no call waits longer than `timeout` (a reply, a connect, a turn among the
    `CONCURRENT_READS`); the writer's queue holds at most `queue_limit` bytes. A `publish`
    that cannot be numbered within them goes to `on_unnumbered`, an `append` or a `read`
    fails with `HistoryUnavailable`; while the writer counts Redis as down, at once.
    """

    def __init__(
        self,
        target: RedisTarget,
        size: int,
        ttl: float,
        *,
        timeout: float = TIMEOUT,
        queue_limit: int = QUEUE_LIMIT,
        on_unnumbered: OnUnnumbered | None = None,
    ) -> None:
        if not timeout > 0 or queue_limit < 1:
            raise ValueError(f"history timeout and queue limit must be positive: {timeout}")
        self.target = target
        self.size = size
        self.ttl_ms = max(1, round(ttl * 1000))
        self.ttl = ttl
        self.timeout = timeout
        self.writer = HistoryWriter(target, size, self.ttl_ms, timeout, queue_limit, on_unnumbered)
        self._client: Any = None  # reads
        self._connecting = asyncio.Lock()
        self._beside: asyncio.Task[None] | None = None
        self._reads = asyncio.Semaphore(CONCURRENT_READS)

    def own(self, task: asyncio.Task[None]) -> None:
        """A task of the user's that uses `client()`, cancelled by `close` before it."""
        self._beside = task

    async def client(self) -> Any:
        """The client reads use (not the writer's)."""
        return await self._redis()

    async def _redis(self) -> Any:
        """The client, connected once: a cluster client's first commands, run concurrently
        (several rooms recovering at once), would each start its discovery and one would
        close connections the others are using."""
        if self._client is None:
            async with self._connecting:
                if self._client is None:
                    client = client_for(self.target, timeout=self.timeout)
                    if self.target.cluster:
                        await client.initialize()
                    self._client = client
        return self._client

    async def append(self, room: str, channel: str, envelope: bytes) -> Appended:
        """Number, keep and publish one room envelope (a JSON object), behind every append
        queued before it: (epoch, offset, how many subscribers it was published to).
        Raises `HistoryUnavailable` when it cannot be numbered within the timeout."""
        return await self.writer.append(room, channel, envelope)

    def publish(self, room: str, channel: str, envelope: bytes) -> None:
        """`append` without waiting: one that cannot be numbered goes to `on_unnumbered`."""
        self.writer.publish(room, channel, envelope)

    @property
    def down(self) -> bool:
        """Redis did not answer within the timeout, and no probe has been answered since."""
        return self.writer.down

    @property
    def failed(self) -> int:
        """Messages not numbered (handed back to be delivered unnumbered, or failed)."""
        return self.writer.failed

    @property
    def pipelines(self) -> int:
        """Pipelines the writer sent."""
        return self.writer.pipelines

    @property
    def queued_bytes(self) -> int:
        """Bytes of envelopes waiting for the writer."""
        return self.writer.queued_bytes

    async def read(
        self, room: str, epoch: str | None, offset: int
    ) -> tuple[str, int, list[bytes] | None]:
        """(epoch, offset, the envelopes after `offset`); None for the envelopes unless the
        epoch is the room's and every one of them is still kept and younger than the TTL.
        Raises `HistoryUnavailable` (or a redis error) when Redis does not answer within
        the timeout, including the wait for a turn among `CONCURRENT_READS`."""
        if self.writer.down:
            raise HistoryUnavailable("redis history is unavailable (no answer within the timeout)")
        args = [self.ttl_ms, new_epoch(), epoch or "", offset]
        try:
            async with asyncio.timeout(self.timeout):
                async with self._reads:
                    client = await self._redis()
                    try:
                        reply = await _READ(client, keys_of(room), args)
                    except (RedisConnectionError, RuntimeError):
                        # A pooled connection closed under us (uvloop says "the handler is
                        # closed"); the read is idempotent: once more on a fresh connection.
                        reply = await _READ(client, keys_of(room), args)
        except TimeoutError as exc:
            raise HistoryUnavailable(f"no answer from redis within {self.timeout} s") from exc
        room_epoch, room_offset, now, entries = (
            text(reply[0]),
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

    async def reset(self, room: str, epoch: str) -> str:
        """Starts a new epoch for `room` if it is still in `epoch` (its offsets went back
        under it: a restore, a replica promoted before it caught up), so that no client
        recovers across the two histories; the room's epoch after it."""
        if self.writer.down:
            raise HistoryUnavailable("redis history is unavailable (no answer within the timeout)")
        args = [epoch, new_epoch(), self.ttl_ms]
        try:
            async with asyncio.timeout(self.timeout):
                return text(await _RESET(await self._redis(), keys_of(room), args))
        except TimeoutError as exc:
            raise HistoryUnavailable(f"no answer from redis within {self.timeout} s") from exc

    async def kept(self, room: str) -> tuple[str, int, list[bytes]]:
        """(epoch, offset, the envelopes still kept and younger than the TTL, in order); a
        room without history yet has the epoch "" and offset 0. Within the timeout, or
        `HistoryUnavailable`."""
        try:
            async with asyncio.timeout(self.timeout):
                async with self._reads:
                    reply = await _KEPT(await self._redis(), keys_of(room), [])
        except TimeoutError as exc:
            raise HistoryUnavailable(f"no answer from redis within {self.timeout} s") from exc
        epoch, offset, now = text(reply[0]), int(reply[1]), int(reply[2])
        oldest = now - self.ttl_ms
        messages = []
        for _, fields in reply[3] or ():
            values = _fields(fields)
            if int(values.get(b"t", b"0")) >= oldest:
                messages.append(values[b"m"])
        return epoch, offset, messages

    async def close(self) -> None:
        await stop_task(self._beside)
        self._beside = None
        await self.writer.close()
        if self._client is not None:
            await self._client.aclose()
        self._client = None


def _offset_of(entry_id: Any) -> int:
    return int(text(entry_id).partition("-")[2])


def _fields(fields: Any) -> dict[bytes, bytes]:
    if isinstance(fields, dict):
        return {_bytes(k): _bytes(v) for k, v in fields.items()}
    items = list(fields)
    return {_bytes(items[i]): _bytes(items[i + 1]) for i in range(0, len(items), 2)}


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


__all__ = [
    "APPEND",
    "CONCURRENT_READS",
    "QUEUE_LIMIT",
    "READ",
    "RESET",
    "TIMEOUT",
    "WRITER_NAME",
    "WRITE_BATCH",
    "HistoryUnavailable",
    "RedisHistory",
    "client_for",
    "keys_of",
]
