"""Delivery: to local clients (the `Sender`, or the history room's numbering), and to the
other nodes through the broker.

`send` delivers locally and publishes an envelope; `on_envelope` delivers an envelope from
another node locally.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from ..broker.protocol import Broker
from ..protocol.constants import DISCONNECT_TYPE, WebSocketChannels, WebSocketMessageTypes
from ..protocol.messages import decode_envelope, disconnect_of, encode_envelope
from ..transport.connection import Client
from .history import History
from .sender import Sender

logger = logging.getLogger("roomcast")

_BROADCAST = WebSocketMessageTypes.BROADCAST
_ROOM = WebSocketMessageTypes.ROOM
_CLIENT = WebSocketMessageTypes.CLIENT
_USER = WebSocketMessageTypes.USER


class Delivery:
    """Where a helper's messages go: `to_client`, `to_user`, `to_room`, `to_everyone` (local),
    `send` (local and published), `on_envelope` (from the broker); `disconnect` (local, or
    from a disconnect envelope: ours, which the original's nodes drop as an unknown type)."""

    def __init__(
        self,
        sender: Sender,
        history: History,
        broker: Broker,
        clients: Mapping[str, Client],
        server_id: str,
        has_room: Callable[[str], bool],
        user_members: Callable[[str], list[str]],
    ) -> None:
        self._sender = sender
        self._history = history
        self._broker = broker
        self._clients = clients
        self._server_id = server_id
        self._has_room = has_room
        self._user_members = user_members

    # -- local delivery ------------------------------------------------------------------

    def to_client(self, client_id: str, event: str, data: Any) -> int:
        return self._sender.client(self._clients.get(client_id), event, data)

    def to_user(self, user_id: str, event: str, data: Any) -> int:
        return self._sender.user(user_id, event, data)

    def to_room(self, room: str, event: str, data: Any, exclude: list[str] | None) -> int:
        """A message to a history room is numbered and kept first (SPEC §10)."""
        is_history = self._history.is_history
        if is_history is not None and is_history(room):
            return self._history.send(room, event, data, exclude)
        return self._sender.room(room, event, data, exclude)

    def to_everyone(self, event: str, data: Any, exclude: list[str] | None) -> int:
        return self._sender.everyone(event, data, exclude)

    def disconnect(self, client_id: str | None, user_id: str | None, code: int, reason: str) -> int:
        """Close one local client (any state) or every local session of a user; returns
        how many."""
        clients = self._clients
        if client_id is not None:
            targets = [clients[client_id]] if client_id in clients else []
        else:
            assert user_id is not None
            targets = [clients[i] for i in self._user_members(user_id) if i in clients]
        for client in targets:
            client.close(code, reason)
        return len(targets)

    # -- delivery across nodes -------------------------------------------------------------

    def send(self, destination: str | None, payload: Mapping[str, Any] | None) -> None:
        """See `WebSocketServerHelper.send`."""
        if type(payload) is not dict and not isinstance(payload, Mapping):
            return
        topic = payload.get("topic")
        if not topic or "data" not in payload:
            return
        data = payload["data"]
        if not destination:
            self._sender.everyone(topic, data, None)
            self._publish(_BROADCAST, None, topic, data)
        elif destination in self._clients:
            self.to_client(destination, topic, data)
            self._publish(_CLIENT, destination, topic, data)
        else:
            history = self._history
            is_history = history.is_history
            if is_history is not None and is_history(destination):
                history.send(destination, topic, data, None)
                if not history.in_redis:  # in redis the history script published it
                    self._publish(_ROOM, destination, topic, data)
                return
            if self._has_room(destination):
                self._sender.room(destination, topic, data, None)
            self._publish(_ROOM, destination, topic, data)

    def _publish(self, type_: str, target: str | None, event: str, data: Any) -> None:
        if type_ == _BROADCAST:
            channel = WebSocketChannels.BROADCAST
        elif type_ == _ROOM:
            channel = WebSocketChannels.for_room(target or "")
        else:
            channel = WebSocketChannels.for_client(target or "")
        self._broker.publish(
            channel, encode_envelope(self._server_id, type_, event, data, target, None)
        )

    def on_envelope(self, channel: str, raw: bytes) -> None:
        """An envelope from the broker: delivered locally unless this node published it."""
        envelope = decode_envelope(raw)
        if envelope is None:
            logger.error("malformed envelope on %s dropped", channel)
            return
        type_, target = envelope.type, envelope.target
        if type_ == _ROOM and target:
            history = self._history
            is_history = history.is_history
            if is_history is not None and is_history(target):
                if history.on_envelope(target, envelope):  # this node's own ones too
                    return
        if envelope.server_id == self._server_id:
            return
        if type_ == _BROADCAST:
            self._sender.everyone(envelope.event, envelope.data, envelope.exclude)
        elif target is None:
            logger.debug("envelope of type %r without target on %s dropped", type_, channel)
        elif type_ == _ROOM:
            self.to_room(target, envelope.event, envelope.data, envelope.exclude)
        elif type_ == _CLIENT:
            self.to_client(target, envelope.event, envelope.data)
        elif type_ == _USER:
            self._sender.user(target, envelope.event, envelope.data)
        elif type_ == DISCONNECT_TYPE:
            order = disconnect_of(envelope.data)
            if order is None:
                logger.error("malformed disconnect envelope on %s dropped", channel)
                return
            scope, code, reason = order
            if scope == "client":
                self.disconnect(target, None, code, reason)
            else:
                self.disconnect(None, target, code, reason)
        else:
            logger.debug("envelope of unknown type %r on %s dropped", type_, channel)
