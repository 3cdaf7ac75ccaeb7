"""The listening socket: WebSocket upgrades go to a helper, other requests to an HTTP handler.

The handler is a plain function (picows asks for the answer synchronously); it gets an
`HttpRequest` and returns an `HttpResponse`, or None for 404.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Mapping
from functools import partial
from http import HTTPStatus
from ssl import SSLContext
from typing import Any

from picows import (
    WSAutoPingStrategy,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)
from picows.picows import WSProtocol  # type: ignore[attr-defined]

from ..log import PicowsLog, fault
from ..protocol.constants import LISTEN_BACKLOG, ErrorMessages
from .deflate import HEADER as EXTENSIONS_HEADER
from .deflate import negotiate
from .httpapi import API_PREFIX, Api, ApiConnection
from .ports import Route
from .upgrade import FirstBytesGuard, is_handshake, refusal

logger = logging.getLogger("roomcast")

# picows grows the buffer on demand; a small start keeps idle connections cheap.
READ_BUFFER_INIT_SIZE = 1024
# Largest frame picows reads with no WebSocket route yet, and the default time a client has
# to complete its upgrade request (server option `handshake_timeout`).
DEFAULT_MAX_FRAME_SIZE = 1 << 20
DEFAULT_HANDSHAKE_TIMEOUT = 5.0


class UpgradeRefused(Exception):
    """The server cannot take this connection now (answered with HTTP 500)."""


class HttpRequest:
    __slots__ = ("headers", "method", "path", "query")

    def __init__(self, method: str, path: str, query: str, headers: Mapping[str, str]) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers

    def __repr__(self) -> str:
        return f"HttpRequest({self.method} {self.path})"


class HttpResponse:
    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        body: bytes | str = b"",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.headers = dict(headers or {})

    @classmethod
    def json(cls, value: Any, status: int = 200) -> HttpResponse:
        import orjson

        return cls(status, orjson.dumps(value), {"Content-Type": "application/json"})


HttpHandler = Callable[[HttpRequest], HttpResponse | None]


def not_found(request: HttpRequest) -> HttpResponse | None:
    return None


def _to_picows(response: HttpResponse) -> WSUpgradeResponseWithListener:
    if response.status >= 400:
        out = WSUpgradeResponse.create_error_response(
            response.status, response.body, response.headers
        )
    else:
        out = WSUpgradeResponse.create_ok_response(response.body, response.headers)
        out.status = HTTPStatus(response.status)
    return WSUpgradeResponseWithListener(out, None)


_NOT_FOUND = HttpResponse(404, b"404 Not Found")
_UPGRADE_FAILED = HttpResponse(500, ErrorMessages.UPGRADE_FAILED.encode())
_HANDLER_FAILED = HttpResponse(500, b"Internal Server Error")


class WebServer:
    """One listening socket routing WebSocket paths to helpers and the rest to `http_handler`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        http_handler: HttpHandler | None = None,
        *,
        ssl: SSLContext | None = None,
        reuse_port: bool = False,
        api: Api | None = None,
    ) -> None:
        """`api`: the server HTTP API (`roomcast.serving.api`), answering every `/api/`
        path that is not a WebSocket route; `start()` starts it and `stop()` closes it."""
        self.host = host
        self.port = port
        self.http_handler = http_handler or not_found
        self.ssl = ssl  # wss:// and https:// when set
        self.reuse_port = reuse_port  # SO_REUSEPORT: worker processes share one port
        self._routes: dict[str, Route] = {}
        self._server: asyncio.Server | None = None
        self._max_frame_size = DEFAULT_MAX_FRAME_SIZE
        self._handshake_timeout = DEFAULT_HANDSHAKE_TIMEOUT
        self._picows_logger = logging.getLogger("roomcast.picows")
        self.api = api
        self._divert = self._to_api if api is not None else None
        self._api_connections: weakref.WeakSet[ApiConnection] = weakref.WeakSet()

    def route(self, helper: Route) -> None:
        """Send upgrade requests for `helper.get_path()` to `helper`; connections accepted
        from now on read frames up to the largest `max_payload_length` of the routes (before
        or after `start()`)."""
        self._routes[helper.get_path()] = helper
        helpers = self._routes.values()
        self._max_frame_size = max(int(h.server_options["max_payload_length"]) for h in helpers)
        self._handshake_timeout = min(float(h.server_options["handshake_timeout"]) for h in helpers)

    @property
    def bound_port(self) -> int:
        """The port actually bound (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            return self.port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        if self.api is not None:
            await self.api.start()
        backlog = max(
            (int(h.server_options["backlog"]) for h in self._routes.values()),
            default=LISTEN_BACKLOG,
        )
        try:  # the kernel caps it there anyway; `backlog` tells what is in effect
            with open("/proc/sys/net/core/somaxconn") as somaxconn:
                backlog = min(backlog, int(somaxconn.read()))
        except (OSError, ValueError):
            pass  # not Linux
        self.backlog = backlog
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_protocol,
            self.host,
            self.port,
            ssl=self.ssl,
            reuse_port=self.reuse_port or None,
            backlog=backlog,
        )

    def _new_protocol(self) -> asyncio.BufferedProtocol:
        """picows' protocol for one connection (what `ws_create_server` would make, with the
        limits of the routes as they are now), behind the first-bytes guard."""
        log = PicowsLog(self._picows_logger)
        protocol = WSProtocol(
            host_port=None,
            ws_path=None,
            is_client_side=False,
            ws_listener_factory=partial(self._listener_factory, log),
            logger=log,
            disconnect_on_exception=True,
            websocket_handshake_timeout=self._handshake_timeout,
            enable_auto_ping=False,  # deadlines and pings belong to the Rust timer wheel
            auto_ping_idle_timeout=20,
            auto_ping_reply_timeout=20,
            auto_ping_strategy=WSAutoPingStrategy.PING_WHEN_IDLE,
            enable_auto_pong=False,  # `Client` answers pings, after its reserved-bit check
            max_frame_size=self._max_frame_size,
            extra_headers=None,
            read_buffer_init_size=READ_BUFFER_INIT_SIZE,
        )
        return FirstBytesGuard(protocol, self._divert)

    def _to_api(self, head: bytes) -> asyncio.Protocol | None:
        """An `ApiConnection` for a request line whose target is under /api/."""
        start = head.find(b" ") + 1
        if not head.startswith(b"/api", start):
            return None
        target = head[start : head.find(b" ", start)]
        path = target.partition(b"?")[0].decode("latin-1")
        if not (path.startswith(API_PREFIX) or path == API_PREFIX[:-1]) or path in self._routes:
            return None
        assert self.api is not None
        connection = ApiConnection(self.api)
        self._api_connections.add(connection)
        return connection

    async def stop(self) -> None:
        """Stop accepting, and close the API (its info entry leaves Redis); connections
        already open are the helpers' to close."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.api is not None:
            for connection in list(self._api_connections):
                connection.close()
            await self.api.close()

    def _listener_factory(self, log: PicowsLog, request: WSUpgradeRequest) -> Any:
        path, _, query = request.path.decode("latin-1").partition("?")
        headers = request.headers
        helper = self._routes.get(path)
        if helper is not None and is_handshake(headers):
            refused = refusal(headers)
            if refused is not None:
                status, body, extra = refused
                fault("bad handshake", "upgrade refused on %s with %d: %s", path, status, body)
                return _to_picows(HttpResponse(status, body, extra))
            # picows 2.3 then wants exactly "Connection: Upgrade"; RFC 6455 allows a list
            # ("keep-alive, Upgrade", as Firefox sends), which refusal() has accepted.
            headers["Connection"] = "Upgrade"
            agreement = None
            if helper.server_options["per_message_deflate"]:
                agreement = negotiate(headers.getall(EXTENSIONS_HEADER, ()))
            try:
                client = helper.accept(0 if agreement is None else agreement.server_max_window_bits)
                client.log_to(log)  # picows' lines about it carry its id
                if agreement is not None:
                    answer = {EXTENSIONS_HEADER: agreement.response}
                    return WSUpgradeResponseWithListener(
                        WSUpgradeResponse.create_101_response(answer), client
                    )
                return client
            except UpgradeRefused as exc:
                logger.warning("upgrade refused on %s: %s", path, exc)
            except Exception:
                logger.exception("upgrade failed on %s", path)
            return _to_picows(_UPGRADE_FAILED)
        try:
            response = self.http_handler(
                HttpRequest(request.method.decode("latin-1"), path, query, headers)
            )
        except Exception:
            logger.exception("http handler failed for %s", path)
            response = _HANDLER_FAILED
        return _to_picows(response if response is not None else _NOT_FOUND)
