"""Re-exports `roomcast.compat.component` (the WebSocketComponent) under its old name."""

from .compat.component import (
    DEFAULT_SERVER_OPTIONS,
    LazyWebSocket,
    WebSocketBindingKeys,
    WebSocketComponent,
    unsupported_runtime,
)

__all__ = [
    "DEFAULT_SERVER_OPTIONS",
    "LazyWebSocket",
    "WebSocketBindingKeys",
    "WebSocketComponent",
    "unsupported_runtime",
]
