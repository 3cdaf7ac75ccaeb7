"""Authentication, the encryption handshake and the login (`connected`) of a client.

The session (`roomcast.protocol.session`) decides what each outcome means; this part runs the
application's authenticate_fn and handshake_fn, logs the client in through the barrier (which
waits when the login needs new Redis subscriptions), and then puts the client in the hub and
sends `connected`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

from .._core import Hub
from ..encryption.scheme import EncryptionScheme
from ..encryption.sealing import Sealer
from ..log import TRACE, client_extra
from ..protocol.constants import CloseCode, ErrorMessages, WebSocketChannels, WebSocketEvents
from ..protocol.counters import Counters
from ..protocol.messages import encode, iso_now
from ..protocol.session import Verdict
from ..transport.connection import Client
from .barrier import JoinBarrier
from .rooms import Rooms
from .sender import Sender
from .tasks import Callback, Tasks

logger = logging.getLogger("roomcast")

_ROOM_PREFIX = WebSocketChannels.ROOM_PREFIX
_USER_PREFIX = WebSocketChannels.USER_PREFIX


class Authentication:
    """The logins of one helper's clients: `authenticate_fn` (required), `handshake_fn` (the
    encryption handshake, if any) and `client_connected_fn` (after `connected`)."""

    def __init__(
        self,
        hub: Hub,
        sender: Sender,
        sealer: Sealer,
        barrier: JoinBarrier,
        rooms: Rooms,
        clients: Mapping[str, Client],
        tasks: Tasks,
        counters: Counters,
        default_rooms: tuple[str, ...],
        require_encryption: bool,
        scheme: EncryptionScheme | None,
        authenticate_fn: Callback,
        handshake_fn: Callback | None,
        client_connected_fn: Callback | None,
    ) -> None:
        self._hub = hub
        self._sender = sender
        self._sealer = sealer
        self._barrier = barrier
        self._rooms = rooms
        self._clients = clients
        self._tasks = tasks
        self._counters = counters
        self._default_rooms = default_rooms
        self._require_encryption = require_encryption
        self.scheme = scheme
        self.authenticate_fn = authenticate_fn
        self.handshake_fn = handshake_fn
        self.client_connected_fn = client_connected_fn

    async def authenticate(self, client: Client, data: dict[str, Any]) -> None:
        """A client's `authenticate` event (its `data`): the whole login."""
        try:
            result = self.authenticate_fn(data=data)
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            logger.exception("authenticate_fn raised for %s", client.id, extra=client_extra(client))
            self._counters.auth["error"] += 1
            if client.authenticating:
                self._sender.error(client, ErrorMessages.AUTH_ERROR)
                client.close(CloseCode.AUTH_FAILED, CloseCode.REASONS[CloseCode.AUTH_FAILED])
            return
        verdict = client.authenticated(result)
        if verdict is Verdict.GONE:
            logger.debug("%s left during authentication", client.id, extra=client_extra(client))
            return
        if verdict is Verdict.REFUSE:
            self._counters.auth["failed"] += 1
            logger.debug("authentication rejected for %s", client.id, extra=client_extra(client))
            self._sender.error(client, ErrorMessages.AUTH_FAILED)
            client.close(CloseCode.AUTH_FAILED, CloseCode.REASONS[CloseCode.AUTH_FAILED])
            return
        if client.wants_handshake(self._require_encryption, self.handshake_fn is not None, data):
            if not await self._handshake(client, data):
                return
        # With subscriptions by interest, the channels that reach this client are subscribed
        # first: its own are new (no one else can hold them), the shared ones (default rooms,
        # its user) are held against an unsubscribe until the login takes effect.
        user_id = client.user_id
        shared = [_ROOM_PREFIX + room for room in self._default_rooms]
        if user_id is not None:
            shared.append(_USER_PREFIX + user_id)
        self._barrier.login(client, shared, self._login)

    def _login(self, client: Client) -> bool:
        """Authenticated (and subscribed): into the hub, `connected`, client_connected_fn.
        False if the client left meanwhile."""
        if not client.logged_in():
            logger.info("%s left while its subscriptions were confirmed", client.id)
            return False
        hub = self._hub
        default_rooms = self._default_rooms
        hub.authenticate(client.handle, client.user_id)
        hub.join(client.handle, client.id)
        for room in default_rooms:
            hub.join(client.handle, room)
        hub.send(client.handle, encode(WebSocketEvents.CONNECTED, client.connected_data(iso_now())))
        if default_rooms:
            self._rooms.joined(client, default_rooms)  # `joined` after `connected`
        self._counters.auth["ok"] += 1
        logger.log(
            TRACE,
            "authenticated %s (user %s, encrypted %s)",
            client.id,
            client.user_id,
            client.encrypted,
            extra=client_extra(client),
        )
        if self.client_connected_fn is not None:
            self._tasks.invoke(
                "client_connected_fn",
                self.client_connected_fn,
                client_id=client.id,
                user_id=client.user_id,
                metadata=client.metadata,
            )
        return True

    async def _handshake(self, client: Client, data: dict[str, Any]) -> bool:
        """Run handshake_fn; on refusal close the client and return False."""
        if self.handshake_fn is None:
            logger.error("require_encryption is on but no handshake_fn: closing %s", client.id)
            client.close(
                CloseCode.ENCRYPTION_REQUIRED, CloseCode.REASONS[CloseCode.ENCRYPTION_REQUIRED]
            )
            return False
        try:
            outcome = self.handshake_fn(client_id=client.id, user_id=client.user_id, data=data)
            if inspect.isawaitable(outcome):
                outcome = await outcome
        except Exception:
            logger.exception("handshake_fn raised for %s", client.id, extra=client_extra(client))
            outcome = None
        verdict = client.handshaken(outcome)
        if verdict is Verdict.GONE:
            logger.debug("%s left during the handshake", client.id, extra=client_extra(client))
            self.forget_keys(client)  # the handshake may have stored a key after it left
            return False
        if verdict is Verdict.REFUSE:
            logger.debug("handshake refused for %s", client.id, extra=client_extra(client))
            self.forget_keys(client)
            self._sender.error(client, ErrorMessages.HANDSHAKE_FAILED)
            client.close(
                CloseCode.ENCRYPTION_REQUIRED, CloseCode.REASONS[CloseCode.ENCRYPTION_REQUIRED]
            )
            return False
        self.enable_client_encryption(client.id)
        return True

    def enable_client_encryption(self, client_id: str) -> None:
        """From now on the client gets only what outbound_transformer makes of each message."""
        if self._sealer.transformer is None:
            raise ValueError(
                "enable_client_encryption needs an outbound_transformer: "
                "the client could receive nothing"
            )
        client = self._clients.get(client_id)
        if client is not None:
            self._sender.encrypt(client)

    def forget_keys(self, client: Client) -> None:
        """The client is gone (or its handshake failed): the scheme drops its key."""
        if self.scheme is None:
            return
        try:
            self.scheme.forget(client.id)
        except Exception:
            logger.exception(
                "encryption scheme failed to forget %s", client.id, extra=client_extra(client)
            )
