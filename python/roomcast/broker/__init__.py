"""The broker seam: how envelopes travel between roomcast nodes.

Guarantee, for every implementation: at-most-once, no ordering across channels, ordering
within one channel from one publisher. A node that is not subscribed when a message is
published never sees it. Publishing never blocks the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

OnMessage = Callable[[str, bytes], None]
"""Called on the event loop with (channel, raw envelope bytes)."""


@runtime_checkable
class Broker(Protocol):
    async def start(self, on_message: OnMessage) -> None:
        """Connect and subscribe to every channel a node listens on; idempotent."""

    def publish(self, channel: str, message: bytes) -> None:
        """Send without waiting; failures are logged, never raised."""

    async def close(self) -> None:
        """Unsubscribe and disconnect; idempotent."""


def create_broker(connection: object) -> Broker:
    """A broker for what the application passed as `redis_connection`.

    Accepts a Broker, a URL string (`memory://[name]`), or an object with a
    `create_broker()` method (the Redis helpers).
    """
    if isinstance(connection, str):
        if connection == "memory:" or connection.startswith("memory://"):
            from .memory import MemoryBroker

            return MemoryBroker(connection.removeprefix("memory:").removeprefix("//"))
        raise ValueError(f"unsupported broker url: {connection}")
    factory = getattr(connection, "create_broker", None)
    if callable(factory):
        return factory()
    if isinstance(connection, Broker):
        return connection
    raise ValueError(f"not a broker or redis helper: {type(connection).__name__}")


__all__ = ["Broker", "OnMessage", "create_broker"]
