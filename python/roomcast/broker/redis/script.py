"""What the history's Redis modules share: a room's keys, a client of their own with the
history's timeout, a Lua script called by its SHA, and the error past the timeout."""

from __future__ import annotations

import hashlib
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from .target import RedisTarget


class HistoryUnavailable(RedisError):
    """The store could not number a message within its timeout (or is known to be down)."""


def keys_of(room: str) -> list[str]:
    """The stream and meta keys of a room, in one cluster slot."""
    return [f"ws:history:{{r:{room}}}:s", f"ws:history:{{r:{room}}}:m"]


def client_for(target: RedisTarget, name: str | None = None, timeout: float | None = None) -> Any:
    """A redis-py client of its own (not the broker's connections) for `target`; `name`
    is its connections' CLIENT SETNAME. With `timeout`, every connect and reply waits at
    most that long, and a failed command is not retried by redis-py (the caller decides)."""
    kwargs = dict(target.connection_kwargs)
    if name is not None:
        kwargs["client_name"] = name
    if timeout is not None:
        kwargs.update(
            socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
    if target.cluster:
        kwargs.pop("db", None)
        ssl = target.connection_class.__name__ == "SSLConnection"
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            ssl=ssl,
            **kwargs,
        )
    if target.sentinel is not None:
        return target.sentinel.master_client(target.connection_class, kwargs)
    ((host, port),) = target.nodes
    from redis.asyncio import ConnectionPool

    pool = ConnectionPool(connection_class=target.connection_class, host=host, port=port, **kwargs)
    return Redis.from_pool(pool)


class Script:
    """EVALSHA, falling back to EVAL when the server does not know the script (a restart,
    a new cluster node), which also loads it for next time."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


__all__ = ["HistoryUnavailable", "Script", "client_for", "keys_of", "text"]
