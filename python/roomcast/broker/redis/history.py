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

from ...aio import stop_task
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


def keys_of(room: str) -> list[str]:
    """The stream and meta keys of a room, in one cluster slot."""
    return [f"ws:history:{{r:{room}}}:s", f"ws:history:{{r:{room}}}:m"]


def client_for(target: RedisTarget, name: str | None = None) -> Any:
    """A redis-py client of its own (not the broker's connections) for `target`; `name`
    is its connections' CLIENT SETNAME."""
    kwargs = dict(target.connection_kwargs)
    if name is not None:
        kwargs["client_name"] = name
    if target.cluster:
        kwargs.pop("db", None)
        ssl = target.connection_class.__name__ == "SSLConnection"
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            ssl=ssl,
            **kwargs,
        )
    if target.sentinel is not None:
        return target.sentinel.master_client(target.connection_class, kwargs)
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
_KEPT = _Script(KEPT)

# The most appends one pipeline of the writer carries.
WRITE_BATCH = 256
# The writer's connections' name (CLIENT LIST shows one per Redis node it writes to).
WRITER_NAME = "roomcast-history-writer"

Appended = tuple[str, int, int]  # epoch, offset, subscribers it was published to
# room, channel, envelope, and the future of whoever waits for the offset (None: no one).
_Pending = tuple[str, str, bytes, "asyncio.Future[Appended] | None"]


class RedisHistory:
    """History rooms' streams in Redis, for a node or the emitter.

    Every append of one process goes through one writer task, in the order `publish` and
    `append` were called: it takes what is queued (up to `WRITE_BATCH`) and sends it as one
    pipeline of script calls on its own connection (one per cluster node), so one client's
    successive messages to a room get offsets in the order it sent them, and a busy node
    writes in a few round trips, not a pool of concurrent EVALs. `publish` never waits;
    `append` waits for the offset. `read` gives a room's position and, when they can all be
    given, the messages after an offset.
    """

    def __init__(self, target: RedisTarget, size: int, ttl: float) -> None:
        self.target = target
        self.size = size
        self.ttl_ms = max(1, round(ttl * 1000))
        self.ttl = ttl
        self._client: Any = None  # reads
        self._writer_client: Any = None  # the writer's
        self._connecting = asyncio.Lock()
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._beside: asyncio.Task[None] | None = None
        self._reads = asyncio.Semaphore(CONCURRENT_READS)
        self.failed = 0
        self.pipelines = 0  # pipelines the writer sent

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
                    client = client_for(self.target)
                    if self.target.cluster:
                        await client.initialize()
                    self._client = client
        return self._client

    async def append(self, room: str, channel: str, envelope: bytes) -> Appended:
        """Number, keep and publish one room envelope (a JSON object), behind every append
        queued before it: (epoch, offset, how many subscribers it was published to)."""
        future: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._enqueue((room, channel, envelope, future))
        return await future

    def publish(self, room: str, channel: str, envelope: bytes) -> None:
        """`append` without waiting: a failure is counted in `failed` and logged."""
        self._enqueue((room, channel, envelope, None))

    def _enqueue(self, pending: _Pending) -> None:
        self._queue.put_nowait(pending)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < WRITE_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                replies = await self._append_many(batch)
            except asyncio.CancelledError:
                _fail(batch, RuntimeError("the history writer was closed"))
                raise
            except Exception as exc:  # at-most-once, as every broker
                replies = [exc] * len(batch)
            dropped: list[str] = []
            error: BaseException | None = None
            for (room, _, _, future), reply in zip(batch, replies, strict=True):
                if isinstance(reply, BaseException):
                    error = reply
                    if future is None:
                        dropped.append(room)
                    elif not future.done():
                        future.set_exception(reply)
                elif future is not None and not future.done():
                    epoch, offset, receivers = reply
                    future.set_result((_text(epoch), int(offset), int(receivers)))
            if dropped:
                self.failed += len(dropped)
                logger.warning(
                    "%d history message(s) dropped (room %s%s): %s",
                    len(dropped),
                    dropped[0],
                    " and others" if len(set(dropped)) > 1 else "",
                    error,
                )

    async def _writer_redis(self) -> Any:
        if self._writer_client is None:
            client = client_for(self.target, WRITER_NAME)
            if self.target.cluster:
                await client.initialize()
            self._writer_client = client
        return self._writer_client

    async def _append_many(self, batch: list[_Pending]) -> list[Any]:
        """One pipeline of appends; a reply (a list) or an exception per append. Each
        connection's first script call of the pipeline is an EVAL (which loads the script,
        for a Redis that restarted), the others EVALSHA: Redis runs one connection's
        commands in order, so the script is known by then and none fails, whatever other
        writers do meanwhile."""
        client = await self._writer_redis()
        calls: list[tuple[list[str], list[Any]]] = []
        for room, channel, envelope, _ in batch:
            args = [self.size, self.ttl_ms, new_epoch(), channel, envelope[:-1]]
            calls.append((keys_of(room), args))
        try:
            replies = await self._pipeline(client, calls)
        except (RedisConnectionError, RuntimeError):
            # Its pooled connection was closed under it (a Redis restart): once more on a
            # fresh one. (A connection lost midway could run a few twice: rare, and
            # better than losing every message queued at a restart.)
            replies = await self._pipeline(client, calls)
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):  # moved to a node that lost it: rare
                try:
                    replies[i] = await _APPEND(client, *calls[i])
                except Exception as exc:
                    replies[i] = exc
        return replies

    async def _pipeline(self, client: Any, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        cluster = self.target.cluster
        pipe = client.pipeline(transaction=False)
        loaded: set[str] = set()
        for keys, args in calls:
            where = client.get_node_from_key(keys[0]).name if cluster else ""
            if where in loaded:
                # (execute_command: redis-py's cluster pipeline refuses `evalsha()`, which
                # could fail NOSCRIPT; here the EVAL ahead of it loaded the script.)
                pipe.execute_command("EVALSHA", _APPEND.sha, 2, *keys, *args)
            else:
                loaded.add(where)
                pipe.eval(APPEND, 2, *keys, *args)
        self.pipelines += 1
        return list(await pipe.execute(raise_on_error=False))

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

    async def kept(self, room: str) -> tuple[str, int, list[bytes]]:
        """(epoch, offset, the envelopes still kept and younger than the TTL, in order); a
        room without history yet has the epoch "" and offset 0."""
        async with self._reads:
            reply = await _KEPT(await self._redis(), keys_of(room), [])
        epoch, offset, now = _text(reply[0]), int(reply[1]), int(reply[2])
        oldest = now - self.ttl_ms
        messages = []
        for _, fields in reply[3] or ():
            values = _fields(fields)
            if int(values.get(b"t", b"0")) >= oldest:
                messages.append(values[b"m"])
        return epoch, offset, messages

    async def close(self) -> None:
        for task in (self._writer, self._beside):
            await stop_task(task)
        self._writer = self._beside = None
        while not self._queue.empty():
            _fail([self._queue.get_nowait()], RuntimeError("the history writer was closed"))
        for client in (self._client, self._writer_client):
            if client is not None:
                await client.aclose()
        self._client = self._writer_client = None


def _fail(batch: list[_Pending], error: BaseException) -> None:
    for *_, future in batch:
        if future is not None and not future.done():
            future.set_exception(error)


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
