"""The listening socket and HTTP handlers (`roomcast.transport.http`), under its
documented name `roomcast.http`."""

from .transport.http import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_FRAME_SIZE,
    READ_BUFFER_INIT_SIZE,
    HttpHandler,
    HttpRequest,
    HttpResponse,
    UpgradeRefused,
    WebServer,
    not_found,
)

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_MAX_FRAME_SIZE",
    "READ_BUFFER_INIT_SIZE",
    "HttpHandler",
    "HttpRequest",
    "HttpResponse",
    "UpgradeRefused",
    "WebServer",
    "not_found",
]
