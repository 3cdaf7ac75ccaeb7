"""The history writer: every append of one process, in order, as pipelines of one Lua script.

The script (`APPEND`) numbers, keeps (XADD with MAXLEN) and publishes one room envelope
atomically. Appends are idempotent: each carries the writer's id and a sequence number, and
the room's meta hash keeps, per writer, the last one applied (`w:<writer>`:
`seq,offset,receivers`, for the last `WRITERS` writers), so a pipeline sent again after its
connection dropped numbers nothing twice. Each also carries a deadline in Redis time: one that
reaches Redis after it (a frozen Redis waking up) is neither kept nor published, since its
writer gave up on it and handed it back.

Bounds: no append waits longer than `timeout` (a reply, a connect, its turn in the queue);
the queue holds at most `queue_limit` bytes. Past them a `publish` goes to `on_unnumbered`
(to be delivered without an offset) and an `append` fails with `HistoryUnavailable`. After a
timeout Redis counts as down: appends are handed back at once until a PING is answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from ...aio import stop_task
from ..history import new_epoch
from .script import HistoryUnavailable, Script, client_for, keys_of, text
from .target import RedisTarget

logger = logging.getLogger("roomcast.redis")

# KEYS: stream, meta. ARGV: maxlen, ttl ms, new epoch, channel, envelope without its "}",
# and optionally writer id, sequence number, deadline (Redis ms; 0: none); a caller that
# passes only the first five (a load generator writing as an emitter) gets no idempotency.
# Returns {epoch, offset, receivers, now ms, state}: state 0 appended, 1 appended before (a
# retry: offset and receivers are the first run's when it was the writer's last append to
# the room, else 0), 2 past its deadline (not kept, not published).
APPEND = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local deadline = tonumber(ARGV[8] or '0')
if deadline > 0 and ms > deadline then
  return {'', 0, 0, ms, 2}
end
local mine = ARGV[6] and ('w:' .. ARGV[6])
local seq = tonumber(ARGV[7] or '0')
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[3]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'offset', 0)
elseif mine then
  local done = redis.call('HGET', KEYS[2], mine)
  if done then
    local last, at, receivers = string.match(done, '^(%d+),(%d+),(%d+)$')
    last = tonumber(last)
    if last == seq then
      return {epoch, tonumber(at), tonumber(receivers), ms, 1}
    elseif last > seq then
      return {epoch, 0, 0, ms, 1}
    end
  end
end
local offset = redis.call('HINCRBY', KEYS[2], 'offset', 1)
local message = ARGV[5] .. ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '"}'
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '0-' .. offset, 'm', message, 't', ms)
local receivers = redis.call('PUBLISH', ARGV[4], message)
if mine then
  redis.call('HSET', KEYS[2], mine, seq .. ',' .. offset .. ',' .. receivers)
  if redis.call('HLEN', KEYS[2]) > 2 + WRITERS then
    -- Past WRITERS writers, forget the one whose last append is the oldest.
    local fields = redis.call('HGETALL', KEYS[2])
    local oldest, at = nil, nil
    for i = 1, #fields, 2 do
      if string.sub(fields[i], 1, 2) == 'w:' and fields[i] ~= mine then
        local o = tonumber(string.match(fields[i + 1], '^%d+,(%d+),'))
        if o and (at == nil or o < at) then
          oldest, at = fields[i], o
        end
      end
    end
    if oldest then
      redis.call('HDEL', KEYS[2], oldest)
    end
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {epoch, offset, receivers, ms, 0}
"""
# Writers remembered per room for idempotent appends (one per process that wrote lately).
WRITERS = 32
APPEND = APPEND.replace("WRITERS", str(WRITERS))

# The most appends one pipeline of the writer carries.
WRITE_BATCH = 256
# The writer's connections' name (CLIENT LIST shows one per Redis node it writes to).
WRITER_NAME = "roomcast-history-writer"
# Defaults of the server options `history_timeout` and `history_queue_limit`.
TIMEOUT = 1.0
QUEUE_LIMIT = 8 * 1024 * 1024
# While Redis is down, how often the writer tries it again (at most; a timeout's worth).
PROBE_INTERVAL = 0.5

Appended = tuple[str, int, int]  # epoch, offset, subscribers it was published to
OnUnnumbered = Callable[[str, str, bytes], None]
"""Called with (room, channel, envelope) for each message the store could not number in
time (Redis down or too slow, the queue full): the caller delivers it unnumbered."""


class _Pending:
    __slots__ = ("channel", "envelope", "future", "queued_at", "room", "seq")

    def __init__(
        self,
        room: str,
        channel: str,
        envelope: bytes,
        future: asyncio.Future[Appended] | None,
        seq: int,
        queued_at: float,
    ) -> None:
        self.room = room
        self.channel = channel
        self.envelope = envelope
        self.future = future  # of whoever waits for the offset (None: no one)
        self.seq = seq
        self.queued_at = queued_at


_APPEND = Script(APPEND)


class HistoryWriter:
    """The one writer task of a process (a node or the emitter): `publish` and `append`
    queue, in call order; the task sends what is queued (up to `WRITE_BATCH`) as one
    pipeline on its own connection (one per cluster node), so one client's successive
    messages to a room get offsets in the order it sent them, and a busy node writes in a
    few round trips, not a pool of concurrent EVALs."""

    def __init__(
        self,
        target: RedisTarget,
        size: int,
        ttl_ms: int,
        timeout: float,
        queue_limit: int,
        on_unnumbered: OnUnnumbered | None,
    ) -> None:
        self.target = target
        self.size = size
        self.ttl_ms = ttl_ms
        self.timeout = timeout
        self.queue_limit = queue_limit
        self.on_unnumbered = on_unnumbered
        self._writer_client: Any = None
        self._queue: deque[_Pending] = deque()
        self._queued_bytes = 0
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._id = new_epoch() + new_epoch()  # this writer's, for idempotent appends
        self._seq = 0
        self._skew_ms: float | None = None  # Redis clock minus ours, from the last reply
        self.down = False  # a call timed out and no probe has been answered since
        self.failed = 0  # messages not numbered (handed back, or failed)
        self.unnumbered = 0  # of those, handed back to be delivered unnumbered
        self.overflowed = 0  # of those, because the queue was full
        self.pipelines = 0  # pipelines sent
        self.retried = 0  # pipelines sent again after their connection dropped
        self.repeated = 0  # appends of those found applied already (not numbered again)

    @property
    def queued_bytes(self) -> int:
        """Bytes of envelopes waiting for the writer."""
        return self._queued_bytes

    async def append(self, room: str, channel: str, envelope: bytes) -> Appended:
        """Number, keep and publish one room envelope (a JSON object), behind every append
        queued before it: (epoch, offset, how many subscribers it was published to).
        Raises `HistoryUnavailable` when it cannot be numbered within the timeout."""
        future: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._enqueue(room, channel, envelope, future)
        return await future

    def publish(self, room: str, channel: str, envelope: bytes) -> None:
        """`append` without waiting: one that cannot be numbered goes to `on_unnumbered`."""
        self._enqueue(room, channel, envelope, None)

    def _enqueue(
        self, room: str, channel: str, envelope: bytes, future: asyncio.Future[Appended] | None
    ) -> None:
        if self.down or self._queued_bytes + len(envelope) > self.queue_limit:
            if not self.down:
                self.overflowed += 1
            self._give_back(room, channel, envelope, future, _unavailable(self.down))
            return
        self._seq += 1
        loop = asyncio.get_running_loop()
        self._queue.append(_Pending(room, channel, envelope, future, self._seq, loop.time()))
        self._queued_bytes += len(envelope)
        if self._writer is None:
            self._wake = asyncio.Event()
            self._writer = loop.create_task(self._write())
        assert self._wake is not None
        self._wake.set()

    def _give_back(
        self,
        room: str,
        channel: str,
        envelope: bytes,
        future: asyncio.Future[Appended] | None,
        error: BaseException,
    ) -> None:
        self.failed += 1
        if future is not None:
            if not future.done():
                future.set_exception(error)
            return
        self.unnumbered += 1
        if self.on_unnumbered is not None:
            try:
                self.on_unnumbered(room, channel, envelope)
            except Exception:
                logger.exception("delivering an unnumbered history message of room %s", room)

    def _take(self) -> list[_Pending]:
        return self._take_n(min(len(self._queue), WRITE_BATCH))

    def _give_back_all(self, batch: list[_Pending], error: BaseException) -> None:
        for p in batch:
            self._give_back(p.room, p.channel, p.envelope, p.future, error)
        if batch:
            logger.warning(
                "%d history message(s) not numbered (room %s%s): %s",
                len(batch),
                batch[0].room,
                " and others" if len({p.room for p in batch}) > 1 else "",
                _describe(error),
            )

    async def _write(self) -> None:
        wake = self._wake
        assert wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if self.down:
                self._give_back_all(self._take_all(), _unavailable(True))
                await self._probe()
                continue
            if not self._queue:
                wake.clear()
                await wake.wait()
                continue
            # What waited its turn past the timeout is handed back, not sent.
            now = loop.time()
            late = []
            while self._queue and now - self._queue[0].queued_at > self.timeout:
                late.extend(self._take_n(1))
            if late:
                self._give_back_all(late, HistoryUnavailable("waited past the history timeout"))
            batch = self._take()
            if not batch:
                continue
            try:
                replies = await self._append_many(batch)
            except asyncio.CancelledError:
                _fail(batch, RuntimeError("the history writer was closed"))
                raise
            except Exception as exc:  # a timeout, or Redis unreachable
                self._went_down(exc)
                self._give_back_all(batch + self._take_all(), exc)
                continue
            self._settle(batch, replies)

    def _take_n(self, n: int) -> list[_Pending]:
        out = []
        for _ in range(n):
            pending = self._queue.popleft()
            self._queued_bytes -= len(pending.envelope)
            out.append(pending)
        return out

    def _take_all(self) -> list[_Pending]:
        return self._take_n(len(self._queue))

    def _settle(self, batch: list[_Pending], replies: list[Any]) -> None:
        expired: list[_Pending] = []
        failed: list[_Pending] = []
        error: BaseException | None = None
        for pending, reply in zip(batch, replies, strict=True):
            if isinstance(reply, BaseException):
                error = reply
                failed.append(pending)
                continue
            epoch, offset, receivers, now_ms, state = reply
            self._skew_ms = int(now_ms) - time.time() * 1000
            if int(state) == 2:
                expired.append(pending)
                continue
            if int(state) == 1:
                self.repeated += 1
            if pending.future is not None and not pending.future.done():
                pending.future.set_result((text(epoch), int(offset), int(receivers)))
        if expired:
            self._give_back_all(expired, HistoryUnavailable("reached redis past its deadline"))
        if failed:
            assert error is not None
            self._give_back_all(failed, error)

    def _went_down(self, exc: BaseException) -> None:
        if not self.down:
            self.down = True
            logger.warning(
                "redis history unavailable (%s): history messages are delivered without an "
                "offset and recoveries answer recovered: false until it answers again",
                _describe(exc),
            )

    async def _probe(self) -> None:
        """While down: PING (within the timeout) every `PROBE_INTERVAL` until answered."""
        while self.down:
            started = asyncio.get_running_loop().time()
            try:
                client = await self._writer_redis()
                await asyncio.wait_for(client.ping(), self.timeout)
            except asyncio.CancelledError:
                raise
            except Exception:
                await self._drop_writer_client()
                # Hand back what came meanwhile, then wait out the rest of the interval.
                self._give_back_all(self._take_all(), _unavailable(True))
                spent = asyncio.get_running_loop().time() - started
                await asyncio.sleep(max(0.0, min(PROBE_INTERVAL, self.timeout) - spent))
                continue
            self.down = False
            logger.warning("redis history available again: history messages are numbered")

    async def _drop_writer_client(self) -> None:
        client, self._writer_client = self._writer_client, None
        if client is not None:
            try:
                await client.aclose()
            except Exception:  # already broken
                pass

    async def _writer_redis(self) -> Any:
        if self._writer_client is None:
            client = client_for(self.target, WRITER_NAME, self.timeout)
            if self.target.cluster:
                await asyncio.wait_for(client.initialize(), self.timeout)
            self._writer_client = client
        return self._writer_client

    def _deadline_ms(self) -> int:
        """The Redis time past which an append is not applied: half the timeout after it
        was sent (its writer gives up at the full timeout), 0 until Redis' clock is known."""
        skew = self._skew_ms
        if skew is None:
            return 0
        return int(time.time() * 1000 + skew + self.timeout * 500)

    async def _append_many(self, batch: list[_Pending]) -> list[Any]:
        """One pipeline of appends; a reply (a list) or an exception per append. Each
        connection's first script call of the pipeline is an EVAL (which loads the script,
        for a Redis that restarted), the others EVALSHA: Redis runs one connection's
        commands in order, so the script is known by then and none fails, whatever other
        writers do meanwhile. A pipeline whose connection dropped is sent once more on a
        fresh one within the timeout: the appends it ran already are recognised by their
        writer id and sequence number and not numbered again."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        client = await self._writer_redis()
        deadline = self._deadline_ms()
        calls: list[tuple[list[str], list[Any]]] = []
        for p in batch:
            args = [
                self.size,
                self.ttl_ms,
                new_epoch(),
                p.channel,
                p.envelope[:-1],
                self._id,
                p.seq,
                deadline,
            ]
            calls.append((keys_of(p.room), args))
        try:
            replies = await asyncio.wait_for(self._pipeline(client, calls), self.timeout)
        except (RedisConnectionError, RuntimeError, ConnectionError):
            # Its connection was closed under it (a Redis restart, CLIENT KILL): once more
            # on a fresh one, in what is left of the timeout.
            await self._drop_writer_client()
            left = self.timeout - (loop.time() - started)
            if left <= 0:
                raise
            self.retried += 1
            client = await self._writer_redis()
            replies = await asyncio.wait_for(self._pipeline(client, calls), left)
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):  # moved to a node that lost it: rare
                try:
                    replies[i] = await asyncio.wait_for(_APPEND(client, *calls[i]), self.timeout)
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

    async def close(self) -> None:
        await stop_task(self._writer)
        self._writer = None
        _fail(self._take_all(), RuntimeError("the history writer was closed"))
        await self._drop_writer_client()


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _unavailable(down: bool) -> HistoryUnavailable:
    if down:
        return HistoryUnavailable("redis history is unavailable (no answer within the timeout)")
    return HistoryUnavailable("the history writer's queue is full")


def _fail(batch: list[_Pending], error: BaseException) -> None:
    for pending in batch:
        future = pending.future
        if future is not None and not future.done():
            future.set_exception(error)


__all__ = ["APPEND", "QUEUE_LIMIT", "TIMEOUT", "WRITER_NAME", "WRITE_BATCH", "HistoryWriter"]
