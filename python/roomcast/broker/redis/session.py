"""The subscriber session: one set of live connections, replaced wholesale on any failure.

Per Redis node in use (a `Shard`): one subscriber and one publisher connection, each with a
writer task that writes queued commands pipelined, in arrival order; the subscriber's reader
hands every message to `on_message` and notes probes, PING barriers (subscription
confirmations) and unasked SUNSUBSCRIBEs. Any failure (a read or write error, a command
timeout, a slot that moved) fails the session; the broker then opens a new one.

Why not redis-py's `PubSub`: its `get_message()` costs a coroutine, checks and a dict per
message (several times our whole receive path), and it cannot pipeline PUBLISH replies.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import Connection
from redis.exceptions import ResponseError

from ..protocol import BrokerUnavailable, OnMessage
from .cluster import SlotMap, by_slot, shard_index
from .replies import Replies, transport_of
from .wire import Commands, pack, pack_channels

logger = logging.getLogger("roomcast.redis")

WRITE_BATCH = 2048
"""Commands written (and their replies awaited) together."""
SUBSCRIBE_CHUNK = 512
"""Channels per SUBSCRIBE/UNSUBSCRIBE command."""


class Shard:
    """The connections of a session to one Redis node, and what flows through them."""

    def __init__(self, host: str, port: int, commands: Commands) -> None:
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self.commands = commands
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
        # Messages the subscriber has delivered (the watchdog tells "behind" from "dead").
        self.progress = 0
        # Publisher queue: packed command, optional future for the reply.
        self.queue: deque[tuple[bytes, asyncio.Future[Any] | None]] = deque()
        self.queued_bytes = 0
        self.in_flight = 0  # commands written whose replies are awaited
        self.wake = asyncio.Event()
        # Subscriber commands (packed) waiting to be written, and the subscriber's transport
        # while its writer task runs (for `push`).
        self.sub_out: deque[bytes] = deque()
        self.sub_wake = asyncio.Event()
        self.sub_transport: Any = None
        self.barriers: dict[bytes, asyncio.Future[None]] = {}
        self.barrier_calls: dict[bytes, Callable[[], None]] = {}
        self._barrier_seq = 0

    def set_probe(self, channel: str) -> None:
        self.probe = channel
        self.probe_bytes = channel.encode()
        self.probe_sent = None
        self.probe_pending = False

    def enqueue(self, command: bytes, future: asyncio.Future[Any] | None = None) -> None:
        """Queue a command for the publisher connection."""
        self.queue.append((command, future))
        self.queued_bytes += len(command)
        self.wake.set()

    def send_subscriptions(self, channels: list[str], on: bool, wake: bool = True) -> None:
        """Queue (S)SUBSCRIBE or (S)UNSUBSCRIBE of `channels` on the subscriber (and wake
        its writer, unless `wake` is False: the caller then calls `push`)."""
        if not channels:
            return
        commands = self.commands
        command = commands.subscribe if on else commands.unsubscribe
        if on:
            self.subscribed.update(channels)
        else:
            self.subscribed.difference_update(channels)
            if commands.sharded:
                pending = self.unsubscribing
                for channel in channels:
                    pending[channel] = pending.get(channel, 0) + 1
        if commands.sharded:
            self.sub_out.append(b"".join(pack(command, *group) for group in by_slot(channels)))
        else:
            self.sub_out.append(
                b"".join(
                    pack_channels(command, channels[i : i + SUBSCRIBE_CHUNK])
                    for i in range(0, len(channels), SUBSCRIBE_CHUNK)
                )
            )
        if wake:
            self.sub_wake.set()

    def send_patterns(self, patterns: list[str]) -> None:
        self.sub_out.append(pack(b"PSUBSCRIBE", *(p.encode() for p in patterns)))
        self.sub_wake.set()

    def barrier(
        self, wake: bool = True, then: Callable[[], None] | None = None
    ) -> asyncio.Future[None]:
        """Resolved when Redis answers a PING sent after everything queued on `sub` (woken
        as `send_subscriptions`). `then` is called right when the answer is read (not a loop
        iteration later, as the future's callbacks are), unless the session fails first."""
        self._barrier_seq += 1
        token = b"roomcast-sync-%d" % self._barrier_seq
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.barriers[token] = future
        if then is not None:
            self.barrier_calls[token] = then
        self.sub_out.append(pack(b"PING", token))
        if wake:
            self.sub_wake.set()
        return future

    def push(self) -> None:
        """Write what is queued for the subscriber, in one write and at once when nothing
        written before is still buffered (the socket takes it: the common case); otherwise
        the writer task writes it, bounded by the command timeout. Saves the task's wake-up
        and a coroutine per flush of subscription changes."""
        out = self.sub_out
        if not out:
            return
        transport = self.sub_transport
        if (
            transport is not None
            and not transport.is_closing()
            and not transport.get_write_buffer_size()
        ):
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            try:
                transport.write(data)
                return
            except Exception:  # closed under us: the writer task fails the session
                out.appendleft(data)
        self.sub_wake.set()


class Session:
    """One set of live connections; replaced wholesale when anything in it fails."""

    def __init__(
        self,
        shards: list[Shard],
        slot_map: SlotMap | None,
        *,
        on_message: OnMessage | None,
        stats: dict[str, int],
        command_timeout: float,
    ) -> None:
        self.shards = shards
        self.slot_map = slot_map
        self.on_message = on_message
        self.stats = stats
        self.command_timeout = command_timeout
        self.tasks: list[asyncio.Task[Any]] = []
        self.failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def shard_for(self, channel: str) -> Shard:
        if self.slot_map is None:
            return self.shards[0]
        return self.shards[shard_index(self.slot_map, channel)]

    def fail(self, reason: str) -> None:
        if not self.failed.done():
            self.failed.set_result(reason)

    def subscribe_all(self, channels: list[str], patterns: list[str]) -> None:
        """Queue what a fresh session subscribes to: each shard's probe, `channels` on the
        shards serving them, then `patterns` on every shard."""
        by_shard: dict[int, list[str]] = {}
        for channel in channels:
            by_shard.setdefault(id(self.shard_for(channel)), []).append(channel)
        for shard in self.shards:
            shard.send_subscriptions([shard.probe, *by_shard.get(id(shard), ())], True)
            if patterns:
                shard.send_patterns(patterns)

    def start_tasks(self, shard: Shard) -> None:
        loop = asyncio.get_running_loop()
        if shard.pub is not None:
            self.tasks.append(loop.create_task(self._write(shard)))
        if shard.sub is not None:
            self.tasks.append(loop.create_task(self._read(shard)))
            self.tasks.append(loop.create_task(self._write_sub(shard)))
            shard.sub_transport = transport_of(shard.sub)

    async def confirmed(self, timeout: float) -> None:
        """Wait until every subscriber connection answered a PING queued after its
        subscriptions, or fail with the session's reason or a timeout."""
        waiter = asyncio.gather(*(shard.barrier() for shard in self.shards))
        try:
            await asyncio.wait(
                (waiter, self.failed), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not waiter.done():
                waiter.cancel()
        if self.failed.done():
            raise ConnectionError(self.failed.result())
        if waiter.cancelled():
            raise TimeoutError(f"subscriptions not confirmed within {timeout:g} s")
        waiter.result()

    async def drain(self, timeout: float) -> None:
        """Give queued publishes a moment to go out before closing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.failed.done() and any(
            shard.queue or shard.in_flight for shard in self.shards
        ):
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.002)

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
            shard.sub_transport = None
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
            shard.barrier_calls.clear()
        return lost

    # -- connection tasks --------------------------------------------------------------------

    async def _read(self, shard: Shard) -> None:
        """Hand every message to on_message; note probes, confirmations and barriers."""
        conn = shard.sub
        assert conn is not None
        stats = self.stats
        probe = shard.probe_bytes
        on_message = self.on_message
        replies = Replies(conn)
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
                        self._on_control(shard, kind, reply)
                    continue
                if channel == probe:
                    shard.probe_pending = False
                    shard.probe_sent = None
                    continue
                shard.progress += 1
                stats["received"] += 1
                if on_message is None:
                    continue
                try:
                    on_message(channel.decode(), data)
                except Exception:
                    logger.exception("envelope handler raised for %r", channel)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.fail(f"subscriber {shard.address}: {exc or type(exc).__name__}")

    def _on_control(self, shard: Shard, kind: bytes, reply: list[Any]) -> None:
        if kind == b"pong":
            token = reply[1]
            barrier = shard.barriers.pop(token, None)
            if barrier is not None and not barrier.done():
                barrier.set_result(None)
            then = shard.barrier_calls.pop(token, None)
            if then is not None:
                try:
                    then()
                except Exception:
                    logger.exception("confirmation callback raised")
        elif kind == b"sunsubscribe":
            channel = reply[1].decode()
            pending = shard.unsubscribing.get(channel, 0)
            if pending > 1:
                shard.unsubscribing[channel] = pending - 1
            elif pending == 1:
                del shard.unsubscribing[channel]
            elif channel in shard.subscribed:
                # Redis dropped a shard channel we still want, unasked: its slot moved.
                self.fail(f"slot of {channel} moved away from {shard.address}")

    async def _write_sub(self, shard: Shard) -> None:
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
            self.fail(f"subscriber {shard.address}: {exc or type(exc).__name__}")

    async def _write(self, shard: Shard) -> None:
        """Write queued commands in batches and read their replies, pipelined."""
        conn = shard.pub
        assert conn is not None
        queue = shard.queue
        replies = Replies(conn)
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
                                self._on_publish_error(shard, exc)
                                if future is not None and not future.done():
                                    future.set_exception(exc)
                                continue
                            if future is not None and not future.done():
                                future.set_result(reply)
                    shard.in_flight = 0
                except BaseException:
                    # What was in flight is lost with the connection.
                    self.stats["dropped"] += len(batch)
                    for _, future in batch:
                        if future is not None and not future.done():
                            future.set_exception(BrokerUnavailable("redis connection lost"))
                            future.exception()
                    raise
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            self.fail(f"publisher {shard.address}: no reply within {self.command_timeout:g} s")
        except Exception as exc:
            self.fail(f"publisher {shard.address}: {exc or type(exc).__name__}")

    def _on_publish_error(self, shard: Shard, exc: ResponseError) -> None:
        self.stats["dropped"] += 1
        message = str(exc)
        if message.startswith(("MOVED", "ASK", "CLUSTERDOWN")):
            self.fail(f"cluster changed under {shard.address}: {message}")
        else:
            logger.error("redis at %s refused a publish: %s", shard.address, message)


__all__ = ["Session", "Shard"]
