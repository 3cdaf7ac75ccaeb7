"""The session: one connection's protocol state machine, with no I/O.

A `Session` takes decoded events (and the outcomes of the application's callbacks) and
returns what to do as an `Action`; the helper (`roomcast.server`) carries the actions out
on the socket, the hub and the broker. Nothing here touches a socket, a loop or the hub,
so `tests/protocol/test_session.py` drives it with plain calls.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .constants import ClientState, WebSocketEvents

# Where a connection is; its members are `WebSocketClientStates`' (equal to the strings).
State = ClientState


class Action(enum.Enum):
    """What the helper does with one inbound event."""

    IGNORE = enum.auto()  # heartbeat: only the activity time counts
    DROP_NO_EVENT = enum.auto()  # no (string) event: dropped, logged at DEBUG
    AUTHENTICATE = enum.auto()  # start authentication (the session is AUTHENTICATING now)
    ALREADY_AUTHENTICATED = enum.auto()  # send that error
    NOT_AUTHENTICATED = enum.auto()  # send that error
    JOIN = enum.auto()
    LEAVE = enum.auto()
    DROP_SERVER_EVENT = enum.auto()  # an event only the server sends
    OPEN_ENCRYPTED = enum.auto()  # open the `encrypted` event and handle what it holds
    DROP_NESTED = enum.auto()  # an `encrypted` event inside an `encrypted` event
    HANDLE = enum.auto()  # the application's message_handler


class Verdict(enum.Enum):
    """What the helper does with the outcome of authenticate_fn or handshake_fn."""

    REFUSE = enum.auto()  # send the error, close (4001 for authentication, 4004 handshake)
    GONE = enum.auto()  # the client left meanwhile: nothing to send
    ACCEPT = enum.auto()


_HEARTBEAT = WebSocketEvents.HEARTBEAT
_AUTHENTICATE = WebSocketEvents.AUTHENTICATE
_JOIN = WebSocketEvents.JOIN
_LEAVE = WebSocketEvents.LEAVE
_ENCRYPTED = WebSocketEvents.ENCRYPTED
# Server-to-client events a client may not send; dropped, never handed to message_handler.
SERVER_ONLY = frozenset(
    {WebSocketEvents.CONNECTED, WebSocketEvents.ERROR, WebSocketEvents.DISCONNECT}
)

_UNAUTHORIZED = State.UNAUTHORIZED
_AUTHENTICATING = State.AUTHENTICATING
_AUTHENTICATED = State.AUTHENTICATED
_DISCONNECTED = State.DISCONNECTED


def refused(result: Any) -> bool:
    """None, False (and other falsy non-mappings) refuse; any mapping, even `{}`, accepts."""
    return result is None or result is False or (not result and not isinstance(result, Mapping))


# The attributes a session keeps; a class using `SessionMachine` declares them as slots.
SESSION_SLOTS = (
    "closing",
    "encrypted",
    "id",
    "metadata",
    "salt",
    "server_public_key",
    "state",
    "user_id",
)


class SessionMachine:
    """One connection's state machine over what Python needs and the hub does not hold (the
    hub keeps rooms, users, deadlines, activity and backpressure). A mixin without storage:
    `Session` is it on its own, `roomcast.transport.connection.Client` is it plus the socket.
    `closing` is set once a close frame is on its way: from then on no outcome is acted on."""

    if TYPE_CHECKING:  # the attributes, for the type checker; storage is the subclass's
        __slots__ = SESSION_SLOTS
    else:
        __slots__ = ()

    id: str
    state: State
    user_id: str | None
    metadata: dict[str, Any] | None
    encrypted: bool
    server_public_key: str | None
    salt: str | None
    closing: bool

    def start_session(self, client_id: str) -> None:
        self.id = client_id
        self.state = _UNAUTHORIZED
        self.user_id: str | None = None
        self.metadata: dict[str, Any] | None = None
        self.encrypted = False
        self.server_public_key: str | None = None
        self.salt: str | None = None
        self.closing = False

    @property
    def live(self) -> bool:
        """Authenticated and not closing: deliveries and joins apply."""
        return self.state is _AUTHENTICATED and not self.closing

    def receive(self, event: Any, sealed: bool = False) -> Action:
        """The action for one decoded event (`sealed`: it came inside an `encrypted` one).
        An `authenticate` moves the session to AUTHENTICATING at once, so a second one in
        the same read already sees it."""
        if type(event) is not str or not event:
            return Action.DROP_NO_EVENT
        if event == _HEARTBEAT:
            return Action.IGNORE
        state = self.state
        if event == _AUTHENTICATE:
            if state is not _UNAUTHORIZED:
                return Action.ALREADY_AUTHENTICATED
            self.state = _AUTHENTICATING
            return Action.AUTHENTICATE
        if state is not _AUTHENTICATED:
            return Action.NOT_AUTHENTICATED
        if event == _JOIN:
            return Action.JOIN
        if event == _LEAVE:
            return Action.LEAVE
        if event in SERVER_ONLY:
            return Action.DROP_SERVER_EVENT
        if event == _ENCRYPTED:
            return Action.DROP_NESTED if sealed else Action.OPEN_ENCRYPTED
        return Action.HANDLE

    @property
    def authenticating(self) -> bool:
        """Still waiting for authentication (or the handshake) and not closing."""
        return self.state is _AUTHENTICATING and not self.closing

    def authenticated(self, result: Any) -> Verdict:
        """authenticate_fn's result: the user id and metadata are taken from a mapping."""
        if not self.authenticating:
            return Verdict.GONE
        if refused(result):
            return Verdict.REFUSE
        if not isinstance(result, Mapping):
            result = {}
        user_id = result.get("user_id", result.get("userId"))
        self.user_id = None if user_id is None else str(user_id)
        metadata = result.get("metadata")
        self.metadata = dict(metadata) if isinstance(metadata, Mapping) else None
        return Verdict.ACCEPT

    def wants_handshake(self, required: bool, available: bool, data: Mapping[str, Any]) -> bool:
        """Whether authentication continues with the encryption handshake."""
        return required or (available and data.get("publicKey") is not None)

    def handshaken(self, outcome: Any) -> Verdict:
        """handshake_fn's outcome: a mapping accepts (with the key material to send)."""
        if not self.authenticating:
            return Verdict.GONE
        if refused(outcome) or not isinstance(outcome, Mapping):
            return Verdict.REFUSE
        self.server_public_key = outcome.get("server_public_key", outcome.get("serverPublicKey"))
        self.salt = outcome.get("salt")
        return Verdict.ACCEPT

    def logged_in(self) -> bool:
        """Subscriptions settled: AUTHENTICATED, unless the client left meanwhile."""
        if not self.authenticating:
            return False
        self.state = _AUTHENTICATED
        return True

    def connected_data(self, now: str) -> dict[str, Any]:
        """The `connected` event's data (key material in clear: the client derives its key
        from it)."""
        connected: dict[str, Any] = {"id": self.id}
        if self.user_id is not None:
            connected["userId"] = self.user_id
        connected["time"] = now
        if self.encrypted:
            if self.server_public_key is not None:
                connected["serverPublicKey"] = self.server_public_key
            if self.salt is not None:
                connected["salt"] = self.salt
        return connected

    def disconnected(self) -> bool | None:
        """The connection is gone: None if it already was, else whether it had logged in
        (client_disconnected_fn is called only then)."""
        state = self.state
        if state is _DISCONNECTED:
            return None
        self.state = _DISCONNECTED
        return state is _AUTHENTICATED

    def seals_errors(self) -> bool:
        """Error events are sealed once the client holds its key (it got `connected`)."""
        return self.encrypted and self.state is _AUTHENTICATED


class Session(SessionMachine):
    """A session with no connection behind it (for tests and tools)."""

    __slots__ = SESSION_SLOTS

    def __init__(self, client_id: str) -> None:
        self.start_session(client_id)
