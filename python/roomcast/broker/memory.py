"""The in-process broker: one node (or several helpers in one process), no Redis."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from .protocol import OneProcess, OnMessage

# Brokers with the same name in one process share their subscribers, like nodes on one Redis.
_networks: defaultdict[str, set[MemoryBroker]] = defaultdict(set)


class MemoryBroker(OneProcess):
    """At-most-once delivery to the other brokers of the same name in this process.

    Messages are delivered on a later event loop iteration, never inside `publish`. Every
    peer receives every channel, so interest and confirmations mean nothing here: they are
    no-ops, and every channel is always live.
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._on_message: OnMessage | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, on_message: OnMessage | None = None) -> None:
        self._on_message = on_message
        self._loop = asyncio.get_running_loop()
        _networks[self.name].add(self)

    def publish(self, channel: str, message: bytes) -> None:
        self._publish(channel, message)

    async def publish_wait(self, channel: str, message: bytes) -> int:
        """Publish; returns how many brokers (subscribers) will get it."""
        return self._publish(channel, message)

    def _publish(self, channel: str, message: bytes) -> int:
        count = 0
        for peer in _networks.get(self.name, ()):
            if peer._on_message is not None and peer._loop is not None:
                peer._loop.call_soon_threadsafe(peer._on_message, channel, message)
                count += 1
        return count

    async def close(self) -> None:
        peers = _networks.get(self.name)
        if peers is not None:
            peers.discard(self)
            if not peers:
                del _networks[self.name]
        self._on_message = None

    def __repr__(self) -> str:
        return f"MemoryBroker(name={self.name!r})"
