"""The watchdog: notices a subscriber connection that stopped receiving without an error.

Every interval each shard's probe channel (one only this node subscribes to) is published to;
the publish's acknowledgement starts a clock, and the probe must come back through the
subscriber within another interval or the session is failed (and rebuilt), unless other
messages kept arriving on that subscriber over the last interval: then it is behind (the
probe waits in Redis' output buffer behind a backlog), not dead, and rebuilding it would only
throw the backlog away. A publisher alone (the emitter) is only PINGed, so a lost connection
is noticed while idle.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .session import Session, Shard
from .wire import PING, pack

PROBE_PREFIX = "ws:probe:"
"""Channels of the watchdog's probes; no other node subscribes to them."""


class Watchdog:
    """Ticks every `interval` seconds while started; the broker sets `session`."""

    def __init__(
        self, interval: float, publisher_only: bool, publish: bytes, stats: dict[str, int]
    ) -> None:
        self.interval = interval
        self.publisher_only = publisher_only
        self.publish = publish
        self.stats = stats
        self.session: Session | None = None
        self._handle: asyncio.TimerHandle | None = None
        # Each shard's message count at the last tick (by address: a rebuilt session's
        # shards start again from 0, which counts as movement once).
        self._progress: dict[str, int] = {}

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start ticking (once; later calls do nothing)."""
        if self.interval > 0 and self._handle is None:
            self._handle = loop.call_later(self.interval, self._tick, loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = loop.call_later(self.interval, self._tick, loop)
        session = self.session
        if session is None:
            return
        if self.publisher_only:
            for shard in session.shards:
                if not shard.queue:
                    shard.enqueue(PING)
            return
        now = loop.time()
        progress = self._progress
        for shard in session.shards:
            moved = progress.get(shard.address) != shard.progress
            progress[shard.address] = shard.progress
            if shard.probe_pending:
                sent = shard.probe_sent
                if sent is not None and now - sent >= self.interval and not moved:
                    self.stats["watchdog_rebuilds"] += 1
                    session.fail(
                        f"subscriber {shard.address} stopped receiving "
                        f"(probe not back after {now - sent:.1f} s)"
                    )
                    return
                continue  # waiting for the publish of the probe to be acknowledged
            self._send_probe(loop, session, shard)

    def _send_probe(self, loop: asyncio.AbstractEventLoop, session: Session, shard: Shard) -> None:
        future: asyncio.Future[Any] = loop.create_future()
        command = pack(self.publish, shard.probe_bytes, b"probe")
        session.shard_for(shard.probe).enqueue(command, future)
        shard.probe_pending = True
        shard.probe_sent = None

        def acknowledged(future: asyncio.Future[Any]) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            if not shard.probe_pending:
                return  # already back
            shard.probe_sent = loop.time()
            if future.result() == 0:
                self.stats["watchdog_rebuilds"] += 1
                session.fail(f"subscriber {shard.address} is not subscribed any more")

        future.add_done_callback(acknowledged)


__all__ = ["PROBE_PREFIX", "Watchdog"]
