"""Redis helpers: `RedisHelper` (one server), `RedisClusterHelper` (Redis Cluster) and
`RedisSentinelHelper` (a master found through Redis Sentinel).

A helper holds connection settings. It gives the application a redis-py asyncio client
(`get_client()`, created on first use, hiredis parser) and gives the WebSocket server and the
emitter brokers (`create_broker()`) that open their own publisher and subscriber connections,
so the application's use of its client is never disturbed by pub/sub.

URLs (`connection_from_url`): `redis://[[user]:password@]host[:port][/db]`, `rediss://...`
(TLS), `redis+cluster://[[user]:password@]host:port[,host:port...]`, `rediss+cluster://`,
`redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]` and
`rediss+sentinel://` (TLS to the master and the sentinels); `valkey` may stand for `redis` in
each (`valkey://`, `valkeys://`, `valkey+cluster://`, `valkey+sentinel://`...). roomcast's own
options may be given as query parameters: `subscribe=interest|pattern`, `sharded=yes|no`
(cluster only), and for Sentinel `sentinel_username=`, `sentinel_password=`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import (
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)

from ..protocol import BrokerUnavailable
from . import INTEREST, RECONNECT, RedisBroker, RedisTarget
from .sentinel import DEFAULT_PORT as SENTINEL_PORT
from .sentinel import SentinelService

logger = logging.getLogger("roomcast.redis")

DEFAULT_READY_TIMEOUT = 30.0
_URL_OPTIONS = ("subscribe", "sharded")
SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class DefaultRedisHelper:
    """What every helper offers; use `RedisHelper` or `RedisClusterHelper`.

    Broker options (keywords of both helpers): `subscribe` ("interest", the default, or
    "pattern", the original's subscriptions), `sharded` (cluster only), `ready_timeout`
    (seconds `configure()` and the server's start wait for Redis, default 30),
    `unsubscribe_delay` (seconds an emptied room or user stays subscribed, default 2),
    `watchdog_interval` (seconds between subscriber probes, default 5; 0 disables),
    `command_timeout` (seconds Redis may take to answer, default 5) and
    `publish_buffer_limit` (bytes queued for Redis before publishes are dropped).
    """

    def __init__(
        self,
        name: str,
        target: RedisTarget,
        *,
        subscribe: str = INTEREST,
        sharded: bool = False,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        unsubscribe_delay: float = 2.0,
        watchdog_interval: float = 5.0,
        command_timeout: float = 5.0,
        publish_buffer_limit: int = 32 * 1024 * 1024,
    ) -> None:
        self.name = name
        self.target = target
        self._options: dict[str, Any] = {
            "subscribe": subscribe,
            "sharded": bool(sharded),
            "ready_timeout": float(ready_timeout),
            "unsubscribe_delay": float(unsubscribe_delay),
            "watchdog_interval": float(watchdog_interval),
            "command_timeout": float(command_timeout),
            "publish_buffer_limit": int(publish_buffer_limit),
        }
        RedisBroker(target, **self._options)  # validates the options now, not at start
        self._client: Any = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.address})"

    @property
    def address(self) -> str:
        """`host:port` (comma-separated for a cluster's seed nodes)."""
        return self.target.describe()

    @property
    def ready_timeout(self) -> float:
        return float(self._options["ready_timeout"])

    @property
    def options(self) -> dict[str, Any]:
        """The broker options (a copy)."""
        return dict(self._options)

    def create_broker(self, *, publisher_only: bool = False) -> RedisBroker:
        """A new broker with its own connections (opened by its `start()`)."""
        return RedisBroker(self.target, publisher_only=publisher_only, **self._options)

    def get_client(self) -> Any:
        """The application's redis-py asyncio client (created on first call)."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    @property
    def client(self) -> Any:
        return self.get_client()

    def _make_client(self) -> Any:
        raise NotImplementedError

    async def _ping_once(self) -> None:
        await self.get_client().ping()

    async def ping(self) -> bool:
        """True if Redis answers PING now."""
        try:
            await asyncio.wait_for(self._ping_once(), self._options["command_timeout"])
        except Exception:
            return False
        return True

    async def configure(self) -> None:
        """Wait until Redis answers (through the application client); raise BrokerUnavailable
        naming the address after `ready_timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        attempt = 0
        while True:
            left = deadline - loop.time()
            try:
                await asyncio.wait_for(self._ping_once(), max(0.01, left))
                logger.info("redis %s ready at %s", self.name, self.address)
                return
            except Exception as exc:
                error = exc
            left = deadline - loop.time()
            if left <= 0:
                raise BrokerUnavailable(
                    f"cannot reach redis at {self.address} within {self.ready_timeout:g} s: "
                    f"{error or type(error).__name__}"
                )
            await asyncio.sleep(min(RECONNECT.delay(attempt), left))
            attempt += 1

    async def close(self) -> None:
        """Close the application client (brokers close with their server or emitter)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


class RedisHelper(DefaultRedisHelper):
    """One Redis server, from a URL or from host/port/password/db/ssl.

    Extra keywords not listed in DefaultRedisHelper go to redis-py's connections (for
    example `ssl_ca_certs`, `socket_keepalive`).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        password: str | None = None,
        username: str | None = None,
        db: int = 0,
        ssl: bool = False,
        name: str = "RedisHelper",
        subscribe: str | None = None,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        unsubscribe_delay: float = 2.0,
        watchdog_interval: float = 5.0,
        command_timeout: float = 5.0,
        publish_buffer_limit: int = 32 * 1024 * 1024,
        **redis_kwargs: Any,
    ) -> None:
        url_options: dict[str, Any] = {}
        if url is not None:
            url, url_options = _own_options(redis_scheme(url))
            kwargs: dict[str, Any] = dict(parse_url(url))
            connection_class = kwargs.pop("connection_class", Connection)
            if connection_class is UnixDomainSocketConnection:
                raise ValueError(f"unix sockets are not supported: {url}")
            if url_options.get("sharded"):
                raise ValueError("sharded pub/sub needs redis+cluster://")
            host = kwargs.pop("host", host)
            port = int(kwargs.pop("port", port))
        else:
            kwargs = {"db": db}
            if password is not None:
                kwargs["password"] = password
            if username is not None:
                kwargs["username"] = username
            connection_class = SSLConnection if ssl else Connection
        kwargs.update(redis_kwargs)
        target = RedisTarget(((host, int(port)),), False, connection_class, kwargs)
        super().__init__(
            name,
            target,
            subscribe=subscribe or url_options.get("subscribe", INTEREST),
            ready_timeout=ready_timeout,
            unsubscribe_delay=unsubscribe_delay,
            watchdog_interval=watchdog_interval,
            command_timeout=command_timeout,
            publish_buffer_limit=publish_buffer_limit,
        )

    def _make_client(self) -> Redis:
        ((host, port),) = self.target.nodes
        pool = ConnectionPool(
            connection_class=self.target.connection_class,
            host=host,
            port=port,
            **self.target.connection_kwargs,
        )
        return Redis.from_pool(pool)


class RedisClusterHelper(DefaultRedisHelper):
    """A Redis Cluster, from a `redis+cluster://h:p,h:p` URL or a list of seed nodes
    (`"host:port"` strings, `(host, port)` tuples or `{"host", "port"}` mappings).

    Classic pub/sub (the default) interoperates with the original; `sharded=True` uses
    SSUBSCRIBE/SPUBLISH, whose traffic does not grow with the cluster, for clusters of
    roomcast nodes only (see the README).
    """

    def __init__(
        self,
        url_or_nodes: str | list[Any] | tuple[Any, ...] | None = None,
        *,
        nodes: list[Any] | None = None,
        password: str | None = None,
        username: str | None = None,
        ssl: bool = False,
        name: str = "RedisClusterHelper",
        subscribe: str | None = None,
        sharded: bool | None = None,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        unsubscribe_delay: float = 2.0,
        watchdog_interval: float = 5.0,
        command_timeout: float = 5.0,
        publish_buffer_limit: int = 32 * 1024 * 1024,
        **redis_kwargs: Any,
    ) -> None:
        url_options: dict[str, Any] = {}
        if isinstance(url_or_nodes, str):
            url, url_options = _own_options(redis_scheme(url_or_nodes))
            seeds, url_user, url_password, ssl_url = _parse_cluster_url(url)
            username = username if username is not None else url_user
            password = password if password is not None else url_password
            ssl = ssl or ssl_url
        else:
            seeds = [_node(n) for n in (nodes if nodes is not None else url_or_nodes or ())]
        if not seeds:
            raise ValueError("a redis cluster needs at least one seed node")
        kwargs: dict[str, Any] = {}
        if password is not None:
            kwargs["password"] = password
        if username is not None:
            kwargs["username"] = username
        kwargs.update(redis_kwargs)
        self._ssl = bool(ssl)
        target = RedisTarget(tuple(seeds), True, SSLConnection if ssl else Connection, kwargs)
        super().__init__(
            name,
            target,
            subscribe=subscribe or url_options.get("subscribe", INTEREST),
            sharded=sharded if sharded is not None else url_options.get("sharded", False),
            ready_timeout=ready_timeout,
            unsubscribe_delay=unsubscribe_delay,
            watchdog_interval=watchdog_interval,
            command_timeout=command_timeout,
            publish_buffer_limit=publish_buffer_limit,
        )

    def _make_client(self) -> RedisCluster:
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self.target.nodes],
            ssl=self._ssl,
            **self.target.connection_kwargs,
        )

    async def _ping_once(self) -> None:
        client = self.get_client()
        await client.initialize()
        await client.ping()


class RedisSentinelHelper(DefaultRedisHelper):
    """The master of a Redis Sentinel service, from a `redis+sentinel://` URL or from
    `sentinels` (`"host:port"` strings, `(host, port)` tuples or `{"host", "port"}`
    mappings; port 26379 when absent) and `service_name`.

    Every connection asks the sentinels where the master is when it opens, so after a
    failover the server, the emitter, history and presence reconnect to the new master.
    `password`/`username`/`db` are the master's; `sentinel_password`/`sentinel_username`
    authenticate to the sentinels (when they have `requirepass`); `ssl` (or
    `rediss+sentinel://`) uses TLS to both, with the same `ssl_*` options. Extra keywords go
    to redis-py's connections to the master.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        sentinels: list[Any] | tuple[Any, ...] | None = None,
        service_name: str | None = None,
        password: str | None = None,
        username: str | None = None,
        db: int | None = None,
        ssl: bool = False,
        sentinel_password: str | None = None,
        sentinel_username: str | None = None,
        name: str = "RedisSentinelHelper",
        subscribe: str | None = None,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        unsubscribe_delay: float = 2.0,
        watchdog_interval: float = 5.0,
        command_timeout: float = 5.0,
        publish_buffer_limit: int = 32 * 1024 * 1024,
        **redis_kwargs: Any,
    ) -> None:
        url_options: dict[str, Any] = {}
        kwargs: dict[str, Any] = {}
        if url is not None:
            url, url_options = _own_options(redis_scheme(url))
            hosts, url_service, kwargs, ssl_url = _parse_sentinel_url(url)
            seeds = hosts if sentinels is None else [_sentinel(n) for n in sentinels]
            service_name = service_name or url_service
            ssl = ssl or ssl_url
        else:
            seeds = [_sentinel(n) for n in sentinels or ()]
        if not seeds:
            raise ValueError("redis sentinel needs at least one sentinel (host:port)")
        if not service_name:
            raise ValueError(
                "redis sentinel needs the service (master) name: "
                "redis+sentinel://host:26379/mymaster"
            )
        if url_options.get("sharded"):
            raise ValueError("sharded pub/sub needs redis+cluster://")
        for key, value in (("password", password), ("username", username), ("db", db)):
            if value is not None:
                kwargs[key] = value
        kwargs.update(redis_kwargs)
        sentinel_password = url_options.get("sentinel_password", sentinel_password)
        sentinel_username = url_options.get("sentinel_username", sentinel_username)
        sentinel_kwargs: dict[str, Any] = {}
        if sentinel_password is not None:
            sentinel_kwargs["password"] = sentinel_password
        if sentinel_username is not None:
            sentinel_kwargs["username"] = sentinel_username
        if ssl:  # one CA (and client certificate) for the whole set-up
            sentinel_kwargs["ssl"] = True
            sentinel_kwargs.update((k, v) for k, v in kwargs.items() if k.startswith("ssl_"))
        service = SentinelService(service_name, tuple(seeds), sentinel_kwargs)
        target = RedisTarget(
            tuple(seeds), False, SSLConnection if ssl else Connection, kwargs, service
        )
        super().__init__(
            name,
            target,
            subscribe=subscribe or url_options.get("subscribe", INTEREST),
            ready_timeout=ready_timeout,
            unsubscribe_delay=unsubscribe_delay,
            watchdog_interval=watchdog_interval,
            command_timeout=command_timeout,
            publish_buffer_limit=publish_buffer_limit,
        )

    @property
    def service(self) -> SentinelService:
        assert self.target.sentinel is not None
        return self.target.sentinel

    def _make_client(self) -> Redis:
        return self.service.master_client(
            self.target.connection_class, self.target.connection_kwargs
        )

    async def master_address(self) -> tuple[str, int]:
        """Where the sentinels say the master is now."""
        return await self.service.discover(self._options["command_timeout"])

    async def _ping_once(self) -> None:
        await self.master_address()  # its errors say which sentinel failed and why
        await self.get_client().ping()


def redis_scheme(url: str) -> str:
    """`url` with a `valkey` scheme (`valkey://`, `valkeys+cluster://`...) spelled `redis`:
    Valkey speaks Redis' protocol, so it is the same connection."""
    scheme, sep, rest = url.partition("://")
    lowered = scheme.lower()
    if sep and lowered.startswith("valkey"):
        return "redis" + lowered[len("valkey") :] + sep + rest
    return url


def connection_from_url(url: str, **options: Any) -> DefaultRedisHelper:
    """A RedisHelper, RedisClusterHelper or RedisSentinelHelper for a `redis://`,
    `rediss://`, `redis+cluster://`, `rediss+cluster://`, `redis+sentinel://` or
    `rediss+sentinel://` URL (or the same with `valkey` for `redis`); `options` as for the
    helpers."""
    spelled = redis_scheme(url)
    if spelled.startswith(("redis+cluster://", "rediss+cluster://")):
        return RedisClusterHelper(url, **options)
    if spelled.startswith(SENTINEL_SCHEMES):
        return RedisSentinelHelper(url, **options)
    if spelled.startswith(("redis://", "rediss://")):
        return RedisHelper(url, **options)
    raise ValueError(
        f"unsupported redis url: {url} (use redis://, rediss://, redis+cluster://, "
        "rediss+cluster://, redis+sentinel:// or rediss+sentinel://; valkey for redis works too)"
    )


# -- URL details ------------------------------------------------------------------------------


def _own_options(url: str) -> tuple[str, dict[str, Any]]:
    """Split roomcast's query parameters off a URL."""
    base, sep, query = url.partition("?")
    if not sep:
        return url, {}
    options: dict[str, Any] = {}
    rest = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "subscribe":
            options["subscribe"] = value
        elif key in ("sentinel_password", "sentinel_username") and "+sentinel://" in base:
            options[key] = value
        elif key == "sharded":
            lowered = value.lower()
            if lowered not in _TRUE + _FALSE:
                raise ValueError(f"sharded must be yes or no, got {value!r}")
            options["sharded"] = lowered in _TRUE
        else:
            rest.append((key, value))
    return (base + "?" + urlencode(rest)) if rest else base, options


def _parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], str | None, str | None, bool]:
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    if query:
        raise ValueError(f"unsupported option in cluster url: {query}")
    rest = rest.rstrip("/")
    if "/" in rest:
        raise ValueError(f"a cluster url has no database path: {url}")
    userinfo, at, hosts = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    seeds = [_node(item) for item in hosts.split(",") if item.strip()]
    return seeds, username, password, scheme == "rediss+cluster"


def _parse_sentinel_url(
    url: str,
) -> tuple[list[tuple[str, int]], str, dict[str, Any], bool]:
    """(sentinels, service name, the master's connection keywords, TLS) of a
    `redis+sentinel://` URL; the keywords as redis-py parses a `redis://` URL (credentials,
    db, query options)."""
    scheme, _, rest = url.partition("://")
    rest, qmark, query = rest.partition("?")
    userinfo, at, rest = rest.rpartition("@")
    hosts, _, path = rest.partition("/")
    service, _, db = path.partition("/")
    db = db.strip("/")
    if "/" in db:
        raise ValueError(f"a sentinel url is .../service[/db]: {url}")
    if db and not db.isdigit():
        raise ValueError(f"the database of a sentinel url is a number: {url}")
    seeds = [_sentinel(item) for item in hosts.split(",") if item.strip()]
    tls = scheme == "rediss+sentinel"
    # The master's settings as redis-py reads them from a one-server URL.
    single = f"{'rediss' if tls else 'redis'}://{userinfo}{at}sentinel/{db}"
    kwargs: dict[str, Any] = dict(parse_url(single + (qmark + query if query else "")))
    for key in ("host", "port", "connection_class"):
        kwargs.pop(key, None)
    return seeds, unquote(service), kwargs, tls


def _sentinel(node: Any) -> tuple[str, int]:
    """A sentinel's address; port 26379 when it names none."""
    if isinstance(node, str) and not node.strip().startswith("[") and ":" not in node:
        return node.strip(), SENTINEL_PORT
    if isinstance(node, str) and node.strip().startswith("[") and "]:" not in node:
        return node.strip()[1:].rstrip("]"), SENTINEL_PORT
    if isinstance(node, dict) and "port" not in node:
        return str(node["host"]), SENTINEL_PORT
    return _node(node)


def _node(node: Any) -> tuple[str, int]:
    if isinstance(node, str):
        text = node.strip()
        if text.startswith("["):  # [ipv6]:port
            host, _, port = text[1:].partition("]")
            port = port.lstrip(":") or "6379"
        else:
            host, colon, port = text.rpartition(":")
            if not colon:
                host, port = text, "6379"
        try:
            return host, int(port)
        except ValueError:
            raise ValueError(f"not a host:port: {node!r}") from None
    if isinstance(node, dict):
        return str(node["host"]), int(node.get("port", 6379))
    host, port = node
    return str(host), int(port)


__all__ = [
    "SENTINEL_SCHEMES",
    "DefaultRedisHelper",
    "RedisClusterHelper",
    "RedisHelper",
    "RedisSentinelHelper",
    "connection_from_url",
    "redis_scheme",
]
