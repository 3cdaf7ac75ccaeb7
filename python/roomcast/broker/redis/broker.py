"""RedisBroker: envelopes between roomcast nodes (and the original's) through Redis pub/sub.

Guarantee: at-most-once, as every broker (see `roomcast.broker.protocol`). While Redis is
unreachable a node keeps delivering locally; what is published meanwhile, by it or by anyone
else, never reaches it, and what it publishes is dropped (counted, logged once per outage).

Connections: per Redis node in use, one subscriber and one publisher, both plain redis-py
asyncio connections (hiredis parser) opened from the helper's settings and never shared with
the application's client. One node is in use for a single server and for classic pub/sub on
a cluster (a classic PUBLISH reaches every cluster node); sharded mode uses every master.

This module is the lifecycle: a session (`session.py`) is the set of live connections; any
failure ends it, and a supervisor opens a new one under the retry policy (`retry.py`),
subscribing again to everything the node needs (`interest.py`) at that moment. Publishing
never waits: commands are queued and written by one task per connection, pipelined.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from redis.exceptions import AuthenticationError, AuthorizationError

from ...aio import stop_task
from ...protocol.constants import WebSocketChannels
from ..protocol import BrokerState, BrokerUnavailable, OnMessage
from .cluster import discover, probe_channel
from .interest import Interest
from .retry import RECONNECT
from .sentinel import check_master
from .session import Session, Shard
from .target import RedisTarget
from .watchdog import PROBE_PREFIX, Watchdog
from .wire import Commands

logger = logging.getLogger("roomcast.redis")

INTEREST = "interest"
"""SUBSCRIBE exactly the room, user and client channels with local members (the default)."""
PATTERN = "pattern"
"""The original's set: SUBSCRIBE ws:broadcast, PSUBSCRIBE ws:room:*, ws:client:*, ws:user:*."""
SUBSCRIBE_MODES = (INTEREST, PATTERN)

_PATTERNS = [
    WebSocketChannels.for_room_pattern(),
    WebSocketChannels.for_client_pattern(),
    WebSocketChannels.for_user_pattern(),
]
CONNECT_TIMEOUT = 5.0
"""Bound of one connection attempt (the ready bound caps it further)."""
_UP, _DOWN, _CLOSED = "up", "down", "closed"


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

    interest: Callable[[str, bool], None]
    """The node got its first local member of a channel (on) or lost its last (off); see
    `Interest.interest`."""
    interest_many: Callable[[list[str], list[str]], None]
    """`interest(channel, True)` for each of the first list, then `False` for the second."""
    subscribe_new: Callable[[list[str], list[str] | None], asyncio.Future[Any] | None]
    """See `Interest.subscribe_new`: subscribe a new client's own channels (and want its
    shared ones) and return the future of the flush that confirms them."""
    confirmation: Callable[[Iterable[str]], asyncio.Future[Any] | None]
    """See `Interest.confirmation`: None when every one of `channels` is live, else a
    future resolved once Redis has confirmed them."""

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
        self._commands = Commands.of(sharded)
        self._publish_head = self._commands.publish_head
        self._probe_prefix = f"{PROBE_PREFIX}{uuid.uuid4().hex}:"

        self._on_message: OnMessage | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state = _DOWN
        self._session: Session | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._master_watch: asyncio.Task[None] | None = None
        self._down_since = 0.0
        self._down_reason = "not started"
        self._dropped_mark = 0
        self._overflowing = False
        self._stats = {
            "published": 0,
            "received": 0,
            "dropped": 0,
            "reconnects": 0,
            "watchdog_rebuilds": 0,
        }
        self._interest = Interest(self.wants_interest, self.unsubscribe_delay)
        self.interest = self._interest.interest  # bound once: no extra call per change
        self.interest_many = self._interest.interest_many
        self.subscribe_new = self._interest.subscribe_new  # as `interest`: once a login
        self.confirmation = self._interest.confirmation
        self._watchdog = Watchdog(
            self.watchdog_interval, publisher_only, self._commands.publish, self._stats
        )

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
        self._interest.loop = loop
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
                await asyncio.sleep(min(RECONNECT.delay(attempt), left))
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
        # Commands.publish_command, inline: this is the hot path.
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
        future: asyncio.Future[Any] = self._loop.create_future()
        session.shard_for(channel).enqueue(
            self._commands.publish_command(channel.encode(), message), future
        )
        self._stats["published"] += 1
        return int(await future)

    async def publish_many_wait(self, messages: list[tuple[str, bytes]]) -> list[int]:
        """`publish_wait` for each, queued at once (the writer sends them in one write), then
        waited for together. Raises BrokerUnavailable while disconnected."""
        session = self._session
        if session is None:
            raise BrokerUnavailable(
                f"redis at {self.target.describe()} is unavailable: {self._down_reason}"
            )
        assert self._loop is not None
        create_future = self._loop.create_future
        command = self._commands.publish_command
        futures: list[asyncio.Future[Any]] = []
        for channel, message in messages:
            future = create_future()
            session.shard_for(channel).enqueue(command(channel.encode(), message), future)
            futures.append(future)
        self._stats["published"] += len(futures)
        return [int(n) for n in await asyncio.gather(*futures)]

    @property
    def wants_interest(self) -> bool:
        """Whether `interest()` changes anything: only in interest mode with a subscriber."""
        return self.subscribe_mode == INTEREST and not self.publisher_only

    @property
    def confirms_subscriptions(self) -> bool:
        """Whether a channel needs a subscription of its own (interest and sharded modes),
        whose confirmation `confirmation()` reports; with patterns every channel is live."""
        return self.subscribe_mode == INTEREST and not self.publisher_only

    async def close(self) -> None:
        """Flush what is queued (briefly), then disconnect; idempotent."""
        if self._state == _CLOSED:
            return
        was_up = self._state == _UP
        self._state = _CLOSED
        self._interest.close()
        self._watchdog.stop()
        await stop_task(self._supervisor)
        self._supervisor = None
        await stop_task(self._master_watch)
        self._master_watch = None
        session, self._session = self._session, None
        self._interest.session = self._watchdog.session = None
        if session is not None:
            if was_up:
                await session.drain(min(1.0, self.command_timeout))
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
        self._interest.flush(force=True)
        session = self._session
        if session is None or self.publisher_only:
            raise BrokerUnavailable(f"redis at {self.target.describe()} is unavailable")
        barriers = [shard.barrier() for shard in session.shards]
        await asyncio.wait_for(asyncio.gather(*barriers), timeout or self.command_timeout)

    # -- sessions ----------------------------------------------------------------------------

    def _mode(self) -> str:
        if self.publisher_only:
            return "publisher"
        if self.sharded:
            return "sharded pub/sub, interest"
        return f"{self.subscribe_mode} subscriptions"

    def _up(self, session: Session) -> None:
        self._session = session
        self._state = _UP
        self._watchdog.session = session
        self._interest.attach(session)
        assert self._loop is not None
        self._watchdog.start(self._loop)
        if self.target.sentinel is not None and self.watchdog_interval > 0:
            if self._master_watch is not None:
                self._master_watch.cancel()  # its session ended
            self._master_watch = self._loop.create_task(self._watch_master(session))

    async def _watch_master(self, session: Session) -> None:
        """Sentinel: every watchdog interval, ask the sentinels whether the master is still
        the server this session uses, and end the session when they name another. A master
        that lost its sentinels but not its clients (a partition between them) keeps
        answering after its replica was promoted: without this, the node would stay on it,
        apart from the nodes on the new master, until the partition heals."""
        service = self.target.sentinel
        assert service is not None
        shard = session.shards[0]
        while not session.failed.done():
            await asyncio.sleep(self.watchdog_interval)
            try:
                host, port = await service.discover(self.command_timeout)
            except Exception as exc:  # sentinels away or failing over: the connections tell
                logger.debug("sentinels of %s did not answer: %s", service.name, exc)
                continue
            if (host, port) != (shard.host, shard.port) and not session.failed.done():
                session.fail(f"the sentinels name {host}:{port} as the master of {service.name}")
                return

    async def _supervise(self) -> None:
        """Wait for the session to fail, then reopen one under the retry policy, forever."""
        loop = asyncio.get_running_loop()
        while True:
            session = self._session
            assert session is not None
            reason = await asyncio.shield(session.failed)
            self._state = _DOWN
            self._session = self._interest.session = self._watchdog.session = None
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
                await asyncio.sleep(RECONNECT.delay(attempt))
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

    async def _open(self, deadline: float | None) -> Session:
        """Connect, subscribe to everything needed now and wait for Redis to confirm."""
        loop = asyncio.get_running_loop()

        def connect_timeout() -> float:
            if deadline is None:
                return CONNECT_TIMEOUT
            return max(0.05, min(CONNECT_TIMEOUT, deadline - loop.time()))

        if self.target.cluster:
            nodes, slot_map = await discover(
                self.target, self.sharded, connect_timeout, self.command_timeout
            )
        elif self.target.sentinel is not None:
            # Asked at every session: after a failover, the new master.
            # (A sentinel that does not answer costs at most the command timeout.)
            asked = min(connect_timeout(), self.command_timeout)
            nodes, slot_map = [await self.target.sentinel.discover(asked)], None
        else:
            nodes, slot_map = [self.target.nodes[0]], None
        shards = [Shard(host, port, self._commands) for host, port in nodes]
        session = Session(
            shards,
            slot_map,
            on_message=self._on_message,
            stats=self._stats,
            command_timeout=self.command_timeout,
        )
        try:
            # Changes from now on are sent by the next flush, against what this session
            # subscribes to below.
            self._interest.dirty.clear()
            for index, shard in enumerate(shards):
                shard.pub = await self.target.connect(shard.host, shard.port, connect_timeout())
                if self.target.sentinel is not None:
                    await check_master(shard.pub, self.target.sentinel, connect_timeout())
                if not self.publisher_only:
                    shard.set_probe(probe_channel(self._probe_prefix, slot_map, index))
                    shard.sub = await self.target.connect(shard.host, shard.port, connect_timeout())
                session.start_tasks(shard)
            if not self.publisher_only:
                channels = [WebSocketChannels.BROADCAST]
                if self.subscribe_mode == INTEREST:
                    channels += self._interest.channels()
                session.subscribe_all(channels, _PATTERNS if self.subscribe_mode == PATTERN else [])
                timeout = self.command_timeout if deadline is None else connect_timeout()
                await session.confirmed(timeout)
        except BaseException:
            await session.close()
            raise
        return session

    def _overflow(self, shard: Shard) -> None:
        self._stats["dropped"] += 1
        if not self._overflowing:
            self._overflowing = True
            logger.error(
                "redis publish buffer to %s full (%d bytes): dropping publishes until it drains",
                shard.address,
                shard.queued_bytes,
            )


__all__ = ["INTEREST", "PATTERN", "SUBSCRIBE_MODES", "RedisBroker"]
