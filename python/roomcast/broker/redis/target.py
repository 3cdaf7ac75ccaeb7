"""Where and how the broker connects: plain redis-py asyncio connections, our timeouts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .sentinel import SentinelService


@dataclass(frozen=True)
class RedisTarget:
    """Where and how to connect: one server, the seed nodes of a cluster, or the master of
    a Sentinel service (`sentinel`; `nodes` are then its sentinels)."""

    nodes: tuple[tuple[str, int], ...]
    cluster: bool = False
    connection_class: type[Connection] = Connection
    connection_kwargs: Mapping[str, Any] = field(default_factory=dict)
    sentinel: SentinelService | None = None

    def describe(self) -> str:
        if self.sentinel is not None:
            return self.sentinel.describe()
        return ",".join(f"{host}:{port}" for host, port in self.nodes)

    def connection(self, host: str, port: int, connect_timeout: float) -> Connection:
        """A new, unconnected redis-py connection with our own timeouts and no retries."""
        kwargs = dict(self.connection_kwargs)
        kwargs.update(
            host=host,
            port=port,
            socket_timeout=None,  # reads wait for pushes; command timeouts are ours
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 0),  # a failure ends the session; RetryPolicy reconnects
            protocol=2,  # pub/sub messages as plain replies
            health_check_interval=0,
        )
        if self.cluster:
            kwargs.pop("db", None)
        return self.connection_class(**kwargs)

    async def connect(self, host: str, port: int, connect_timeout: float) -> Connection:
        """`connection()`, connected."""
        conn = self.connection(host, port, connect_timeout)
        try:
            await conn.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        return conn


__all__ = ["RedisTarget"]
