"""Delivery: to local clients through the hub, and to the other nodes through the broker.

Plaintext fan-out is the hub's (no Python per recipient); encrypted recipients, which the
hub skips, are queued for the sealer (`roomcast.encryption.sealing`). `send` delivers locally and
publishes an envelope; `_on_envelope` delivers an envelope from another node locally.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..protocol.constants import WebSocketChannels, WebSocketMessageTypes
from ..protocol.messages import MISSING, decode_envelope, encode, encode_envelope
from ..protocol.session import State
from .base import HelperBase

logger = logging.getLogger("roomcast")

_AUTHENTICATED = State.AUTHENTICATED
_BROADCAST = WebSocketMessageTypes.BROADCAST
_ROOM = WebSocketMessageTypes.ROOM
_CLIENT = WebSocketMessageTypes.CLIENT
_USER = WebSocketMessageTypes.USER


class Delivery(HelperBase):
    # -- local delivery ------------------------------------------------------------------

    def send_to_client(self, client_id: str, event: str, data: Any = MISSING) -> int:
        """Deliver to one local authenticated client; returns 1 if queued, else 0."""
        client = self._clients.get(client_id)
        if client is None or client.state is not _AUTHENTICATED:
            return 0
        if client.encrypted:
            self._sealer.deliver([client], event, data)
            return 1
        return int(self._hub.send(client.handle, encode(event, data)))

    def send_to_user(self, user_id: str, event: str, data: Any = MISSING) -> int:
        """Deliver to every local session of a user; returns how many were queued."""
        count = self._hub.send_user(user_id, encode(event, data))
        return count + self._to_encrypted(None, user_id, None, event, data)

    def send_to_room(
        self, room: str, event: str, data: Any = MISSING, exclude: list[str] | None = None
    ) -> int:
        """Deliver to every local authenticated member of `room` not in `exclude`; a message
        to a history room is numbered and kept first (SPEC §10)."""
        is_history = self._is_history
        if is_history is not None and is_history(room):
            return self._send_history(room, event, data, exclude)
        count = self._hub.send_room(room, encode(event, data), exclude or None)
        return count + self._to_encrypted(room, None, exclude, event, data)

    def broadcast(self, event: str, data: Any = MISSING, exclude: list[str] | None = None) -> int:
        """Deliver to every local authenticated client not in `exclude`."""
        count = self._hub.broadcast(encode(event, data), exclude or None)
        return count + self._to_encrypted(None, None, exclude, event, data)

    def _to_encrypted(
        self,
        room: str | None,
        user_id: str | None,
        exclude: list[str] | None,
        event: str,
        data: Any,
    ) -> int:
        """The encrypted recipients the hub's plaintext fan-out skipped (a room's, a user's or
        everyone's): queued for sealing. Returns how many."""
        if not self._encrypted:
            return 0
        owners = self._hub.encrypted_owners(room, user_id, exclude or None)
        self._sealer.deliver(owners, event, data)
        return len(owners)

    # -- delivery across nodes -------------------------------------------------------------

    def send(
        self, destination: str | None = None, payload: Mapping[str, Any] | None = None
    ) -> None:
        """Deliver locally and publish to the other nodes.

        `payload` is `{"topic": event, "data": ...}`; one without a topic or a `data` key is
        ignored. No destination: everyone. A local client id: that client. A local room: the
        room. Anything else: published as a room envelope, which reaches a room of that name
        or a client of that id on any node.
        """
        if type(payload) is not dict and not isinstance(payload, Mapping):
            return
        topic = payload.get("topic")
        if not topic or "data" not in payload:
            return
        data = payload["data"]
        if not destination:
            self.broadcast(topic, data)
            self._publish(_BROADCAST, None, topic, data)
        elif destination in self._clients:
            self.send_to_client(destination, topic, data)
            self._publish(_CLIENT, destination, topic, data)
        else:
            is_history = self._is_history
            if is_history is not None and is_history(destination):
                self._send_history(destination, topic, data, None)
                if self._remote is None:  # in redis the history script published it
                    self._publish(_ROOM, destination, topic, data)
                return
            if self._hub.has_room(destination):
                self.send_to_room(destination, topic, data)
            self._publish(_ROOM, destination, topic, data)

    def _publish(
        self,
        type_: str,
        target: str | None,
        event: str,
        data: Any,
        exclude: list[str] | None = None,
    ) -> None:
        if type_ == _BROADCAST:
            channel = WebSocketChannels.BROADCAST
        elif type_ == _ROOM:
            channel = WebSocketChannels.for_room(target or "")
        elif type_ == _CLIENT:
            channel = WebSocketChannels.for_client(target or "")
        else:
            channel = WebSocketChannels.for_user(target or "")
        self._broker.publish(
            channel, encode_envelope(self.server_id, type_, event, data, target, exclude)
        )

    def _on_envelope(self, channel: str, raw: bytes) -> None:
        """An envelope from the broker: delivered locally unless this node published it."""
        envelope = decode_envelope(raw)
        if envelope is None:
            logger.error("malformed envelope on %s dropped", channel)
            return
        type_, target = envelope.type, envelope.target
        if type_ == _ROOM and target:
            is_history = self._is_history
            if is_history is not None and is_history(target):
                if self._on_history_envelope(target, envelope):  # this node's own ones too
                    return
        if envelope.server_id == self.server_id:
            return
        if type_ == _BROADCAST:
            self.broadcast(envelope.event, envelope.data, envelope.exclude)
        elif target is None:
            logger.debug("envelope of type %r without target on %s dropped", type_, channel)
        elif type_ == _ROOM:
            self.send_to_room(target, envelope.event, envelope.data, envelope.exclude)
        elif type_ == _CLIENT:
            self.send_to_client(target, envelope.event, envelope.data)
        elif type_ == _USER:
            self.send_to_user(target, envelope.event, envelope.data)
        else:
            logger.debug("envelope of unknown type %r on %s dropped", type_, channel)
