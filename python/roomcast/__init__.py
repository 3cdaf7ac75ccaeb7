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
from .emitter import WebSocketEmitter
from .node.server import WebSocketServerHelper
from .protocol.constants import (
    CloseCode,
    ErrorMessages,
    WebSocketChannels,
    WebSocketClientStates,
    WebSocketDefaults,
    WebSocketEvents,
    WebSocketMessageTypes,
)
from .protocol.messages import MISSING
from .transport.connection import Client
from .transport.http import HttpHandler, HttpRequest, HttpResponse, WebServer

if TYPE_CHECKING:
    from .broker.redis import RedisBroker
    from .broker.redis.helper import (
        DefaultRedisHelper,
        RedisClusterHelper,
        RedisHelper,
        RedisSentinelHelper,
        connection_from_url,
    )
    from .node.jwt import JwtAuthenticator

__version__ = "0.1.0"

# The Redis names import redis-py, which a memory:// node never needs, and JwtAuthenticator
# imports PyJWT: loaded on first use.
_LAZY = {
    "DefaultRedisHelper": "broker.redis.helper",
    "RedisHelper": "broker.redis.helper",
    "RedisClusterHelper": "broker.redis.helper",
    "RedisSentinelHelper": "broker.redis.helper",
    "connection_from_url": "broker.redis.helper",
    "RedisBroker": "broker.redis",
    # PyJWT is needed only by applications that check tokens with it.
    "JwtAuthenticator": "node.jwt",
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
    "RedisSentinelHelper",
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
