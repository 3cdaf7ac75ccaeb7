"""The WebSocketServerHelper (`roomcast.node.server`), under its
documented name `roomcast.server`."""

from .node.server import (
    EncryptionScheme,
    WebSocketServerHelper,
    resolve_server_options,
)

__all__ = [
    "EncryptionScheme",
    "WebSocketServerHelper",
    "resolve_server_options",
]
