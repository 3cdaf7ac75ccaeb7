"""roomcast: real-time WebSocket messaging at high connection counts."""

from typing import TYPE_CHECKING, Any

from .broker import Broker, BrokerUnavailable, create_broker
from .broker.memory import MemoryBroker
from .compat import (
    Application,
    ApplicationError,
    Binding,
    LazyWebSocket,
    WebSocketBindingKeys,
    WebSocketComponent,
)
from .connection import Client
from .constants import (
    CloseCode,
    ErrorMessages,
    WebSocketChannels,
    WebSocketClientStates,
    WebSocketDefaults,
    WebSocketEvents,
    WebSocketMessageTypes,
)
from .emitter import WebSocketEmitter
from .http import HttpHandler, HttpRequest, HttpResponse, WebServer
from .protocol import MISSING
from .server import WebSocketServerHelper

if TYPE_CHECKING:
    from .broker.redis import RedisBroker
    from .jwt import JwtAuthenticator
    from .redis import DefaultRedisHelper, RedisClusterHelper, RedisHelper, connection_from_url

__version__ = "0.1.0"

# The Redis names import redis-py, which a memory:// node never needs, and JwtAuthenticator
# imports PyJWT: loaded on first use.
_LAZY = {
    "DefaultRedisHelper": "redis",
    "RedisHelper": "redis",
    "RedisClusterHelper": "redis",
    "connection_from_url": "redis",
    "RedisBroker": "broker.redis",
    # PyJWT is needed only by applications that check tokens with it.
    "JwtAuthenticator": "jwt",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'roomcast' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "MISSING",
    "Application",
    "ApplicationError",
    "Binding",
    "Broker",
    "BrokerUnavailable",
    "Client",
    "CloseCode",
    "DefaultRedisHelper",
    "ErrorMessages",
    "HttpHandler",
    "HttpRequest",
    "HttpResponse",
    "JwtAuthenticator",
    "LazyWebSocket",
    "MemoryBroker",
    "RedisBroker",
    "RedisClusterHelper",
    "RedisHelper",
    "WebServer",
    "WebSocketBindingKeys",
    "WebSocketChannels",
    "WebSocketClientStates",
    "WebSocketComponent",
    "WebSocketDefaults",
    "WebSocketEmitter",
    "WebSocketEvents",
    "WebSocketMessageTypes",
    "WebSocketServerHelper",
    "connection_from_url",
    "create_broker",
]
