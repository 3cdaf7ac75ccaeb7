"""Redis Sentinel: where the master of a service is now, through redis-py's Sentinel support.

The broker asks the sentinels for the master's address each time it opens a session (at
start and at every reconnection), so after a failover it reconnects to the new master; it
then checks with ROLE that the server it reached is a master, since a replica would accept
its PUBLISH and SUBSCRIBE and silently cut the node off the others. History, presence and
the application's client use redis-py's `Sentinel.master_for`, whose connections ask the
sentinels again whenever they reconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError

DEFAULT_PORT = 26379
"""A sentinel's port when the URL names none."""
SENTINEL_TIMEOUT = 5.0
"""Seconds a sentinel may take to accept a connection or answer, for `master_for`'s clients
(a sentinel that does not answer is skipped for the next one)."""


@dataclass(frozen=True)
class SentinelService:
    """A master found through Sentinel: its service name, the sentinels that watch it and
    how to reach them (`kwargs`: their password, username, TLS options)."""

    name: str
    sentinels: tuple[tuple[str, int], ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    first: list[int] = field(default_factory=lambda: [0], compare=False, repr=False)
    """Which sentinel is asked first (by `discover` and by new `master_client`s): the last
    one that answered, as redis-py's `discover_master` does within one client, so one that
    hangs costs its timeout once, not at every reconnection."""

    def describe(self) -> str:
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"{self.name} via sentinel {hosts}"

    def ordered(self) -> list[tuple[str, int]]:
        """The sentinels, the one to ask first first."""
        start = self.first[0] % len(self.sentinels)
        return [*self.sentinels[start:], *self.sentinels[:start]]

    def manager(
        self, connection_kwargs: Mapping[str, Any], timeout: float | None = None
    ) -> Sentinel:
        """redis-py's Sentinel for this service; `timeout` bounds each sentinel's connect
        and reply (else `SENTINEL_TIMEOUT`, unless the sentinels' settings say otherwise)."""
        kwargs = dict(self.kwargs)
        kwargs.setdefault("retry", Retry(NoBackoff(), 0))  # discovery moves on by itself
        if timeout is not None:
            kwargs["socket_connect_timeout"] = timeout
            kwargs["socket_timeout"] = timeout
        else:
            kwargs.setdefault("socket_connect_timeout", SENTINEL_TIMEOUT)
            kwargs.setdefault("socket_timeout", SENTINEL_TIMEOUT)
        return Sentinel(self.ordered(), sentinel_kwargs=kwargs, **connection_kwargs)

    async def discover(self, timeout: float) -> tuple[str, int]:
        """The master's address as the first sentinel that knows a healthy one reports it
        (redis-py's `sentinel_masters` and `check_master_state`, as its `discover_master`,
        with one short line per sentinel that could not tell). Raises redis-py's
        `MasterNotFoundError` (a ConnectionError) during a failover or when no sentinel
        answers, `AuthenticationError` when a sentinel refused our credentials."""
        manager = self.manager({}, timeout)
        errors: list[str] = []
        refused = False
        try:
            start = self.first[0] % len(self.sentinels)
            for n, sentinel in enumerate(manager.sentinels):  # in `ordered()` order
                index = (start + n) % len(self.sentinels)
                host, port = self.sentinels[index]
                try:
                    masters = await sentinel.sentinel_masters()
                except RedisError as exc:
                    refused = refused or isinstance(exc, AuthenticationError)
                    errors.append(f"{host}:{port}: {exc or type(exc).__name__}")
                    continue
                state = masters.get(self.name) if isinstance(masters, dict) else None
                if state is None:
                    errors.append(f"{host}:{port}: watches no {self.name}")
                elif not manager.check_master_state(state, self.name):
                    errors.append(f"{host}:{port}: {self.name} is down (failing over)")
                else:
                    self.first[0] = index
                    return str(state["ip"]), int(state["port"])
        finally:
            await close_sentinels(manager)
        reasons = "; ".join(errors)
        if refused:
            hint = "" if "password" in self.kwargs else " (the sentinels want sentinel_password)"
            raise AuthenticationError(f"sentinel {reasons}{hint}")
        raise MasterNotFoundError(f"no sentinel gave a master of {self.name}: {reasons}")

    def master_client(
        self,
        connection_class: type[Connection],
        connection_kwargs: Mapping[str, Any],
    ) -> Redis:
        """A redis-py client of the master (`Sentinel.master_for`); closing it also closes
        its connections to the sentinels."""
        kwargs = dict(connection_kwargs)
        kwargs.pop("connection_class", None)
        ssl = issubclass(connection_class, SSLConnection)
        client: Redis = self.manager(kwargs).master_for(
            self.name, redis_class=SentinelClient, ssl=ssl, check_connection=True
        )
        return client


class SentinelClient(Redis):
    """`master_for`'s client, which also closes the sentinel clients it was made with."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        if manager is not None:
            await close_sentinels(manager)


async def close_sentinels(manager: Sentinel) -> None:
    """Close a Sentinel's clients (redis-py before 7 has no `Sentinel.aclose`)."""
    await asyncio.gather(*(s.aclose() for s in manager.sentinels), return_exceptions=True)


async def check_master(conn: Connection, service: SentinelService, timeout: float) -> None:
    """Raise ConnectionError unless the server `conn` reached says it is a master (a
    replica, or a master that was demoted meanwhile, would not reach the other nodes)."""
    await conn.send_command("ROLE", check_health=False)
    reply = await asyncio.wait_for(conn.read_response(), timeout)
    role = reply[0] if isinstance(reply, list) and reply else reply
    if isinstance(role, bytes):
        role = role.decode(errors="replace")
    if role != "master":
        raise ConnectionError(
            f"{conn.host}:{conn.port}, given by the sentinels as the master of "
            f"{service.name}, is a {role}"
        )


__all__ = ["DEFAULT_PORT", "SentinelClient", "SentinelService", "check_master"]
