"""The Ignis compatibility names: the application layer (`Application`, `Binding`), the
component (`WebSocketComponent`, `LazyWebSocket`, `WebSocketBindingKeys`) and the original's
camelCase option names (`ALIASES`, from `roomcast.config`). Re-exported by `roomcast`."""

from ..config import ALIASES
from .app import Application, ApplicationError, Binding
from .component import (
    DEFAULT_SERVER_OPTIONS,
    LazyWebSocket,
    WebSocketBindingKeys,
    WebSocketComponent,
)

__all__ = [
    "ALIASES",
    "DEFAULT_SERVER_OPTIONS",
    "Application",
    "ApplicationError",
    "Binding",
    "LazyWebSocket",
    "WebSocketBindingKeys",
    "WebSocketComponent",
]
