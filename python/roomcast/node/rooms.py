"""Rooms: `join` and `leave` from clients (through validate_room_fn) and from the server.

Membership lives in the hub; a join that needs a new Redis subscription takes effect once
Redis confirms it (the barrier, `roomcast.node.barrier`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable
from typing import Any

from ..log import client_extra, fault
from ..protocol.constants import WebSocketChannels
from ..protocol.messages import recover_request, requested_rooms, sanitize_rooms
from ..protocol.session import State
from ..transport.connection import Client
from .base import HelperBase

logger = logging.getLogger("roomcast")


class Rooms(HelperBase):
    def _on_join(self, client: Client, data: Any) -> None:
        requested = requested_rooms(data)
        if not requested:
            return
        rooms = self._limits.joinable(client, sanitize_rooms(requested))
        if not rooms:
            fault(
                "invalid room",
                "join refused for %s: no valid room names in %r",
                client.id,
                requested,
                extra=client_extra(client),
            )
            return
        if self.validate_room_fn is None:
            fault(
                "join refused",
                "join refused for %s: no validate_room_fn configured",
                client.id,
                extra=client_extra(client),
            )
            return
        recover = recover_request(data) if self._is_history is not None else None
        try:
            allowed = self.validate_room_fn(
                client_id=client.id, user_id=client.user_id, rooms=rooms
            )
        except Exception:
            logger.exception(
                "validate_room_fn raised for %s", client.id, extra=client_extra(client)
            )
            return
        if inspect.isawaitable(allowed):
            # The client's next messages wait for the validation (and the join) too.
            assert self._loop is not None
            lifted: asyncio.Future[bool] = self._loop.create_future()
            self._barrier.hold(client, lifted, lambda: None)
            self._spawn(self._join_when_validated(client, rooms, allowed, lifted, recover))
        else:
            self._join_allowed(client, rooms, allowed, recover)

    async def _join_when_validated(
        self,
        client: Client,
        rooms: list[str],
        allowed: Awaitable[Any],
        lifted: asyncio.Future[bool],
        recover: dict[str, tuple[str, int]] | None = None,
    ) -> None:
        timeout = self._limits.validate_room_timeout
        try:
            result = await asyncio.wait_for(allowed, timeout)
        except TimeoutError:
            fault(
                "join refused",
                "join refused for %s: validate_room_fn took over %g s",
                client.id,
                timeout,
                extra=client_extra(client),
            )
            result = None
        except Exception:
            logger.exception(
                "validate_room_fn raised for %s", client.id, extra=client_extra(client)
            )
            result = None
        try:
            if result is not None:
                self._join_allowed(client, rooms, result, recover)
        finally:
            lifted.set_result(True)

    def _join_allowed(
        self,
        client: Client,
        rooms: list[str],
        allowed: Any,
        recover: dict[str, tuple[str, int]] | None = None,
    ) -> None:
        if client.state is not State.AUTHENTICATED:
            return
        if not allowed:
            logger.debug(
                "join refused for %s: no room allowed of %r",
                client.id,
                rooms,
                extra=client_extra(client),
            )
            return
        requested = set(rooms)
        # validate_room_fn returns a subset: anything else it returns is ignored.
        rooms = [r for r in allowed if r in requested]
        if not self._limits.within_room_limit(client, rooms):
            return  # refused whole, before any subscription
        barrier = self._barrier
        if barrier.confirmation is not None:
            channels = [WebSocketChannels.for_room(r) for r in rooms]
            waiter = barrier.confirmation(channels)
            if waiter is not None:
                # The join takes effect once Redis confirms: the client's later messages
                # are handled after it, and every message published from then on reaches it.
                barrier.subscribe_early(channels)
                barrier.hold(
                    client,
                    barrier.wait(waiter),
                    lambda: self._join_now(client, rooms, channels, recover),
                )
                return
            if client.id in barrier.held:
                # Live already, but an earlier join of the client is not: after it.
                barrier.hold(
                    client, barrier.done(), lambda: self._join_now(client, rooms, [], recover)
                )
                return
        self._join_now(client, rooms, [], recover)

    def _join_now(
        self,
        client: Client,
        rooms: list[str],
        ahead: list[str],
        recover: dict[str, tuple[str, int]] | None = None,
    ) -> None:
        joined = client.live
        if joined:
            hub, handle = self._hub, client.handle
            added = [r for r in rooms if hub.join(handle, r)]
            logger.debug("%s joined %r", client.id, added)
            self._limits.room_changes(client, len(added))
            if added and self._room_hooks:
                self._rooms_joined(client, added, recover)
        if ahead:
            self._barrier.release_early(ahead, joined)

    def _on_leave(self, client: Client, data: Any) -> None:
        left = 0
        for room in requested_rooms(data):
            if type(room) is str and room != client.id and self._hub.leave(client.handle, room):
                left += 1
                if self._leave_hooks:
                    self._rooms_left(client, [room])
        if left:
            self._limits.room_changes(client, left)

    def join_room(self, client_id: str, room: str) -> bool:
        """Put a local client in `room` (no name rules: the server may use any name).

        It is a member at once for local delivery; when the node must first subscribe to
        the room in Redis, the client's next messages are handled only once Redis has
        confirmed it (at most `subscribe_timeout` later). `join_room_confirmed` also waits.
        """
        return self._join_room(client_id, room) is not None

    async def join_room_confirmed(self, client_id: str, room: str) -> bool:
        """`join_room`, returning once the room is live cluster-wide: every message
        published to it from then on, on any node or by the emitter, reaches the client
        (unless Redis did not answer within `subscribe_timeout`; see `stats()`)."""
        lifted = self._join_room(client_id, room)
        if lifted is None:
            return False
        if not lifted.done():
            await asyncio.shield(lifted)
        return True

    def _join_room(self, client_id: str, room: str) -> asyncio.Future[bool] | None:
        """None if no such client or already a member; else the barrier (maybe done)."""
        client = self._clients.get(client_id)
        if client is None:
            return None
        hub = self._hub
        barrier = self._barrier
        waiter = None
        if barrier.confirmation is not None:
            channel = WebSocketChannels.for_room(room)
            if not hub.has_room(room):
                interest = barrier.interest
                assert interest is not None
                interest(channel, True)
            waiter = barrier.confirmation([channel])
        if not hub.join(client.handle, room):
            return None
        if waiter is None:
            self._joined_by_server(client, room)
            return barrier.done()
        lifted = barrier.wait(waiter)
        barrier.hold(client, lifted, lambda: self._joined_by_server(client, room))
        return lifted

    def _joined_by_server(self, client: Client, room: str) -> None:
        """`join_room`'s room is live (in redis: confirmed): its `joined` (the position is
        read from here on, so every later message reaches the client after it) and
        presence-join."""
        if self._room_hooks and client.live and self._hub.in_room(client.handle, room):
            self._rooms_joined(client, [room])

    def leave_room(self, client_id: str, room: str) -> bool:
        """Take a local client out of `room`; its own-id room cannot be left."""
        client = self._clients.get(client_id)
        if client is None or room == client_id:
            return False
        if not self._hub.leave(client.handle, room):
            return False
        if self._leave_hooks:
            self._rooms_left(client, [room])
        return True
