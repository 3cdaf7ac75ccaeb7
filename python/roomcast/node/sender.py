"""Every way a message reaches local clients: in clear through the hub's fan-out, then to the
encrypted recipients that fan-out skips, through the sealer (`roomcast.encryption.sealing`).

The hub frames and writes plaintext without Python per recipient; an encrypted client gets
each message sealed for it alone. `Sender` counts the encrypted connections, so a plaintext
node never asks the hub for encrypted recipients.
"""

from __future__ import annotations

from typing import Any

from .._core import Hub
from ..encryption.sealing import Position, Sealer
from ..protocol.constants import ErrorMessages, WebSocketEvents
from ..protocol.messages import encode, error_payload
from ..protocol.session import State
from ..transport.connection import Client

_AUTHENTICATED = State.AUTHENTICATED

# Error events in clear, by message (see `error` for who gets them sealed).
_ERRORS = {
    message: error_payload(message)
    for message in (
        ErrorMessages.INVALID_FORMAT,
        ErrorMessages.ALREADY_AUTHENTICATED,
        ErrorMessages.NOT_AUTHENTICATED,
        ErrorMessages.AUTH_FAILED,
        ErrorMessages.AUTH_ERROR,
        ErrorMessages.HANDSHAKE_FAILED,
        ErrorMessages.DECRYPTION_FAILED,
    )
}


class Sender:
    """Local delivery of one helper: `one`, `client`, `user`, `room`, `everyone`, `numbered`
    (a history room's message) and `error`; each returns how many clients it queued for."""

    __slots__ = ("_hub", "_sealer", "encrypted")

    def __init__(self, hub: Hub, sealer: Sealer) -> None:
        self._hub = hub
        self._sealer = sealer
        # Connections with an encrypted session now.
        self.encrypted = 0

    def encrypt(self, client: Client) -> None:
        """From now on the client gets only what the sealer makes of each message."""
        if client.encrypted:
            return
        client.encrypted = True
        self.encrypted += 1
        self._hub.set_encrypted(client.handle, True)

    def forget(self, client: Client) -> None:
        """The client is gone."""
        if client.encrypted:
            self.encrypted -= 1

    def one(
        self, client: Client, frame: bytes, event: str, data: Any, position: Position = None
    ) -> None:
        """One message to one client (`frame` in clear, or `event`/`data` sealed, with a
        history room's `position` (room, offset)), behind whatever it was sent before."""
        if client.encrypted:
            self._sealer.deliver([client], event, data, position)
        else:
            self._hub.send(client.handle, frame)

    def client(self, client: Client | None, event: str, data: Any) -> int:
        """To one authenticated client: 1 if queued, else 0."""
        if client is None or client.state is not _AUTHENTICATED:
            return 0
        if client.encrypted:
            self._sealer.deliver([client], event, data)
            return 1
        return int(self._hub.send(client.handle, encode(event, data)))

    def user(self, user_id: str, event: str, data: Any) -> int:
        count = self._hub.send_user(user_id, encode(event, data))
        if not self.encrypted:
            return count
        return count + self._seal(None, user_id, None, event, data)

    def room(self, room: str, event: str, data: Any, exclude: list[str] | None) -> int:
        """To the room's authenticated members not in `exclude` (as a plain, unnumbered
        message)."""
        count = self._hub.send_room(room, encode(event, data), exclude or None)
        if not self.encrypted:
            return count
        return count + self._seal(room, None, exclude, event, data)

    def everyone(self, event: str, data: Any, exclude: list[str] | None) -> int:
        count = self._hub.broadcast(encode(event, data), exclude or None)
        if not self.encrypted:
            return count
        return count + self._seal(None, None, exclude, event, data)

    def numbered(
        self,
        room: str,
        epoch: str,
        offset: int,
        frame: bytes,
        exclude: list[str] | None,
        event: str,
        data: Any,
    ) -> int:
        """A history room's message at `offset`, in the room's offset order (the hub holds
        it for members whose recovery is being read, and skips those that have it)."""
        owners: list[Any] | None = [] if self.encrypted else None
        count = self._hub.send_history(room, epoch, offset, frame, exclude, owners)
        if owners:
            self._sealer.deliver(owners, event, data, (room, offset))
            count += len(owners)
        return count

    def error(self, client: Client, message: str) -> None:
        """An error event: sealed like any other message once the client holds its key (it
        got `connected`), in clear before that (during authentication or the handshake)."""
        if client.seals_errors():
            self._sealer.deliver([client], WebSocketEvents.ERROR, {"message": message})
            return
        payload = _ERRORS.get(message)
        self._hub.send(client.handle, payload if payload is not None else error_payload(message))

    def _seal(
        self,
        room: str | None,
        user_id: str | None,
        exclude: list[str] | None,
        event: str,
        data: Any,
    ) -> int:
        """The encrypted recipients the hub's plaintext fan-out skipped (a room's, a user's or
        everyone's): queued for sealing. Returns how many."""
        owners = self._hub.encrypted_owners(room, user_id, exclude or None)
        self._sealer.deliver(owners, event, data)
        return len(owners)
