"""RedisBroker: envelopes between roomcast nodes (and the original's) through Redis pub/sub.

Guarantee: at-most-once, as every broker (see `roomcast.broker`). While Redis is unreachable a
node keeps delivering locally; what is published meanwhile, by it or by anyone else, never
reaches it, and what it publishes is dropped (counted, logged once per outage).

Connections: per Redis node in use, one subscriber and one publisher, both plain redis-py
asyncio connections (hiredis parser) opened from the helper's settings and never shared with
the application's client. One node is in use for a single server and for classic pub/sub on
a cluster (a classic PUBLISH reaches every cluster node); sharded mode uses every master.

A session is the set of live connections. Any failure (a read or write error, a command
timeout, a slot that moved, the watchdog's probe not coming back) ends the whole session;
a supervisor opens a new one with exponential backoff and subscribes again to everything
the node needs at that moment. Publishing never waits: commands are queued and written by
one task per connection, pipelined, in arrival order.

Subscriptions by interest are flushed at most one batch at a time: the changes gathered
while a batch is unconfirmed (and for at least FLUSH_SPACING) go out together, followed by
one PING whose answer confirms the whole batch (`confirmation()`), so the logins and joins of
many clients cost one SUBSCRIBE and one round trip.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import AuthenticationError, AuthorizationError, ResponseError

from ..constants import WebSocketChannels
from .protocol import BrokerState, BrokerUnavailable, OnMessage

logger = logging.getLogger("roomcast.redis")

INTEREST = "interest"
"""SUBSCRIBE exactly the room, user and client channels with local members (the default)."""
PATTERN = "pattern"
"""The original's set: SUBSCRIBE ws:broadcast, PSUBSCRIBE ws:room:*, ws:client:*, ws:user:*."""
SUBSCRIBE_MODES = (INTEREST, PATTERN)

PROBE_PREFIX = "ws:probe:"
"""Channels of the watchdog's probes; no other node subscribes to them."""

_PATTERNS = (
    WebSocketChannels.for_room_pattern(),
    WebSocketChannels.for_client_pattern(),
    WebSocketChannels.for_user_pattern(),
)
_CLIENT_PREFIX = WebSocketChannels.CLIENT_PREFIX

RECONNECT_MIN_DELAY = 0.1
RECONNECT_MAX_DELAY = 0.25
"""Cap of the reconnect backoff: a Redis that comes back is in use again within about this
long, whatever the outage's length (an attempt on a refused port costs almost nothing)."""
CONNECT_TIMEOUT = 5.0
"""Bound of one connection attempt (the ready bound caps it further)."""
WRITE_BATCH = 2048
"""Commands written (and their replies awaited) together."""
FLUSH_SPACING = 0.004
"""Least time between two flushes of subscription changes: when busy, each SUBSCRIBE (and
its confirmation) carries the changes of many clients; when idle, a change goes at once."""
SUBSCRIBE_CHUNK = 512
"""Channels per SUBSCRIBE/UNSUBSCRIBE command."""
_UP, _DOWN, _CLOSED = "up", "down", "closed"
_PING = b"*1\r\n$4\r\nPING\r\n"


class _Replies:
    """Replies of one connection, read straight from redis-py's hiredis reader.

    redis-py's `read_response` costs several coroutine frames and checks per reply, as much
    as the rest of a message's way through a node; pub/sub and pipelined PUBLISH replies
    need none of it. When the connection does not have the hiredis parser internals this
    expects (another redis-py version or no hiredis), `read_response` is used instead.
    """

    __slots__ = ("_feed", "_gets", "_more", "_read", "conn", "gets", "more")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        # `gets()` returns the next reply already buffered, or `more` when there is none
        # (then `fill()` reads); None on the slow path, where only `next()` works.
        self.gets: Any = None
        self.more: Any = None
        parser = getattr(conn, "_parser", None)
        reader = getattr(parser, "_reader", None)
        stream = getattr(parser, "_stream", None)
        if not (hasattr(reader, "gets") and hasattr(stream, "read")):
            self.next = self._slow  # type: ignore[method-assign]
            return
        try:
            from redis._parsers.hiredis import NOT_ENOUGH_DATA as more
        except ImportError:  # older redis-py: hiredis' default marker
            more = False
        self._gets = reader.gets  # type: ignore[union-attr]
        self._feed = reader.feed  # type: ignore[union-attr]
        self._read = stream.read  # type: ignore[union-attr]
        self._more = self.more = more
        self.gets = self._gets

    async def next(self) -> Any:
        reply = self._gets()
        while reply is self._more:
            data = await self._read(65536)
            if not data:
                raise ConnectionError(f"connection closed by {self.conn.host}:{self.conn.port}")
            self._feed(data)
            reply = self._gets()
        if isinstance(reply, Exception):  # error replies come back as values
            raise reply
        return reply

    async def fill(self) -> None:
        data = await self._read(65536)
        if not data:
            raise ConnectionError(f"connection closed by {self.conn.host}:{self.conn.port}")
        self._feed(data)

    async def _slow(self) -> Any:
        return await self.conn.read_response(disconnect_on_error=False)


def _publish_prefix(command: bytes) -> bytes:
    return b"*3\r\n$%d\r\n%b\r\n" % (len(command), command)


def _pack(*args: bytes) -> bytes:
    """One command in RESP (what redis-py's pack_command makes, without the per-call cost)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(out)


def _pack_channels(command: bytes, channels: list[str]) -> bytes:
    """`_pack(command, *channels)`, built as one string when the names are ASCII (they
    nearly always are: ids and room names), which is several times cheaper per channel."""
    head = b"*%d\r\n$%d\r\n%b\r\n" % (len(channels) + 1, len(command), command)
    if "".join(channels).isascii():
        return head + "".join([f"${len(c)}\r\n{c}\r\n" for c in channels]).encode()
    return head + b"".join([b"$%d\r\n%b\r\n" % (len(e), e) for e in map(str.encode, channels)])


@dataclass(frozen=True)
class RedisTarget:
    """Where and how to connect: one server, or the seed nodes of a cluster."""

    nodes: tuple[tuple[str, int], ...]
    cluster: bool = False
    connection_class: type[Connection] = Connection
    connection_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.nodes)

    def connection(self, host: str, port: int, connect_timeout: float) -> Connection:
        """A new, unconnected redis-py connection with our own timeouts and no retries."""
        kwargs = dict(self.connection_kwargs)
        kwargs.update(
            host=host,
            port=port,
            socket_timeout=None,  # reads wait for pushes; command timeouts are ours
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 0),  # a failure ends the session; we reconnect
            protocol=2,  # pub/sub messages as plain replies
            health_check_interval=0,
        )
        if self.cluster:
            kwargs.pop("db", None)
        return self.connection_class(**kwargs)


class _Shard:
    """The connections of a session to one Redis node, and what flows through them."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self.sub: Connection | None = None
        self.pub: Connection | None = None
        # Exact channels (S)SUBSCRIBEd on `sub`, updated when the command is queued, and
        # SUNSUBSCRIBEs sent whose confirmation has not come back yet.
        self.subscribed: set[str] = set()
        self.unsubscribing: dict[str, int] = {}
        self.probe = ""
        self.probe_bytes = b""
        self.probe_sent: float | None = None  # loop time of the unanswered probe's ack
        self.probe_pending = False
        # Publisher queue: packed command, optional future for the reply.
        self.queue: deque[tuple[bytes, asyncio.Future[Any] | None]] = deque()
        self.queued_bytes = 0
        self.in_flight = 0  # commands written whose replies are awaited
        self.wake = asyncio.Event()
        # Subscriber commands (packed) waiting to be written.
        self.sub_out: deque[bytes] = deque()
        self.sub_wake = asyncio.Event()
        self.barriers: dict[bytes, asyncio.Future[None]] = {}


class _Session:
    """One set of live connections; replaced wholesale when anything in it fails."""

    def __init__(self, shards: list[_Shard], slot_map: list[int] | None) -> None:
        self.shards = shards
        self.slot_map = slot_map
        self.tasks: list[asyncio.Task[Any]] = []
        self.failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def shard_for(self, channel: str) -> _Shard:
        if self.slot_map is None:
            return self.shards[0]
        return self.shards[self.slot_map[key_slot(channel.encode())]]

    def fail(self, reason: str) -> None:
        if not self.failed.done():
            self.failed.set_result(reason)

    async def close(self) -> int:
        """Stop every task, drop every connection; returns the publishes that were lost."""
        self.fail("closed")
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self.tasks.clear()
        lost = 0
        error = BrokerUnavailable("redis connection lost before the reply")
        for shard in self.shards:
            for conn in (shard.sub, shard.pub):
                if conn is not None:
                    await conn.disconnect(nowait=True)
            shard.sub = shard.pub = None
            for _, future in shard.queue:
                lost += 1
                if future is not None and not future.done():
                    future.set_exception(error)
                    future.exception()  # retrieved: nobody may be waiting any more
            shard.queue.clear()
            shard.queued_bytes = 0
            for barrier in shard.barriers.values():
                if not barrier.done():
                    barrier.set_exception(BrokerUnavailable("redis connection lost"))
                    barrier.exception()
            shard.barriers.clear()
        return lost


class RedisBroker:
    """A Broker over Redis pub/sub; made by `RedisHelper.create_broker()` and friends.

    `subscribe`: `"interest"` (default) subscribes to `ws:room:<r>`, `ws:user:<u>` and
    `ws:client:<id>` only while the node has local members there, told through `interest()`;
    `"pattern"` uses the original's subscriptions, so every node receives every message.
    `sharded` (cluster only, implies interest) uses SSUBSCRIBE/SPUBLISH: each message goes to
    the one shard that owns its channel, so traffic does not grow with the cluster's size,
    but only roomcast nodes (never the original, which PUBLISHes) can be on the same channels.
    `publisher_only` opens no subscriber (the emitter).
    """

    def __init__(
        self,
        target: RedisTarget,
        *,
        subscribe: str = INTEREST,
        sharded: bool = False,
        ready_timeout: float = 30.0,
        unsubscribe_delay: float = 2.0,
        watchdog_interval: float = 5.0,
        command_timeout: float = 5.0,
        publish_buffer_limit: int = 32 * 1024 * 1024,
        publisher_only: bool = False,
    ) -> None:
        if subscribe not in SUBSCRIBE_MODES:
            raise ValueError(f"unknown subscribe mode: {subscribe} (use interest or pattern)")
        if sharded and not target.cluster:
            raise ValueError("sharded pub/sub needs a redis cluster (redis+cluster://)")
        if sharded and subscribe == PATTERN:
            raise ValueError("sharded pub/sub cannot subscribe to patterns: use interest")
        if ready_timeout <= 0 or command_timeout <= 0:
            raise ValueError("ready_timeout and command_timeout must be positive")
        self.target = target
        self.subscribe_mode = subscribe
        self.sharded = sharded
        self.ready_timeout = float(ready_timeout)
        self.unsubscribe_delay = float(unsubscribe_delay)
        self.watchdog_interval = float(watchdog_interval)
        self.command_timeout = float(command_timeout)
        self.publish_buffer_limit = int(publish_buffer_limit)
        self.publisher_only = publisher_only
        self._publish_command = b"SPUBLISH" if sharded else b"PUBLISH"
        self._publish_head = _publish_prefix(self._publish_command)
        self._subscribe_command = b"SSUBSCRIBE" if sharded else b"SUBSCRIBE"
        self._unsubscribe_command = b"SUNSUBSCRIBE" if sharded else b"UNSUBSCRIBE"
        self._probe_id = uuid.uuid4().hex

        self._on_message: OnMessage | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state = _DOWN
        self._session: _Session | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._down_since = 0.0
        self._down_reason = "not started"
        self._dropped_mark = 0
        self._overflowing = False
        # Interest: channels with local members, channels kept a while after their last
        # member left (insertion order is expiry order), and those changed since the flush.
        self._wanted: set[str] = set()
        self._lingering: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._flush_scheduled = False
        # A flush whose SUBSCRIBEs Redis has not confirmed yet: changes wait for it, so
        # those of many clients arriving meanwhile go out together (one command, one PING).
        self._flush_in_flight = False
        self._flushed_at = float("-inf")
        # Subscription confirmations: the future of the next flush (for channels not sent
        # yet), and channels sent whose confirmation (a PING behind them) is still due.
        self._next_flush: asyncio.Future[None] | None = None
        self._unconfirmed: dict[str, asyncio.Future[None]] = {}
        self._flushes_unconfirmed = 0
        self._linger_handle: asyncio.TimerHandle | None = None
        self._watchdog_handle: asyncio.TimerHandle | None = None
        self._barrier_seq = 0
        self._stats = {
            "published": 0,
            "received": 0,
            "dropped": 0,
            "reconnects": 0,
            "watchdog_rebuilds": 0,
        }

    def __repr__(self) -> str:
        mode = "sharded" if self.sharded else self.subscribe_mode
        return f"RedisBroker({self.target.describe()}, {mode}, {self._state})"

    # -- the Broker protocol ---------------------------------------------------------------

    async def start(self, on_message: OnMessage | None = None) -> None:
        """Connect and subscribe; raise BrokerUnavailable naming the address when Redis does
        not answer within `ready_timeout`. Idempotent."""
        if self._state == _CLOSED:
            raise BrokerUnavailable("redis broker is closed")
        if self._supervisor is not None:
            return
        self._on_message = on_message
        self._loop = loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        attempt = 0
        while True:
            try:
                session = await self._open(deadline)
                break
            except (AuthenticationError, AuthorizationError) as exc:
                raise BrokerUnavailable(
                    f"redis at {self.target.describe()} refused us: {exc}"
                ) from None
            except Exception as exc:
                left = deadline - loop.time()
                if left <= 0:
                    raise BrokerUnavailable(
                        f"cannot reach redis at {self.target.describe()} "
                        f"within {self.ready_timeout:g} s: {exc}"
                    ) from None
                logger.debug("redis at %s not ready yet: %s", self.target.describe(), exc)
                await asyncio.sleep(min(self._backoff(attempt), left))
                attempt += 1
        if self._state == _CLOSED:  # closed while connecting
            await session.close()
            raise BrokerUnavailable("redis broker closed while connecting")
        self._up(session)
        logger.info("connected to redis at %s (%s)", self.target.describe(), self._mode())
        self._supervisor = loop.create_task(self._supervise())

    def publish(self, channel: str, message: bytes) -> None:
        """Queue a PUBLISH (SPUBLISH when sharded); never waits. While Redis is unreachable
        or the buffer is full the message is dropped (at-most-once) and counted."""
        session = self._session
        if session is None:
            self._stats["dropped"] += 1
            return
        shard = session.shard_for(channel)
        name = channel.encode()
        command = b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
            self._publish_head,
            len(name),
            name,
            len(message),
            message,
        )
        if shard.queued_bytes + len(command) > self.publish_buffer_limit:
            self._overflow(shard)
            return
        if self._overflowing:
            self._overflowing = False
            logger.warning("redis publish buffer drained: publishing again")
        shard.queue.append((command, None))
        shard.queued_bytes += len(command)
        self._stats["published"] += 1
        shard.wake.set()

    async def publish_wait(self, channel: str, message: bytes) -> int:
        """Publish and wait for Redis: returns how many subscribers Redis delivered it to
        (on the node or shard it went to). Raises BrokerUnavailable while disconnected."""
        session = self._session
        if session is None:
            raise BrokerUnavailable(
                f"redis at {self.target.describe()} is unavailable: {self._down_reason}"
            )
        assert self._loop is not None
        shard = session.shard_for(channel)
        future: asyncio.Future[Any] = self._loop.create_future()
        command = _pack(self._publish_command, channel.encode(), message)
        shard.queue.append((command, future))
        shard.queued_bytes += len(command)
        self._stats["published"] += 1
        shard.wake.set()
        return int(await future)

    def interest(self, channel: str, on: bool) -> None:
        """The node got its first local member of `channel` (on) or lost its last (off).
        Changes are sent once per event loop iteration; an emptied room or user channel is
        unsubscribed only `unsubscribe_delay` seconds later, if it stays empty."""
        if on and channel in self._wanted:
            return  # subscribed, or on its way (the common case: checked first)
        if self.subscribe_mode != INTEREST or self.publisher_only or self._state == _CLOSED:
            return
        if on:
            self._wanted.add(channel)
            if self._lingering.pop(channel, None) is not None:
                return  # still subscribed
        else:
            self._wanted.discard(channel)
            if self.unsubscribe_delay > 0 and not channel.startswith(_CLIENT_PREFIX):
                # Client ids never come back; rooms and users often do.
                assert self._loop is not None
                self._lingering.pop(channel, None)
                self._lingering[channel] = self._loop.time() + self.unsubscribe_delay
                if self._linger_handle is None:
                    self._linger_handle = self._loop.call_later(
                        self.unsubscribe_delay, self._expire_lingering
                    )
                return
        self._dirty.add(channel)
        self._schedule_flush()

    @property
    def wants_interest(self) -> bool:
        """Whether `interest()` changes anything: only in interest mode with a subscriber."""
        return self.subscribe_mode == INTEREST and not self.publisher_only

    @property
    def confirms_subscriptions(self) -> bool:
        """Whether a channel needs a subscription of its own (interest and sharded modes),
        whose confirmation `confirmation()` reports; with patterns every channel is live."""
        return self.subscribe_mode == INTEREST and not self.publisher_only

    def subscribe_new(self, channels: list[str]) -> asyncio.Future[Any] | None:
        """Subscribe channels no one on this node has wanted before (a new client's own):
        `interest(channel, True)` for each, and the future of the flush that will confirm
        them, as `confirmation()` would return (None when there is nothing to wait for)."""
        if not self.confirms_subscriptions or self._state == _CLOSED:
            return None
        self._wanted.update(channels)
        self._dirty.update(channels)
        if self._next_flush is None:
            assert self._loop is not None
            self._next_flush = self._loop.create_future()
        self._schedule_flush()
        return self._next_flush

    def confirmation(self, channels: Iterable[str]) -> asyncio.Future[Any] | None:
        """None when Redis has confirmed a subscription to every one of `channels` (the
        fast path: nothing to wait for); otherwise a future resolved once it has. Call
        `interest(channel, True)` first for channels nobody wanted yet. Channels sent in
        the same event loop iteration share one command and one confirmation. While Redis
        is unreachable the future resolves when a new session has subscribed again; callers
        bound the wait themselves. Never fails; patterns (and the emitter) need no wait."""
        if self.subscribe_mode != INTEREST or self.publisher_only or self._state == _CLOSED:
            return None
        session = self._session
        unconfirmed = self._unconfirmed
        waits: list[asyncio.Future[Any]] = []
        unsent = False
        one = session.shards[0].subscribed if session and session.slot_map is None else None
        for channel in channels:
            if one is not None:
                sent = channel in one
            else:
                sent = session is not None and channel in session.shard_for(channel).subscribed
            if not sent:
                unsent = True
            elif unconfirmed:
                waiting = unconfirmed.get(channel)
                if waiting is not None and not waiting.done() and waiting not in waits:
                    waits.append(waiting)
        if unsent:
            if self._next_flush is None:
                assert self._loop is not None
                self._next_flush = self._loop.create_future()
            waits.append(self._next_flush)
            self._schedule_flush()
        if not waits:
            return None
        if len(waits) == 1:
            return waits[0]
        return asyncio.gather(*waits)

    async def close(self) -> None:
        """Flush what is queued (briefly), then disconnect; idempotent."""
        if self._state == _CLOSED:
            return
        was_up = self._state == _UP
        self._state = _CLOSED
        for handle in (self._linger_handle, self._watchdog_handle):
            if handle is not None:
                handle.cancel()
        self._linger_handle = self._watchdog_handle = None
        if self._supervisor is not None:
            self._supervisor.cancel()
            try:
                await self._supervisor
            except asyncio.CancelledError:
                pass
            self._supervisor = None
        self._confirm_all()
        session, self._session = self._session, None
        if session is not None:
            if was_up:
                await self._drain(session, min(1.0, self.command_timeout))
            await session.close()
        self._on_message = None
        logger.debug("redis broker for %s closed", self.target.describe())

    # -- observation -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._state == _UP

    @property
    def state(self) -> BrokerState:
        """`connected`, `connecting` (never up yet), `reconnecting` (lost, retrying) or
        `closed`."""
        if self._state == _UP:
            return "connected"
        if self._state == _CLOSED:
            return "closed"
        return "connecting" if self._supervisor is None else "reconnecting"

    def stats(self) -> dict[str, int]:
        """Counters: connected (1 or 0), published, received, dropped, reconnects,
        watchdog_rebuilds, subscriptions (exact channels now subscribed, probes included)
        and queued (publishes not yet written)."""
        stats = dict(self._stats)
        stats["connected"] = int(self._state == _UP)
        session = self._session
        stats["subscriptions"] = sum(len(s.subscribed) for s in session.shards) if session else 0
        stats["queued"] = sum(len(s.queue) for s in session.shards) if session else 0
        return stats

    def subscriptions(self) -> set[str]:
        """The exact channels subscribed right now (probes excluded)."""
        session = self._session
        if session is None:
            return set()
        channels: set[str] = set()
        for shard in session.shards:
            channels |= shard.subscribed
        return {c for c in channels if not c.startswith(PROBE_PREFIX)}

    async def sync(self, timeout: float | None = None) -> None:
        """Wait until Redis has processed every subscription change made so far (a PING
        through each subscriber connection). Raises BrokerUnavailable while disconnected."""
        self._flush_interest(force=True)
        session = self._session
        if session is None or self.publisher_only:
            raise BrokerUnavailable(f"redis at {self.target.describe()} is unavailable")
        barriers = [self._barrier(shard) for shard in session.shards]
        await asyncio.wait_for(asyncio.gather(*barriers), timeout or self.command_timeout)

    # -- sessions ----------------------------------------------------------------------------

    def _mode(self) -> str:
        if self.publisher_only:
            return "publisher"
        if self.sharded:
            return "sharded pub/sub, interest"
        return f"{self.subscribe_mode} subscriptions"

    @staticmethod
    def _backoff(attempt: int) -> float:
        delay = min(RECONNECT_MAX_DELAY, RECONNECT_MIN_DELAY * 2**attempt)
        return delay * random.uniform(0.8, 1.2)

    def _up(self, session: _Session) -> None:
        self._session = session
        self._state = _UP
        self._flush_in_flight = False
        # The new session subscribed to every channel wanted when it opened, confirmed.
        # What the old one left unconfirmed is live now, or goes out with the next flush.
        pending, self._unconfirmed = self._unconfirmed, {}
        self._flushes_unconfirmed = 0
        late: set[asyncio.Future[None]] = set()
        for channel, waiting in pending.items():
            if waiting.done():
                continue
            if channel not in session.shard_for(channel).subscribed:
                self._dirty.add(channel)
                late.add(waiting)
        for waiting in set(pending.values()):
            if waiting.done():
                continue
            if waiting in late:
                if self._next_flush is None:
                    self._next_flush = session.failed.get_loop().create_future()
                self._next_flush.add_done_callback(
                    lambda _, waiting=waiting: waiting.done() or waiting.set_result(None)
                )
            else:
                waiting.set_result(None)
        if self._dirty or self._next_flush is not None:
            self._schedule_flush()
        if self.watchdog_interval > 0 and self._loop is not None:
            if self._watchdog_handle is None:
                self._watchdog_handle = self._loop.call_later(
                    self.watchdog_interval, self._watchdog
                )

    async def _supervise(self) -> None:
        """Wait for the session to fail, then reopen one with backoff, forever."""
        loop = asyncio.get_running_loop()
        while True:
            session = self._session
            assert session is not None
            reason = await asyncio.shield(session.failed)
            self._state = _DOWN
            self._session = None
            self._down_since = loop.time()
            self._down_reason = reason
            self._dropped_mark = self._stats["dropped"]
            lost = await session.close()
            self._stats["dropped"] += lost
            logger.error(
                "redis connection to %s lost (%s): delivering locally only, dropping "
                "publishes, reconnecting",
                self.target.describe(),
                reason,
            )
            attempt = 0
            while True:
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                try:
                    session = await self._open(None)
                    break
                except Exception as exc:
                    logger.debug("reconnecting to redis at %s: %s", self.target.describe(), exc)
            self._stats["reconnects"] += 1
            self._up(session)
            dropped = self._stats["dropped"] - self._dropped_mark
            logger.warning(
                "redis connection to %s restored after %.1f s: %d channels subscribed, "
                "%d publishes dropped while down",
                self.target.describe(),
                loop.time() - self._down_since,
                len(self.subscriptions()),
                dropped,
            )

    async def _open(self, deadline: float | None) -> _Session:
        """Connect, subscribe to everything needed now and wait for Redis to confirm."""
        loop = asyncio.get_running_loop()

        def connect_timeout() -> float:
            if deadline is None:
                return CONNECT_TIMEOUT
            return max(0.05, min(CONNECT_TIMEOUT, deadline - loop.time()))

        if self.target.cluster:
            shards, slot_map = await self._discover(connect_timeout)
        else:
            host, port = self.target.nodes[0]
            shards, slot_map = [_Shard(host, port)], None
        session = _Session(shards, slot_map)
        try:
            # Changes from now on are sent by the next flush, against what this session
            # subscribes to below.
            self._dirty.clear()
            for shard in shards:
                shard.pub = self.target.connection(shard.host, shard.port, connect_timeout())
                await shard.pub.connect()
                session.tasks.append(loop.create_task(self._write(session, shard)))
                if self.publisher_only:
                    continue
                self._choose_probe(session, shard)
                shard.sub = self.target.connection(shard.host, shard.port, connect_timeout())
                await shard.sub.connect()
                session.tasks.append(loop.create_task(self._read(session, shard)))
                session.tasks.append(loop.create_task(self._write_sub(session, shard)))
            if not self.publisher_only:
                self._subscribe_all(session)
                timeout = self.command_timeout if deadline is None else connect_timeout()
                await self._confirmed(session, timeout)
        except BaseException:
            await session.close()
            raise
        return session

    async def _confirmed(self, session: _Session, timeout: float) -> None:
        """Wait until every subscriber connection answered a PING queued after its
        subscriptions, or fail with the session's reason or a timeout."""
        waiter = asyncio.gather(*(self._barrier(shard) for shard in session.shards))
        try:
            await asyncio.wait(
                (waiter, session.failed), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not waiter.done():
                waiter.cancel()
        if session.failed.done():
            raise ConnectionError(session.failed.result())
        if waiter.cancelled():
            raise TimeoutError(f"subscriptions not confirmed within {timeout:g} s")
        waiter.result()

    async def _discover(self, connect_timeout: Any) -> tuple[list[_Shard], list[int] | None]:
        """The cluster's masters (from CLUSTER SLOTS on the first seed node that answers);
        classic mode keeps only the first that answers."""
        errors = []
        for host, port in self.target.nodes:
            conn = self.target.connection(host, port, connect_timeout())
            try:
                await conn.connect()
                if not self.sharded:
                    # Classic pub/sub: every node sees every PUBLISH; any node will do.
                    return [_Shard(host, port)], None
                await conn.send_packed_command(_pack(b"CLUSTER", b"SLOTS"), check_health=False)
                reply = await asyncio.wait_for(conn.read_response(), self.command_timeout)
            except Exception as exc:
                errors.append(f"{host}:{port}: {exc}")
                continue
            finally:
                await conn.disconnect(nowait=True)
            shards: dict[tuple[str, int], _Shard] = {}
            slot_map = [-1] * REDIS_CLUSTER_HASH_SLOTS
            order: list[_Shard] = []
            for start, end, master, *_ in reply:
                node_host = master[0].decode() if master[0] else host
                key = (node_host, int(master[1]))
                shard = shards.get(key)
                if shard is None:
                    shard = shards[key] = _Shard(*key)
                    order.append(shard)
                index = order.index(shard)
                for slot in range(int(start), int(end) + 1):
                    slot_map[slot] = index
            if -1 in slot_map or not order:
                errors.append(f"{host}:{port}: cluster slots are not all covered")
                continue
            return order, slot_map
        raise ConnectionError("; ".join(errors) or "no cluster node given")

    def _choose_probe(self, session: _Session, shard: _Shard) -> None:
        """A probe channel served by this shard (a hash tag that lands in its slots)."""
        n = 0
        channel = f"{PROBE_PREFIX}{self._probe_id}:{{{n}}}"
        while session.slot_map is not None and session.shard_for(channel) is not shard:
            n += 1
            channel = f"{PROBE_PREFIX}{self._probe_id}:{{{n}}}"
        shard.probe = channel
        shard.probe_bytes = channel.encode()
        shard.probe_sent = None
        shard.probe_pending = False

    def _subscribe_all(self, session: _Session) -> None:
        """Queue the subscriptions a fresh session needs: broadcast, probes, then patterns or
        every channel with local interest (or still lingering)."""
        fixed = [WebSocketChannels.BROADCAST]
        channels: Iterable[str] = ()
        if self.subscribe_mode == INTEREST:
            channels = [*self._wanted, *self._lingering]
        by_shard: dict[int, list[str]] = {}
        for channel in [*fixed, *channels]:
            shard = session.shard_for(channel)
            by_shard.setdefault(id(shard), []).append(channel)
        for shard in session.shards:
            wanted = [shard.probe, *by_shard.get(id(shard), ())]
            self._send_subscriptions(shard, wanted, True)
            if self.subscribe_mode == PATTERN:
                shard.sub_out.append(_pack(b"PSUBSCRIBE", *(p.encode() for p in _PATTERNS)))
                shard.sub_wake.set()

    def _send_subscriptions(self, shard: _Shard, channels: list[str], on: bool) -> None:
        if not channels:
            return
        command = self._subscribe_command if on else self._unsubscribe_command
        if on:
            shard.subscribed.update(channels)
        else:
            shard.subscribed.difference_update(channels)
            if self.sharded:
                pending = shard.unsubscribing
                for channel in channels:
                    pending[channel] = pending.get(channel, 0) + 1
        if self.sharded:
            # Every channel of one SSUBSCRIBE must hash to the same slot.
            by_slot: dict[int, list[bytes]] = {}
            for channel in channels:
                encoded = channel.encode()
                by_slot.setdefault(key_slot(encoded), []).append(encoded)
            shard.sub_out.append(b"".join(_pack(command, *group) for group in by_slot.values()))
        else:
            shard.sub_out.append(
                b"".join(
                    _pack_channels(command, channels[i : i + SUBSCRIBE_CHUNK])
                    for i in range(0, len(channels), SUBSCRIBE_CHUNK)
                )
            )
        shard.sub_wake.set()

    def _barrier(self, shard: _Shard) -> asyncio.Future[None]:
        """Resolved when Redis answers a PING sent after everything queued on `sub`."""
        assert self._loop is not None
        self._barrier_seq += 1
        token = b"roomcast-sync-%d" % self._barrier_seq
        future: asyncio.Future[None] = self._loop.create_future()
        shard.barriers[token] = future
        shard.sub_out.append(_pack(b"PING", token))
        shard.sub_wake.set()
        return future

    # -- connection tasks --------------------------------------------------------------------

    async def _read(self, session: _Session, shard: _Shard) -> None:
        """Hand every message to on_message; note probes, confirmations and barriers."""
        conn = shard.sub
        assert conn is not None
        stats = self._stats
        probe = shard.probe_bytes
        replies = _Replies(conn)
        gets, more = replies.gets, replies.more
        try:
            while True:
                # Every reply already buffered is handled without a coroutine call each.
                if gets is None:
                    reply = await replies.next()
                else:
                    reply = gets()
                    if reply is more:
                        await replies.fill()
                        continue
                if type(reply) is not list:
                    if isinstance(reply, Exception):
                        raise reply
                    continue
                kind = reply[0]
                if kind == b"message" or kind == b"smessage":
                    channel, data = reply[1], reply[2]
                elif kind == b"pmessage":
                    channel, data = reply[2], reply[3]
                else:
                    if kind == b"pong" or kind == b"sunsubscribe":
                        self._on_control(session, shard, kind, reply)
                    continue
                if channel == probe:
                    shard.probe_pending = False
                    shard.probe_sent = None
                    continue
                stats["received"] += 1
                on_message = self._on_message
                if on_message is None:
                    continue
                try:
                    on_message(channel.decode(), data)
                except Exception:
                    logger.exception("envelope handler raised for %r", channel)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            session.fail(f"subscriber {shard.address}: {exc or type(exc).__name__}")

    def _on_control(self, session: _Session, shard: _Shard, kind: bytes, reply: list[Any]) -> None:
        if kind == b"pong":
            barrier = shard.barriers.pop(reply[1], None)
            if barrier is not None and not barrier.done():
                barrier.set_result(None)
        elif kind == b"sunsubscribe":
            channel = reply[1].decode()
            pending = shard.unsubscribing.get(channel, 0)
            if pending > 1:
                shard.unsubscribing[channel] = pending - 1
            elif pending == 1:
                del shard.unsubscribing[channel]
            elif channel in shard.subscribed:
                # Redis dropped a shard channel we still want, unasked: its slot moved.
                session.fail(f"slot of {channel} moved away from {shard.address}")

    async def _write_sub(self, session: _Session, shard: _Shard) -> None:
        conn = shard.sub
        assert conn is not None
        out = shard.sub_out
        try:
            while True:
                if not out:
                    shard.sub_wake.clear()
                    await shard.sub_wake.wait()
                    continue
                data = b"".join(out)
                out.clear()
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow the
                # cancel of close() when the write completes at the same moment.
                async with asyncio.timeout(self.command_timeout):
                    await conn.send_packed_command(data, check_health=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            session.fail(f"subscriber {shard.address}: {exc or type(exc).__name__}")

    async def _write(self, session: _Session, shard: _Shard) -> None:
        """Write queued commands in batches and read their replies, pipelined."""
        conn = shard.pub
        assert conn is not None
        queue = shard.queue
        replies = _Replies(conn)
        try:
            while True:
                if not queue:
                    shard.wake.clear()
                    await shard.wake.wait()
                    continue
                batch = [queue.popleft() for _ in range(min(len(queue), WRITE_BATCH))]
                size = 0
                for command, _ in batch:
                    size += len(command)
                shard.queued_bytes -= size
                shard.in_flight = len(batch)
                try:
                    async with asyncio.timeout(self.command_timeout):
                        await conn.send_packed_command(
                            b"".join(c for c, _ in batch), check_health=False
                        )
                        for _, future in batch:
                            try:
                                reply = await replies.next()
                            except ResponseError as exc:
                                self._on_publish_error(session, shard, exc)
                                if future is not None and not future.done():
                                    future.set_exception(exc)
                                continue
                            if future is not None and not future.done():
                                future.set_result(reply)
                    shard.in_flight = 0
                except BaseException:
                    # What was in flight is lost with the connection.
                    self._stats["dropped"] += len(batch)
                    for _, future in batch:
                        if future is not None and not future.done():
                            future.set_exception(BrokerUnavailable("redis connection lost"))
                            future.exception()
                    raise
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            session.fail(f"publisher {shard.address}: no reply within {self.command_timeout:g} s")
        except Exception as exc:
            session.fail(f"publisher {shard.address}: {exc or type(exc).__name__}")

    def _on_publish_error(self, session: _Session, shard: _Shard, exc: ResponseError) -> None:
        self._stats["dropped"] += 1
        message = str(exc)
        if message.startswith(("MOVED", "ASK", "CLUSTERDOWN")):
            session.fail(f"cluster changed under {shard.address}: {message}")
        else:
            logger.error("redis at %s refused a publish: %s", shard.address, message)

    async def _drain(self, session: _Session, timeout: float) -> None:
        """Give queued publishes a moment to go out before closing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not session.failed.done() and any(
            shard.queue or shard.in_flight for shard in session.shards
        ):
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.002)

    # -- interest bookkeeping ----------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_interest)

    def _flush_interest(self, force: bool = False) -> None:
        """Send the subscription changes accumulated since the last flush, then one PING per
        shard written to: its answer confirms every SUBSCRIBE before it. While a flush is
        unconfirmed, the next waits for it (unless forced)."""
        self._flush_scheduled = False
        session = self._session
        if session is None:
            return  # kept for the next session, which compares with what it subscribed
        if self._flush_in_flight and not force:
            return  # `_confirm` flushes again
        if self._dirty and not force:
            loop = self._loop
            assert loop is not None
            wait = self._flushed_at + FLUSH_SPACING - loop.time()
            if wait > 0:  # busy: gather a few more clients' changes first
                self._flush_scheduled = True
                loop.call_later(wait, self._flush_interest)
                return
        waiting, self._next_flush = self._next_flush, None
        if not self._dirty:
            if waiting is not None and not waiting.done():
                waiting.set_result(None)
            return
        subscribe: dict[int, list[str]] = {}
        unsubscribe: dict[int, list[str]] = {}
        shards = {id(shard): shard for shard in session.shards}
        wanted, lingering = self._wanted, self._lingering
        if session.slot_map is None:  # one node: no slot look-up per channel
            only = session.shards[0]
            subscribed = only.subscribed
            on = [c for c in self._dirty if c not in subscribed and (c in wanted or c in lingering)]
            off = [
                c for c in self._dirty if c in subscribed and c not in wanted and c not in lingering
            ]
            if on:
                subscribe[id(only)] = on
            if off:
                unsubscribe[id(only)] = off
        else:
            for channel in self._dirty:
                shard = session.shard_for(channel)
                want = channel in wanted or channel in lingering
                if want and channel not in shard.subscribed:
                    subscribe.setdefault(id(shard), []).append(channel)
                elif not want and channel in shard.subscribed:
                    unsubscribe.setdefault(id(shard), []).append(channel)
        self._dirty.clear()
        for key, channels in unsubscribe.items():
            self._send_subscriptions(shards[key], channels, False)
        if not subscribe:
            if waiting is not None and not waiting.done():
                waiting.set_result(None)
            return
        if waiting is None:
            assert self._loop is not None
            waiting = self._loop.create_future()
        sent: list[str] = []
        barriers = []
        for key, channels in subscribe.items():
            self._send_subscriptions(shards[key], channels, True)
            barriers.append(self._barrier(shards[key]))
            sent += channels
        self._unconfirmed.update(dict.fromkeys(sent, waiting))
        self._flushes_unconfirmed += 1
        confirmed = barriers[0] if len(barriers) == 1 else asyncio.gather(*barriers)
        self._flush_in_flight = True
        assert self._loop is not None
        self._flushed_at = self._loop.time()
        confirmed.add_done_callback(
            lambda done: self._confirm(waiting, done)  # type: ignore[arg-type]
        )

    def _confirm(self, waiting: asyncio.Future[None], done: asyncio.Future[Any]) -> None:
        """A flush's PINGs came back: its channels are live. If the session failed first,
        they stay unconfirmed until the next session has subscribed again (`_up`)."""
        if done.cancelled() or done.exception() is not None:
            return
        self._flush_in_flight = False
        if self._dirty or self._next_flush is not None:
            self._schedule_flush()
        if not waiting.done():
            waiting.set_result(None)
        self._flushes_unconfirmed -= 1
        if not self._flushes_unconfirmed:
            self._unconfirmed.clear()  # all done (entries of done flushes count as confirmed)

    def _confirm_all(self) -> None:
        """Closing: nobody may wait for a confirmation any more."""
        for waiting in [*self._unconfirmed.values(), self._next_flush]:
            if waiting is not None and not waiting.done():
                waiting.set_result(None)
        self._unconfirmed.clear()
        self._next_flush = None

    def _expire_lingering(self) -> None:
        self._linger_handle = None
        assert self._loop is not None
        now = self._loop.time()
        lingering = self._lingering
        while lingering:
            channel, until = next(iter(lingering.items()))
            if until > now:
                self._linger_handle = self._loop.call_later(until - now, self._expire_lingering)
                break
            del lingering[channel]
            self._dirty.add(channel)
        self._schedule_flush()

    # -- failures ----------------------------------------------------------------------------

    def _overflow(self, shard: _Shard) -> None:
        self._stats["dropped"] += 1
        if not self._overflowing:
            self._overflowing = True
            logger.error(
                "redis publish buffer to %s full (%d bytes): dropping publishes until it drains",
                shard.address,
                shard.queued_bytes,
            )

    def _watchdog(self) -> None:
        """Every interval: a probe sent last time must have come back through the
        subscriber; if not, that connection stopped receiving and the session is rebuilt.
        A publisher alone (the emitter) is only PINGed, so a lost connection is noticed
        while idle."""
        assert self._loop is not None
        self._watchdog_handle = self._loop.call_later(self.watchdog_interval, self._watchdog)
        session = self._session
        if session is None:
            return
        if self.publisher_only:
            for shard in session.shards:
                if not shard.queue:
                    shard.queue.append((_PING, None))
                    shard.queued_bytes += len(_PING)
                    shard.wake.set()
            return
        now = self._loop.time()
        for shard in session.shards:
            if shard.probe_pending:
                if shard.probe_sent is not None and now - shard.probe_sent >= (
                    self.watchdog_interval
                ):
                    self._stats["watchdog_rebuilds"] += 1
                    session.fail(
                        f"subscriber {shard.address} stopped receiving "
                        f"(probe not back after {now - shard.probe_sent:.1f} s)"
                    )
                    return
                continue  # waiting for the publish of the probe to be acknowledged
            self._send_probe(session, shard)

    def _send_probe(self, session: _Session, shard: _Shard) -> None:
        assert self._loop is not None
        publisher = session.shard_for(shard.probe)
        future: asyncio.Future[Any] = self._loop.create_future()
        command = _pack(self._publish_command, shard.probe_bytes, b"probe")
        publisher.queue.append((command, future))
        publisher.queued_bytes += len(command)
        publisher.wake.set()
        shard.probe_pending = True
        shard.probe_sent = None

        def acknowledged(future: asyncio.Future[Any]) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            if not shard.probe_pending:
                return  # already back
            assert self._loop is not None
            shard.probe_sent = self._loop.time()
            if future.result() == 0:
                self._stats["watchdog_rebuilds"] += 1
                session.fail(f"subscriber {shard.address} is not subscribed any more")

        future.add_done_callback(acknowledged)


__all__ = ["INTEREST", "PATTERN", "PROBE_PREFIX", "RedisBroker", "RedisTarget"]
