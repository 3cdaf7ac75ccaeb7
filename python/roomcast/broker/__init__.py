"""The broker seam: how envelopes travel between roomcast nodes.

`protocol.Broker` declares every ability a caller may use and the delivery guarantee
(at-most-once). Implementations side by side: `memory.MemoryBroker` (one process) and
`redis.RedisBroker` (Redis and Redis Cluster); `adapter.PlainBroker` completes an object that
offers only `start`, `publish` and `close`.
"""

from __future__ import annotations

from .protocol import BROKER_STATES, Broker, BrokerState, BrokerUnavailable, OnMessage

_SCHEMES = ("://", "s://", "+cluster://", "s+cluster://", "+sentinel://", "s+sentinel://")
REDIS_SCHEMES = tuple(name + end for name in ("redis", "valkey") for end in _SCHEMES)
"""The URL schemes of the Redis helpers (`valkey` spells `redis` in each)."""


def create_broker(connection: object, *, publisher_only: bool = False) -> Broker:
    """A broker for what the application passed as `redis_connection`.

    Accepts a Broker, a URL string (`memory://[name]`, `redis://`, `rediss://`,
    `redis+cluster://host:port[,host:port...]`, `redis+sentinel://host:port[,...]/service`,
    the same with `valkey` for `redis`), or an object with a `create_broker()`
    method (the Redis helpers). `publisher_only` asks for a broker that never subscribes
    (the emitter).
    """
    if isinstance(connection, str):
        if connection == "memory:" or connection.startswith("memory://"):
            from .memory import MemoryBroker

            return MemoryBroker(connection.removeprefix("memory:").removeprefix("//"))
        if connection.startswith(REDIS_SCHEMES):
            from .redis.helper import connection_from_url

            connection = connection_from_url(connection)
        else:
            raise ValueError(f"unsupported broker url: {connection}")
    factory = getattr(connection, "create_broker", None)
    if callable(factory):
        broker = factory(publisher_only=publisher_only) if publisher_only else factory()
        return broker if isinstance(broker, Broker) else _complete(broker)
    if isinstance(connection, Broker):
        return connection
    return _complete(connection)


def _complete(connection: object) -> Broker:
    from .adapter import PlainBroker, is_plain_broker

    if is_plain_broker(connection):
        return PlainBroker(connection)
    raise ValueError(f"not a broker or redis helper: {type(connection).__name__}")


__all__ = [
    "BROKER_STATES",
    "REDIS_SCHEMES",
    "Broker",
    "BrokerState",
    "BrokerUnavailable",
    "OnMessage",
    "create_broker",
]
