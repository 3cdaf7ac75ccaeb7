"""What the client hands the application, and the wire names it speaks (SPEC §1, §10).

The client keeps its own copy of the few wire strings it needs, so it imports nothing from the
server side of the package.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

# Events the client sends or consumes itself.
AUTHENTICATE = "authenticate"
CONNECTED = "connected"
HEARTBEAT = "heartbeat"
JOIN = "join"
LEAVE = "leave"
JOINED = "joined"
ERROR = "error"
ENCRYPTED = "encrypted"
PRESENCE = "presence"

# Life-cycle names for `Client.on` (not wire events, except that they share the names of the
# wire events they stand for).
DISCONNECTED = "disconnected"
GAP = "gap"
LIFECYCLE = frozenset({CONNECTED, DISCONNECTED, JOINED, GAP})

# Error strings the client recognises (SPEC §1, §10, §12).
ALREADY_AUTHENTICATED = "Already authenticated"
PRESENCE_NOT_ALLOWED = "Presence not allowed"
ROOM_LIMIT_REACHED = "Room limit reached"

# Close codes after which reconnecting with the same token cannot help.
AUTHENTICATION_FAILED = 4003
ENCRYPTION_REQUIRED = 4004
REFUSED = frozenset({AUTHENTICATION_FAILED, ENCRYPTION_REQUIRED})


class State(enum.StrEnum):
    """`Client.state`."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Message:
    """A message from the server. `room` and `offset` are set for history rooms' messages;
    `has_data` is False when the server sent no `data` key (then `data` is None)."""

    event: str
    data: Any = None
    room: str | None = None
    offset: int | None = None
    has_data: bool = True


@dataclass(frozen=True, slots=True)
class Position:
    """Where a client is in a history room's stream: the room's `epoch` and the `offset` of
    the last message it has (0 before the first)."""

    epoch: str
    offset: int


@dataclass(frozen=True, slots=True)
class Joined:
    """The server's `joined` answer for a history room, as the client saw it.

    `recovered` is the server's flag: every message after the position the client sent back
    was given again (in order, before this answer). `gap` is True when the client had a
    position in the room and the server could not recover from it: messages may be missing
    and the application must reload the room's state from its own source.
    """

    room: str
    epoch: str
    offset: int
    recovered: bool
    gap: bool
    previous: Position | None = None


@dataclass(frozen=True, slots=True)
class Connected:
    """The server's `connected` answer, for each connection the client makes."""

    id: str
    user_id: str | None
    time: str | None
    url: str
    encrypted: bool
    reconnect: bool  # False for the client's first connection


@dataclass(frozen=True, slots=True)
class Disconnected:
    """A connection that ended: its close code and reason (1006 when the connection broke
    without a close frame), and whether the client will try again."""

    code: int
    reason: str
    url: str
    reconnecting: bool
    error: str | None = field(default=None)  # the last error event before the close


class ClientError(Exception):
    """Base class of the client's errors."""


class ConnectionLost(ClientError):
    """The connection ended before the server answered a request."""


class ClientClosed(ClientError):
    """The client is closed (by `close()`, or after a refusal it cannot get past)."""


class AuthenticationRefused(ClientClosed):
    """The server refused the token (4003) or the encryption (4004) and no new token came
    from `get_token`."""

    def __init__(self, code: int, reason: str, error: str | None) -> None:
        super().__init__(f"connection refused: {code} {reason}" + (f" ({error})" if error else ""))
        self.code = code
        self.reason = reason
        self.error = error


class RequestError(ClientError):
    """An error event that answers a request (`Presence not allowed`, `Room limit reached`)."""
