"""The protocol constants (`roomcast.protocol.constants`), under its
documented name `roomcast.constants`."""

from .protocol.constants import (
    EMITTER_SERVER_ID,
    INTERNAL_ROOM_PREFIX,
    LISTEN_BACKLOG,
    ROOM_NAME_MAX_LENGTH,
    SUBSCRIBE_TIMEOUT,
    ClientState,
    CloseCode,
    ErrorMessages,
    WebSocketChannels,
    WebSocketClientStates,
    WebSocketDefaults,
    WebSocketEvents,
    WebSocketMessageTypes,
)

__all__ = [
    "EMITTER_SERVER_ID",
    "INTERNAL_ROOM_PREFIX",
    "LISTEN_BACKLOG",
    "ROOM_NAME_MAX_LENGTH",
    "SUBSCRIBE_TIMEOUT",
    "ClientState",
    "CloseCode",
    "ErrorMessages",
    "WebSocketChannels",
    "WebSocketClientStates",
    "WebSocketDefaults",
    "WebSocketEvents",
    "WebSocketMessageTypes",
]
