"""The broker seam: how envelopes travel between roomcast nodes.

Guarantee, for every implementation: at-most-once, no ordering across channels, ordering
within one channel from one publisher. A node that is not subscribed when a message is
published never sees it (nor does one whose broker is disconnected). Publishing never blocks
the caller.

Implementations: `memory.MemoryBroker` (one process) and `redis.RedisBroker` (Redis and Redis
Cluster). A broker may also offer `interest(channel, on)`: the server then reports when a
`ws:room:`, `ws:user:` or `ws:client:` channel gets its first local member (on) or loses its
last (off), so the broker can subscribe only to what the node needs. Brokers that receive
everything anyway need not have it. A broker may tell its `state` (`connected`, `connecting`,
`reconnecting`, `closed`) and keep `stats()` counters; health checks and metrics read them.
A broker that subscribes by interest also offers `confirms_subscriptions` (True
when a channel is live only once its own subscription is confirmed), `confirmation(channels)`
(None when every channel is live, else a future resolved when they are) and
`subscribe_new(channels)`: the server's join barrier waits on them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

OnMessage = Callable[[str, bytes], None]
"""Called on the event loop with (channel, raw envelope bytes)."""

REDIS_SCHEMES = ("redis://", "rediss://", "redis+cluster://", "rediss+cluster://")


class BrokerUnavailable(ConnectionError):
    """The broker's server cannot be reached (the message names the address)."""


@runtime_checkable
class Broker(Protocol):
    async def start(self, on_message: OnMessage) -> None:
        """Connect and subscribe to every channel a node listens on; idempotent."""

    def publish(self, channel: str, message: bytes) -> None:
        """Send without waiting; failures are logged, never raised."""

    async def close(self) -> None:
        """Unsubscribe and disconnect; idempotent."""


def create_broker(connection: object, *, publisher_only: bool = False) -> Broker:
    """A broker for what the application passed as `redis_connection`.

    Accepts a Broker, a URL string (`memory://[name]`, `redis://`, `rediss://`,
    `redis+cluster://host:port[,host:port...]`), or an object with a `create_broker()`
    method (the Redis helpers). `publisher_only` asks for a broker that never subscribes
    (the emitter).
    """
    if isinstance(connection, str):
        if connection == "memory:" or connection.startswith("memory://"):
            from .memory import MemoryBroker

            return MemoryBroker(connection.removeprefix("memory:").removeprefix("//"))
        if connection.startswith(REDIS_SCHEMES):
            from ..redis import connection_from_url

            connection = connection_from_url(connection)
        else:
            raise ValueError(f"unsupported broker url: {connection}")
    factory = getattr(connection, "create_broker", None)
    if callable(factory):
        return factory(publisher_only=publisher_only) if publisher_only else factory()
    if isinstance(connection, Broker):
        return connection
    raise ValueError(f"not a broker or redis helper: {type(connection).__name__}")


__all__ = ["REDIS_SCHEMES", "Broker", "BrokerUnavailable", "OnMessage", "create_broker"]
