"""Inbound messages: from the adapter's `on_message` to the session's action, carried out.

`_on_message` is the hot path: one call per message from `Client.on_ws_frame`, then the
decode, the session's `receive` and the action; messages of a client behind a join barrier
are queued (`roomcast.node.barrier`) and handled in order once it lifts.
"""

from __future__ import annotations

import logging
from typing import Any

from ..log import client_extra, fault
from ..protocol.constants import CloseCode, ErrorMessages, WebSocketEvents
from ..protocol.messages import InvalidMessage, InvalidText, decode
from ..protocol.session import Action
from ..transport.connection import Client
from .base import HelperBase

logger = logging.getLogger("roomcast")

_HEARTBEAT = WebSocketEvents.HEARTBEAT
_PRESENCE = "presence"  # SPEC §10; message_handler keeps it while no room has presence
_HANDLE = Action.HANDLE
_IGNORE = Action.IGNORE
_AUTHENTICATE = Action.AUTHENTICATE
_JOIN = Action.JOIN
_LEAVE = Action.LEAVE
_OPEN_ENCRYPTED = Action.OPEN_ENCRYPTED
_NOT_AUTHENTICATED = Action.NOT_AUTHENTICATED
_ALREADY_AUTHENTICATED = Action.ALREADY_AUTHENTICATED


class Inbound(HelperBase):
    """The helper's inbound path (with `rooms.Rooms` and `auth.Authentication`)."""

    def _on_message(self, client: Client, payload: Any, is_text: bool) -> None:
        self._hub.touch(client.handle)
        if self._rate is not None and self._limits.over_rate(client, len(payload)):
            return  # past the inbound rate limit: dropped (the client was told)
        if self._held and self._barrier.queue_if_held(client, payload, is_text):
            return  # behind a join barrier: handled in order once it is lifted
        # `_handle`, inlined: one Python call less per message.
        try:
            message = decode(payload, is_text)
        except (InvalidMessage, InvalidText) as exc:
            self._invalid(client, exc)
            return
        self._dispatch(client, message)

    def _handle(self, client: Client, payload: Any, is_text: bool) -> None:
        """One inbound message (held behind a barrier until now)."""
        try:
            message = decode(payload, is_text)
        except (InvalidMessage, InvalidText) as exc:
            self._invalid(client, exc)
            return
        self._dispatch(client, message)

    def _invalid(self, client: Client, exc: Exception) -> None:
        self.counters.received["invalid"] += 1
        if isinstance(exc, InvalidMessage):
            self._send_error(client, ErrorMessages.INVALID_FORMAT)
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
            self.counters.count_received(event)
        if event == _HEARTBEAT:
            return  # the most frequent message; what `receive` says of it in every state
        action = client.receive(event, sealed)
        if action is _HANDLE:
            if event == _PRESENCE and self._is_presence is not None:
                self._on_presence(client, message.get("data"))
            elif self.message_handler is not None:
                self._limits.run_handler(client, self.message_handler, message)
        elif action is _IGNORE:
            return
        elif action is _JOIN:
            self._on_join(client, message.get("data"))
        elif action is _LEAVE:
            self._on_leave(client, message.get("data"))
        elif action is _AUTHENTICATE:
            self._hub.set_auth_deadline(client.handle, 3 * self.auth_timeout)
            data = message.get("data")
            self._spawn(self._authenticate(client, data if type(data) is dict else {}))
        elif action is _NOT_AUTHENTICATED:
            self._send_error(client, ErrorMessages.NOT_AUTHENTICATED)
        elif action is _ALREADY_AUTHENTICATED:
            self._send_error(client, ErrorMessages.ALREADY_AUTHENTICATED)
        elif action is _OPEN_ENCRYPTED:
            self._on_encrypted_inbound(client, message)
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

    def _on_encrypted_inbound(self, client: Client, message: dict[str, Any]) -> None:
        """An `encrypted` event from a client: opened and handled as if sent in clear.

        Without a scheme that opens it, it goes to message_handler as is (as in the original),
        so an application with its own scheme can open it there.
        """
        scheme = self.encryption
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
            self._send_error(client, ErrorMessages.INVALID_FORMAT)
            return
        except Exception as exc:  # the scheme's ValueError, or a bug in a custom scheme
            fault(
                "undecryptable message",
                "encrypted event from %s not opened: %s",
                client.id,
                exc,
                extra=client_extra(client),
            )
            self._send_error(client, ErrorMessages.DECRYPTION_FAILED)
            return
        self._dispatch(client, inner, sealed=True)
