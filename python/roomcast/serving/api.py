"""The server HTTP API (SPEC §13): publish, broadcast, batch, disconnect, presence, history
and info as JSON over HTTP, for backends that cannot speak Redis or the envelope format.

`Api` is the endpoint logic, with no socket: `head()` answers what can be decided from the
request head (404 with no key configured, 401, 405, 413) before any body is read, and
`handle()` answers a whole request. The HTTP/1.1 connection that feeds it is
`roomcast.transport.httpapi`. Every command reaches every node through the broker, as the emitter's:
envelopes carry the serverId `API_SERVER_ID`, which no node owns, so every node, this one
too, delivers what it receives exactly once; messages to history rooms go through the
history script in Redis (numbered and kept, `offset` and `epoch` in the answer).

A disconnect is an envelope of the type `disconnect` (not one of the original's four),
published on `ws:client:<id>` or `ws:user:<id>`, so only the nodes holding that client or
user receive it; the original's nodes ignore types they do not know. Its `data` is
`{"scope": "client"|"user", "code": N, "reason": S}`.

`/api/info` lists the nodes running the API: each writes its figures every `info_interval`
into the Redis hash `ws:nodes` (field: its server id); an entry older than three intervals
is a node that is gone, and is dropped. On the memory broker there is one node.

Nothing answered 400, 401, 404, 405 or 413 touches the broker.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from fnmatch import fnmatchcase
from typing import Any, Protocol

import orjson

from ..broker import Broker, BrokerUnavailable
from ..protocol.constants import (
    API_SERVER_ID,
    DISCONNECT_TYPE,
    WebSocketMessageTypes,
)
from ..transport.httpapi import API_PREFIX, ApiError, Response
from .commands import (
    Publish,
    parse_batch,
    parse_broadcast,
    parse_disconnect,
    parse_history,
    parse_info,
    parse_publish,
    parse_room,
)

logger = logging.getLogger("roomcast")

KEY_HEADER = "X-API-Key"
_KEY_NAME = KEY_HEADER.lower()  # `head` and `handle` take header names in lower case
DEFAULT_BODY_LIMIT = 1 << 20
DEFAULT_TIMEOUT = 5.0
"""Longest the API waits for the broker (or Redis) on one request."""
DEFAULT_INFO_INTERVAL = 5.0
NODES_KEY = "ws:nodes"


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def _unavailable(message: str) -> ApiError:
    return ApiError(503, "unavailable", message)


class ApiNode(Protocol):
    """What the API needs of the node it runs on (`WebSocketServerHelper` is one)."""

    server_id: str

    @property
    def identifier(self) -> str: ...
    @property
    def server_options(self) -> Mapping[str, Any]: ...

    @property
    def broker(self) -> Broker: ...
    def stats(self) -> dict[str, int]: ...
    async def presence(self, room: str) -> list[dict[str, str]]: ...
    async def history(
        self, room: str, since: tuple[str, int] | None = None, limit: int | None = None
    ) -> dict[str, Any]: ...


# -- the API --------------------------------------------------------------------------


Handler = Callable[[Any], Awaitable[Any]]


class Api:
    """The endpoints for one node. `key` None: the API is off and every `/api/` path is 404.

    Call `start()` in the running loop before serving (it starts the info refresh when the
    broker is Redis) and `close()` at the end.
    """

    def __init__(
        self,
        node: ApiNode,
        key: str | None,
        *,
        body_limit: int = DEFAULT_BODY_LIMIT,
        timeout: float = DEFAULT_TIMEOUT,
        info_interval: float = DEFAULT_INFO_INTERVAL,
    ) -> None:
        if key is not None and not key:
            raise ValueError("the API key must not be empty")
        if body_limit < 1 or timeout <= 0 or info_interval <= 0:
            raise ValueError(
                f"body_limit, timeout and info_interval must be positive: "
                f"{body_limit}, {timeout}, {info_interval}"
            )
        self.node = node
        self._key = key.encode() if key is not None else None
        self.body_limit = body_limit
        self.timeout = timeout
        self.info_interval = info_interval
        options = node.server_options
        self._history_glob: str | None = options.get("history_rooms")
        self._presence_glob: str | None = options.get("presence_rooms")
        self._history: Any = None  # RedisHistory, when history rooms live in redis
        self._redis: Any = None  # the info hash's client
        self._info_task: asyncio.Task[None] | None = None
        self._running = False
        self._started = time.time()
        self.requests = 0
        self._routes: dict[str, tuple[tuple[str, ...], Handler]] = {
            "/api/publish": (("POST",), self._publish),
            "/api/broadcast": (("POST",), self._broadcast),
            "/api/batch": (("POST",), self._batch),
            "/api/disconnect": (("POST",), self._disconnect),
            "/api/presence": (("POST",), self._presence),
            "/api/history": (("POST",), self._read_history),
            "/api/info": (("GET", "POST"), self._info),
        }

    @property
    def enabled(self) -> bool:
        return self._key is not None

    async def start(self) -> None:
        """Idempotent (`WebServer.start` calls it)."""
        if not self.enabled or self._running:
            return
        self._running = True
        from ..broker.redis import RedisBroker

        broker = self.node.broker
        if not isinstance(broker, RedisBroker):
            return
        from ..broker.redis.history import RedisHistory, client_for

        options = self.node.server_options
        if self._history_glob is not None and not broker.sharded:
            self._history = RedisHistory(
                broker.target,
                int(options["history_size"]),
                float(options["history_ttl"]),
                timeout=float(options["history_timeout"]),
            )
        self._redis = client_for(broker.target)
        self._info_task = asyncio.get_running_loop().create_task(self._report())

    async def close(self) -> None:
        from ..aio import stop_task

        self._running = False
        task, self._info_task = self._info_task, None
        await stop_task(task)
        redis, self._redis = self._redis, None
        if redis is not None:
            try:
                await asyncio.wait_for(redis.hdel(NODES_KEY, self.node.server_id), self.timeout)
            except Exception as exc:
                logger.warning("api: node not removed from %s: %s", NODES_KEY, exc)
            await redis.aclose()
        history, self._history = self._history, None
        if history is not None:
            await history.close()

    # -- requests ------------------------------------------------------------------------

    def head(
        self, method: str, path: str, headers: Mapping[str, str], length: int | None
    ) -> Response | None:
        """The answer a request gets from its head alone (`headers` by lower-case name;
        `length`: its Content-Length, None when unknown); None when its body is needed."""
        try:
            self._check_head(method, path, headers, length)
        except ApiError as error:
            return error.response()
        return None

    def _check_head(
        self, method: str, path: str, headers: Mapping[str, str], length: int | None
    ) -> Handler:
        route = self._routes.get(path)
        if route is None or self._key is None:
            raise ApiError(404, "not_found", f"no such endpoint: {path}")
        given = headers.get(_KEY_NAME)
        if given is None:
            raise ApiError(401, "unauthorized", f"missing {KEY_HEADER} header")
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self._key):
            raise ApiError(401, "unauthorized", "wrong API key")
        methods, handler = route
        if method not in methods:
            allow = ", ".join(methods)
            raise ApiError(
                405, "method_not_allowed", f"{path} takes {allow}, not {method}", allow=allow
            )
        if length is not None and length > self.body_limit:
            raise self.too_large()
        return handler

    def too_large(self) -> ApiError:
        return ApiError(413, "too_large", f"body larger than {self.body_limit} bytes")

    async def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Response:
        """The answer to one whole request."""
        try:
            handler = self._check_head(method, path, headers, len(body))
            if not body.strip():
                parsed: Any = {} if path == "/api/info" else None
                if parsed is None:
                    raise ApiError(400, "bad_json", "the body must be a JSON object")
            else:
                try:
                    parsed = orjson.loads(body)
                except orjson.JSONDecodeError as exc:
                    raise ApiError(400, "bad_json", f"the body is not JSON: {exc}") from None
            self.requests += 1
            result = await handler(parsed)
        except ApiError as error:
            return error.response()
        return Response(200, orjson.dumps(result))

    # -- endpoints -----------------------------------------------------------------------

    async def _publish(self, body: Any) -> Any:
        command = parse_publish(body)
        self._ready()
        return await self._bounded(self._send(command))

    async def _broadcast(self, body: Any) -> Any:
        command = parse_broadcast(body)
        self._ready()
        return await self._bounded(self._send(command))

    async def _batch(self, body: Any) -> Any:
        commands = parse_batch(body)
        self._ready()
        return {"results": await self._bounded(self._send_all(commands))}

    async def _disconnect(self, body: Any) -> Any:
        command = parse_disconnect(body)
        self._ready()
        subscribers = await self._bounded(
            self.node.broker.publish_wait(command.channel, command.envelope())
        )
        return {"subscribers": subscribers}

    async def _presence(self, body: Any) -> Any:
        room = parse_room(body)
        glob = self._presence_glob
        if glob is None or not fnmatchcase(room, glob):
            raise _bad(f"not a presence room: {room}")
        self._ready()
        clients = await self._bounded(self.node.presence(room))
        return {"room": room, "clients": clients}

    async def _read_history(self, body: Any) -> Any:
        room, since, limit = parse_history(body)
        glob = self._history_glob
        if glob is None or not fnmatchcase(room, glob):
            raise _bad(f"not a history room: {room}")
        self._ready()
        return await self._bounded(self.node.history(room, since, limit))

    async def _info(self, body: Any) -> Any:
        parse_info(body)
        own = self._own_info()
        nodes = [own]
        redis = self._redis
        if redis is not None:
            self._ready()
            nodes = await self._bounded(self._nodes(own))
        return {
            "nodes": nodes,
            "connections": sum(n["connections"] for n in nodes),
            "authenticated": sum(n["authenticated"] for n in nodes),
        }

    # -- publishing ----------------------------------------------------------------------

    def _ready(self) -> None:
        broker = self.node.broker
        if not broker.connected:
            raise _unavailable(f"the broker is {broker.state}")

    async def _bounded(self, work: Awaitable[Any]) -> Any:
        try:
            async with asyncio.timeout(self.timeout):  # (no task of its own, unlike wait_for)
                return await work
        except TimeoutError:
            raise _unavailable(f"the broker did not answer within {self.timeout:g} s") from None
        except BrokerUnavailable as exc:
            raise _unavailable(str(exc)) from None
        except ApiError:
            raise
        except (ConnectionError, OSError) as exc:
            raise _unavailable(f"redis is unavailable: {exc}") from None
        except Exception as exc:
            from redis.exceptions import RedisError

            if isinstance(exc, RedisError):
                raise _unavailable(f"redis is unavailable: {exc}") from None
            raise

    def _numbered(self, command: Publish) -> bool:
        """Whether a command goes through the room's history script."""
        glob = self._history_glob
        return (
            self._history is not None
            and command.type == WebSocketMessageTypes.ROOM
            and glob is not None
            and fnmatchcase(command.target or "", glob)
        )

    async def _send(self, command: Publish) -> dict[str, Any]:
        if self._numbered(command):
            epoch, offset, subscribers = await self._history.append(
                command.target, command.channel, command.envelope()
            )
            return {"subscribers": subscribers, "epoch": epoch, "offset": offset}
        return {
            "subscribers": await self.node.broker.publish_wait(command.channel, command.envelope())
        }

    async def _send_all(self, commands: list[Publish]) -> list[dict[str, Any]]:
        """In order: consecutive commands on one path (the broker's publisher, or the
        history writer) go out together, pipelined; the next run starts once Redis has
        answered the last, so Redis runs them in the order given."""
        results: list[dict[str, Any]] = []
        start = 0
        while start < len(commands):
            numbered = self._numbered(commands[start])
            end = start + 1
            while end < len(commands) and self._numbered(commands[end]) == numbered:
                end += 1
            run = commands[start:end]
            if numbered:
                # Tasks created in order run their first step in order: each queues its
                # append before the history writer (woken by the first) sends them together.
                results += await asyncio.gather(*(self._send(c) for c in run))
            else:
                counts = await self.node.broker.publish_many_wait(
                    [(c.channel, c.envelope()) for c in run]
                )
                results += [{"subscribers": n} for n in counts]
            start = end
        return results

    # -- info ----------------------------------------------------------------------------

    def _own_info(self) -> dict[str, Any]:
        stats = self.node.stats()
        return {
            "id": self.node.server_id,
            "name": self.node.identifier,
            "connections": stats.get("connections", 0),
            "authenticated": stats.get("authenticated", 0),
            "users": stats.get("users", 0),
            "rooms": stats.get("rooms", 0),
            "uptime": round(time.time() - self._started, 3),
            "updatedAt": int(time.time() * 1000),
        }

    async def _nodes(self, own: dict[str, Any]) -> list[dict[str, Any]]:
        redis = self._redis
        entries = await redis.hgetall(NODES_KEY)
        now = int(time.time() * 1000)
        stale_after = int(self.info_interval * 3000)
        nodes = [own]
        stale: list[Any] = []
        for field, raw in entries.items():
            try:
                node = orjson.loads(raw)
            except orjson.JSONDecodeError:
                stale.append(field)
                continue
            if type(node) is not dict or node.get("id") == own["id"]:
                continue
            if now - int(node.get("updatedAt", 0)) > stale_after:
                stale.append(field)
                continue
            nodes.append(node)
        if stale:
            await redis.hdel(NODES_KEY, *stale)
        nodes.sort(key=lambda n: str(n.get("id")))
        return nodes

    async def _report(self) -> None:
        """This node's figures into the nodes hash, every interval, until closed."""
        redis = self._redis
        ttl = int(self.info_interval * 3000)
        while True:
            try:
                own = self._own_info()
                async with redis.pipeline(transaction=False) as pipe:
                    pipe.hset(NODES_KEY, own["id"], orjson.dumps(own))
                    pipe.pexpire(NODES_KEY, ttl)
                    await asyncio.wait_for(pipe.execute(), self.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # redis away: the next round tries again
                logger.warning("api: node info not written to redis: %s", exc)
            await asyncio.sleep(self.info_interval)


__all__ = [
    "API_PREFIX",
    "API_SERVER_ID",
    "DEFAULT_BODY_LIMIT",
    "DISCONNECT_TYPE",
    "KEY_HEADER",
    "Api",
    "ApiError",
    "ApiNode",
    "Response",
]
