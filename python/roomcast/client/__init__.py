"""roomcast's Python client (SPEC §14): `Client` connects, authenticates, heartbeats,
reconnects over one or several URLs, rejoins its rooms and recovers history rooms, so that an
application sees each message once and in order, and is told when it cannot be.

Needs the `websockets` package: `pip install 'roomcast[client]'`.
"""

from .client import Client, Member
from .messages import (
    AuthenticationRefused,
    ClientClosed,
    ClientError,
    Connected,
    ConnectionLost,
    Disconnected,
    Joined,
    Message,
    Position,
    RequestError,
    State,
)

__all__ = [
    "AuthenticationRefused",
    "Client",
    "ClientClosed",
    "ClientError",
    "Connected",
    "ConnectionLost",
    "Disconnected",
    "Joined",
    "Member",
    "Message",
    "Position",
    "RequestError",
    "State",
]
