"""Inbound messages: from the adapter's `on_message` to the session's action, carried out.

`on_message` is the hot path: one call per message from `Client.on_ws_frame`, then the
decode, the session's `receive` and the action; messages of a client behind a join barrier
are queued (`JoinBarrier.queue_if_held`) and handled in order once it lifts.
"""

from __future__ import annotations

import logging
from typing import Any

from .._core import Hub
from ..encryption.scheme import EncryptionScheme
from ..log import client_extra, fault
from ..protocol.constants import CloseCode, ErrorMessages, WebSocketEvents
from ..protocol.counters import Counters
from ..protocol.messages import InvalidMessage, InvalidText, decode
from ..protocol.session import Action
from ..transport.connection import Client
from .auth import Authentication
from .barrier import JoinBarrier
from .limits import Limits
from .presence import Presence
from .rooms import Rooms
from .sender import Sender
from .tasks import Callback, Tasks

logger = logging.getLogger("roomcast")

_HEARTBEAT = WebSocketEvents.HEARTBEAT
# The canonical heartbeat (what roomcast's clients, the original's and the load generators
# send: JSON.stringify's and orjson's spelling), recognised by its bytes without decoding it.
# Any other spelling of a heartbeat goes through the decoder and means the same.
_HEARTBEAT_BYTES = b'{"event":"heartbeat"}'
_HEARTBEAT_LEN = len(_HEARTBEAT_BYTES)
_PRESENCE = "presence"  # SPEC §10; message_handler keeps it while no room has presence
_HANDLE = Action.HANDLE
_IGNORE = Action.IGNORE
_AUTHENTICATE = Action.AUTHENTICATE
_JOIN = Action.JOIN
_LEAVE = Action.LEAVE
_OPEN_ENCRYPTED = Action.OPEN_ENCRYPTED
_NOT_AUTHENTICATED = Action.NOT_AUTHENTICATED
_ALREADY_AUTHENTICATED = Action.ALREADY_AUTHENTICATED


class Inbound:
    """The inbound path of one helper: `on_message` for each message, `handle` for one
    held behind a barrier until now. `message_handler` gets the application's events."""

    def __init__(
        self,
        hub: Hub,
        barrier: JoinBarrier,
        sender: Sender,
        rooms: Rooms,
        auth: Authentication,
        presence: Presence,
        tasks: Tasks,
        counters: Counters,
        scheme: EncryptionScheme | None,
        auth_timeout: float,
        message_handler: Callback | None,
        limits: Limits,
    ) -> None:
        self._hub = hub
        self._barrier = barrier
        # Who waits behind a barrier (the barrier's), tested before each message.
        self._held = barrier.held
        self._sender = sender
        self._rooms = rooms
        self._auth = auth
        self._presence = presence
        self._tasks = tasks
        self._counters = counters
        self._received = counters.received
        self._scheme = scheme
        self._auth_timeout = auth_timeout
        self.message_handler = message_handler
        self._limits = limits
        # The inbound rate limit's settings: None when off (nothing counted per message).
        self._rate = limits.rate

    def on_message(self, client: Client, payload: Any, is_text: bool) -> None:
        self._hub.touch(client.handle)
        if self._rate is not None and self._limits.over_rate(client, len(payload)):
            return  # past the inbound rate limit: dropped (the client was told)
        if self._held and self._barrier.queue_if_held(client, payload, is_text):
            return  # behind a join barrier: handled in order once it is lifted
        if len(payload) == _HEARTBEAT_LEN and payload == _HEARTBEAT_BYTES:
            # The most frequent message: valid UTF-8 and JSON, and what `_dispatch` does
            # with any heartbeat (count it; the activity time is touched above).
            self._received[_HEARTBEAT] += 1
            return
        # `handle`, inlined: one Python call less per message.
        try:
            message = decode(payload, is_text)
        except (InvalidMessage, InvalidText) as exc:
            self._invalid(client, exc)
            return
        self._dispatch(client, message)

    def handle(self, client: Client, payload: Any, is_text: bool) -> None:
        """One inbound message (held behind a barrier until now)."""
        try:
            message = decode(payload, is_text)
        except (InvalidMessage, InvalidText) as exc:
            self._invalid(client, exc)
            return
        self._dispatch(client, message)

    def _invalid(self, client: Client, exc: Exception) -> None:
        self._counters.received["invalid"] += 1
        if isinstance(exc, InvalidMessage):
            self._sender.error(client, ErrorMessages.INVALID_FORMAT)
            return
        fault(
            "invalid utf-8",
            "closing %s: text message is not valid UTF-8",
            client.id,
            extra=client_extra(client),
        )
        client.close(CloseCode.INVALID_TEXT, CloseCode.REASONS[CloseCode.INVALID_TEXT])

    def _dispatch(self, client: Client, message: dict[str, Any], sealed: bool = False) -> None:
        """Carry out the session's action for one decoded message; `sealed` when it came
        inside an `encrypted` event."""
        event = message.get("event")
        if not sealed:
            self._counters.count_received(event)
        if event == _HEARTBEAT:
            return  # the most frequent message; what `receive` says of it in every state
        action = client.receive(event, sealed)
        if action is _HANDLE:
            if event == _PRESENCE and self._presence.is_presence is not None:
                self._presence.on_request(client, message.get("data"))
            elif self.message_handler is not None:
                # At most max_handler_tasks_per_client of its tasks in flight per client.
                self._limits.run_handler(client, self.message_handler, message)
        elif action is _IGNORE:
            return
        elif action is _JOIN:
            self._rooms.on_join(client, message.get("data"))
        elif action is _LEAVE:
            self._rooms.on_leave(client, message.get("data"))
        elif action is _AUTHENTICATE:
            self._hub.set_auth_deadline(client.handle, 3 * self._auth_timeout)
            data = message.get("data")
            self._tasks.spawn(self._auth.authenticate(client, data if type(data) is dict else {}))
        elif action is _NOT_AUTHENTICATED:
            self._sender.error(client, ErrorMessages.NOT_AUTHENTICATED)
        elif action is _ALREADY_AUTHENTICATED:
            self._sender.error(client, ErrorMessages.ALREADY_AUTHENTICATED)
        elif action is _OPEN_ENCRYPTED:
            self._on_encrypted(client, message)
        elif action is Action.DROP_NO_EVENT:
            logger.debug(
                "message without event from %s dropped", client.id, extra=client_extra(client)
            )
        elif action is Action.DROP_SERVER_EVENT:
            logger.debug("server event %r from %s dropped", event, client.id)
        else:  # Action.DROP_NESTED
            logger.debug(
                "nested encrypted event from %s dropped", client.id, extra=client_extra(client)
            )

    def _to_message_handler(self, client: Client, message: dict[str, Any]) -> None:
        if self.message_handler is not None:
            self._limits.run_handler(client, self.message_handler, message)

    def _on_encrypted(self, client: Client, message: dict[str, Any]) -> None:
        """An `encrypted` event from a client: opened and handled as if sent in clear.

        Without a scheme that opens it, it goes to message_handler as is (as in the original),
        so an application with its own scheme can open it there.
        """
        scheme = self._scheme
        if scheme is None:
            self._to_message_handler(client, message)
            return
        try:
            plaintext = scheme.open_inbound(client.id, message.get("data"))
            inner = decode(plaintext, False)
        except InvalidMessage:
            fault(
                "undecryptable message",
                "encrypted event from %s holds no JSON object",
                client.id,
                extra=client_extra(client),
            )
            self._sender.error(client, ErrorMessages.INVALID_FORMAT)
            return
        except Exception as exc:  # the scheme's ValueError, or a bug in a custom scheme
            fault(
                "undecryptable message",
                "encrypted event from %s not opened: %s",
                client.id,
                exc,
                extra=client_extra(client),
            )
            self._sender.error(client, ErrorMessages.DECRYPTION_FAILED)
            return
        self._dispatch(client, inner, sealed=True)
