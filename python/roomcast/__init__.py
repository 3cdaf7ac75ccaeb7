"""roomcast: real-time WebSocket messaging at high connection counts."""

from .broker import Broker, create_broker
from .broker.memory import MemoryBroker
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
from .http import HttpHandler, HttpRequest, HttpResponse, WebServer
from .protocol import MISSING
from .server import WebSocketServerHelper

__version__ = "0.1.0"

__all__ = [
    "MISSING",
    "Broker",
    "Client",
    "CloseCode",
    "ErrorMessages",
    "HttpHandler",
    "HttpRequest",
    "HttpResponse",
    "MemoryBroker",
    "WebServer",
    "WebSocketChannels",
    "WebSocketClientStates",
    "WebSocketDefaults",
    "WebSocketEvents",
    "WebSocketMessageTypes",
    "WebSocketServerHelper",
    "create_broker",
]
