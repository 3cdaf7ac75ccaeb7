"""Authentication, the encryption handshake and the login (`connected`) of a client.

The session (`roomcast.protocol.session`) decides what each outcome means; this part runs the
application's authenticate_fn and handshake_fn, waits for the barrier when the login needs
new Redis subscriptions, and then puts the client in the hub and sends `connected`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

from ..log import TRACE, client_extra
from ..protocol.constants import CloseCode, ErrorMessages, WebSocketChannels, WebSocketEvents
from ..protocol.messages import encode, iso_now
from ..protocol.session import Verdict
from ..transport.connection import Client
from .base import HelperBase

logger = logging.getLogger("roomcast")

_ROOM_PREFIX = WebSocketChannels.ROOM_PREFIX
_USER_PREFIX = WebSocketChannels.USER_PREFIX
_CLIENT_PREFIX = WebSocketChannels.CLIENT_PREFIX

Login = tuple[Client, list[str]]


class Authentication(HelperBase):
    _logins: dict[asyncio.Future[bool], list[Login]]

    async def _authenticate(self, client: Client, data: dict[str, Any]) -> None:
        try:
            result = self.authenticate_fn(data=data)
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            logger.exception("authenticate_fn raised for %s", client.id, extra=client_extra(client))
            self.counters.auth["error"] += 1
            if client.authenticating:
                self._send_error(client, ErrorMessages.AUTH_ERROR)
                client.close(CloseCode.AUTH_FAILED, CloseCode.REASONS[CloseCode.AUTH_FAILED])
            return
        verdict = client.authenticated(result)
        if verdict is Verdict.GONE:
            logger.debug("%s left during authentication", client.id, extra=client_extra(client))
            return
        if verdict is Verdict.REFUSE:
            self.counters.auth["failed"] += 1
            logger.debug("authentication rejected for %s", client.id, extra=client_extra(client))
            self._send_error(client, ErrorMessages.AUTH_FAILED)
            client.close(CloseCode.AUTH_FAILED, CloseCode.REASONS[CloseCode.AUTH_FAILED])
            return
        if client.wants_handshake(self.require_encryption, self.handshake_fn is not None, data):
            if not await self._handshake(client, data):
                return
        ahead, lifted = self._subscribe_ahead(client)
        if lifted is None:
            self._login(client, ahead, None)
        elif lifted.done():  # Redis is known to be unreachable: no wait
            self._barrier.count_unconfirmed(lifted)
            self._login(client, ahead, lifted)
        else:
            # The rest runs when Redis confirms (or the bound passes), not in this task; the
            # logins waiting for one confirmation complete together, in arrival order, right
            # when the barrier lifts (`JoinBarrier.wait`'s `then`).
            logins = self._logins.get(lifted)
            if logins is None:
                logins = self._logins[lifted] = []
            logins.append((client, ahead))

    def _login_all(self, lifted: asyncio.Future[bool]) -> None:
        logins = self._logins.pop(lifted, ())
        if lifted.cancelled() or not lifted.result():
            self._barrier.unconfirmed += len(logins)  # as `count_unconfirmed`, once for all
        for client, ahead in logins:
            self._login(client, ahead, lifted)

    def _login(self, client: Client, ahead: list[str], lifted: asyncio.Future[bool] | None) -> None:
        """Authenticated (and subscribed): into the hub, `connected`, client_connected_fn.
        `lifted`: the barrier it waited for (counted by `_login_all`), if any."""
        barrier = self._barrier
        if not client.logged_in():
            if lifted is not None:
                if ahead:
                    barrier.release_early(ahead, joined=False)
                interest = barrier.interest
                assert interest is not None
                interest(_CLIENT_PREFIX + client.id, False)
                interest(_ROOM_PREFIX + client.id, False)
            logger.info("%s left while its subscriptions were confirmed", client.id)
            return
        hub = self._hub
        hub.authenticate(client.handle, client.user_id)
        hub.join(client.handle, client.id)
        for room in self.default_rooms:
            hub.join(client.handle, room)
        if ahead:
            barrier.release_early(ahead, joined=True)
        hub.send(client.handle, encode(WebSocketEvents.CONNECTED, client.connected_data(iso_now())))
        if self._room_hooks and self.default_rooms:
            self._rooms_joined(client, self.default_rooms)  # `joined` after `connected`
        self.counters.auth["ok"] += 1
        logger.log(
            TRACE,
            "authenticated %s (user %s, encrypted %s)",
            client.id,
            client.user_id,
            client.encrypted,
            extra=client_extra(client),
        )
        if self.client_connected_fn is not None:
            self._invoke(
                "client_connected_fn",
                self.client_connected_fn,
                client_id=client.id,
                user_id=client.user_id,
                metadata=client.metadata,
            )

    def _subscribe_ahead(self, client: Client) -> tuple[list[str], asyncio.Future[bool] | None]:
        """With subscriptions by interest, subscribe the channels that reach this client, so
        that `connected` can wait (at most `subscribe_timeout`) until Redis confirms them:
        a message sent to it from another node right after `connected` is then not lost.
        Returns the channels subscribed early (for `release_early`) and the barrier."""
        barrier = self._barrier
        if barrier.confirmation is None:
            return [], None
        # Its own channels are new (no one else can hold them): no look-up, no counting.
        # The shared ones (default rooms, its user) are held against an unsubscribe until
        # the login takes effect, even when live already: another client may leave them.
        client_id = client.id
        user_id = client.user_id
        if self.default_rooms:
            shared = [_ROOM_PREFIX + room for room in self.default_rooms]
            if user_id is not None:
                shared.append(_USER_PREFIX + user_id)
        elif user_id is not None:
            shared = [_USER_PREFIX + user_id]
        else:
            shared = []
        waiter = barrier.subscribe_new(
            [_CLIENT_PREFIX + client_id, _ROOM_PREFIX + client_id], shared
        )
        if waiter is None:  # the broker is closing
            return [], None
        if shared:
            barrier.hold_early(shared)
        return shared, barrier.wait(waiter, self._login_all)

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
            self._forget_keys(client)  # the handshake may have stored a key after it left
            return False
        if verdict is Verdict.REFUSE:
            logger.debug("handshake refused for %s", client.id, extra=client_extra(client))
            self._forget_keys(client)
            self._send_error(client, ErrorMessages.HANDSHAKE_FAILED)
            client.close(
                CloseCode.ENCRYPTION_REQUIRED, CloseCode.REASONS[CloseCode.ENCRYPTION_REQUIRED]
            )
            return False
        self.enable_client_encryption(client.id)
        return True

    def enable_client_encryption(self, client_id: str) -> None:
        """From now on the client gets only what outbound_transformer makes of each message."""
        if self.outbound_transformer is None:
            raise ValueError(
                "enable_client_encryption needs an outbound_transformer: "
                "the client could receive nothing"
            )
        client = self._clients.get(client_id)
        if client is None or client.encrypted:
            return
        client.encrypted = True
        self._encrypted += 1
        self._hub.set_encrypted(client.handle, True)

    def _forget_keys(self, client: Client) -> None:
        if self.encryption is None:
            return
        try:
            self.encryption.forget(client.id)
        except Exception:
            logger.exception(
                "encryption scheme failed to forget %s", client.id, extra=client_extra(client)
            )
