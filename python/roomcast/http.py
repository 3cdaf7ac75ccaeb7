"""The listening socket: WebSocket upgrades go to a helper, other requests to an HTTP handler.

The handler is a plain function (picows asks for the answer synchronously); it gets an
`HttpRequest` and returns an `HttpResponse`, or None for 404.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from picows import (
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from .constants import LISTEN_BACKLOG, ErrorMessages

if TYPE_CHECKING:
    from .server import WebSocketServerHelper

logger = logging.getLogger("roomcast")

# picows grows the buffer on demand; a small start keeps idle connections cheap.
READ_BUFFER_INIT_SIZE = 1024


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
    ) -> None:
        self.host = host
        self.port = port
        self.http_handler = http_handler or not_found
        self._routes: dict[str, WebSocketServerHelper] = {}
        self._server: asyncio.Server | None = None

    def route(self, helper: WebSocketServerHelper) -> None:
        """Send upgrade requests for `helper.get_path()` to `helper`."""
        self._routes[helper.get_path()] = helper

    @property
    def bound_port(self) -> int:
        """The port actually bound (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            return self.port
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        max_frame = max((h._max_payload_length for h in self._routes.values()), default=1 << 20)
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
        self._server = await ws_create_server(
            self._listener_factory,
            self.host,
            self.port,
            use_aiofastnet=False,
            enable_auto_ping=False,  # deadlines and pings belong to the Rust timer wheel
            enable_auto_pong=True,
            max_frame_size=max_frame,
            read_buffer_init_size=READ_BUFFER_INIT_SIZE,
            websocket_handshake_timeout=5,
            logger_name="roomcast.picows",
            backlog=backlog,
        )

    async def stop(self) -> None:
        """Stop accepting; connections already open are the helpers' to close."""
        if self._server is not None:
            self._server.close()
            self._server = None

    def _listener_factory(self, request: WSUpgradeRequest) -> Any:
        path, _, query = request.path.decode("latin-1").partition("?")
        headers = request.headers
        helper = self._routes.get(path)
        if helper is not None and "websocket" in headers.get("Upgrade", "").lower():
            try:
                return helper.accept()
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
