"""Rooms: `join` and `leave` from clients (through validate_room_fn) and from the server, and
the one "rooms joined / left" event every way of joining or leaving ends with.

Membership lives in the hub; a join that needs a new Redis subscription takes effect once
Redis confirms it (the barrier, `roomcast.node.barrier`). After a join, history rooms send
`joined` (and what the client recovers) and presence rooms `presence-join` when enabled.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from .._core import Hub
from ..log import client_extra, fault
from ..protocol.messages import recover_request, requested_rooms, sanitize_rooms
from ..protocol.session import State
from ..transport.connection import Client
from .barrier import JoinBarrier
from .history import History
from .limits import Limits
from .presence import Presence
from .tasks import Callback, Tasks

logger = logging.getLogger("roomcast")

Recover = dict[str, tuple[str, int]]


class Rooms:
    """Joins and leaves of one helper's clients. `validate_room_fn` decides on a client's
    join (none: every join is refused)."""

    def __init__(
        self,
        hub: Hub,
        barrier: JoinBarrier,
        clients: Mapping[str, Client],
        tasks: Tasks,
        history: History,
        presence: Presence,
        limits: Limits,
        validate_room_fn: Callback | None,
    ) -> None:
        self._hub = hub
        self._barrier = barrier
        self._clients = clients
        self._tasks = tasks
        self._history = history
        self._presence = presence
        self._limits = limits
        self.validate_room_fn = validate_room_fn
        # Whether anything happens when a client joins a room (`joined`, presence events):
        # known once history and presence have started.
        self._hooks = False

    def start(self) -> None:
        """At configure, after history and presence."""
        presence = self._presence
        self._hooks = self._history.is_history is not None or presence.events or presence.in_redis

    # -- the one event of every join and leave -------------------------------------------

    def joined(self, client: Client, rooms: Sequence[str], recover: Recover | None = None) -> None:
        """After `client` joined `rooms` (a `join`, its default rooms at login, or
        `join_room`): its presence entry in redis for each presence room, `joined` for each
        history room, `presence-join` for each presence room (when enabled)."""
        if not self._hooks:
            return
        presence = self._presence
        if presence.in_redis:
            written = presence.changed(client, rooms, True)
            if written is not None:
                # Read-your-writes (SPEC §10): its `joined` and its next messages wait for
                # its presence entry to be in redis (at most `subscribe_timeout`).
                self._barrier.hold(
                    client, written, lambda: self._joined_late(client, rooms, recover)
                )
                if presence.events:
                    presence.announce(client, rooms, True)
                return
        if self._history.is_history is not None:
            self._history.joined(client, rooms, recover or {})
        if presence.events:
            presence.announce(client, rooms, True)

    def _joined_late(self, client: Client, rooms: Sequence[str], recover: Recover | None) -> None:
        """`joined` once the presence write it waited for is done, for the history rooms
        the client is still in."""
        if self._history.is_history is None or not client.live:
            return
        hub, handle = self._hub, client.handle
        still = [room for room in rooms if hub.in_room(handle, room)]
        if still:
            self._history.joined(client, still, recover or {})

    def left(self, client: Client, rooms: Sequence[str]) -> None:
        """After `client` left `rooms`: out of presence in redis (its next messages wait for
        that), `presence-leave` (when enabled)."""
        presence = self._presence
        if presence.in_redis:
            written = presence.changed(client, rooms, False)
            if written is not None and client.live:
                self._barrier.hold(client, written)
        if presence.events:
            presence.announce(client, rooms, False)

    def leaving(self, client: Client) -> None:
        """Before an authenticated client is removed from the hub, disconnecting."""
        presence = self._presence
        if presence.in_redis or presence.events:
            rooms = self._hub.rooms_of(client.handle)
            if presence.in_redis:
                presence.changed(client, rooms, False)
            if presence.events:
                presence.announce(client, rooms, False)

    # -- from clients --------------------------------------------------------------------

    def on_join(self, client: Client, data: Any) -> None:
        requested = requested_rooms(data)
        if not requested:
            return
        # Another client's own-id room is never asked for (unless the application allows it).
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
        validate = self.validate_room_fn
        if validate is None:
            fault(
                "join refused",
                "join refused for %s: no validate_room_fn configured",
                client.id,
                extra=client_extra(client),
            )
            return
        recover = recover_request(data) if self._history.is_history is not None else None
        try:
            allowed = validate(client_id=client.id, user_id=client.user_id, rooms=rooms)
        except Exception:
            logger.exception(
                "validate_room_fn raised for %s", client.id, extra=client_extra(client)
            )
            return
        if inspect.isawaitable(allowed):
            # The client's next messages wait for the validation (and the join) too.
            release = self._barrier.pause(client)
            self._tasks.spawn(self._join_when_validated(client, rooms, allowed, release, recover))
        else:
            self._join_allowed(client, rooms, allowed, recover)

    async def _join_when_validated(
        self,
        client: Client,
        rooms: list[str],
        allowed: Awaitable[Any],
        release: Callable[[], None],
        recover: Recover | None,
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
            release()

    def _join_allowed(
        self, client: Client, rooms: list[str], allowed: Any, recover: Recover | None
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
            return  # refused whole (`Room limit reached`), before any subscription
        self._barrier.join(client, rooms, lambda: self._join_now(client, rooms, recover))

    def _join_now(self, client: Client, rooms: list[str], recover: Recover | None) -> bool:
        """Into the hub now; False if the client cannot join any more."""
        if not client.live:
            return False
        hub, handle = self._hub, client.handle
        added = [r for r in rooms if hub.join(handle, r)]
        logger.debug("%s joined %r", client.id, added)
        self._limits.room_changes(client, len(added))
        if added:
            self.joined(client, added, recover)
        return True

    def on_leave(self, client: Client, data: Any) -> None:
        left = 0
        for room in requested_rooms(data):
            if type(room) is str and room != client.id and self._hub.leave(client.handle, room):
                left += 1
                self.left(client, [room])
        if left:
            self._limits.room_changes(client, left)

    # -- from the server -----------------------------------------------------------------

    def join_room(self, client_id: str, room: str) -> asyncio.Future[bool] | None:
        """None if no such client or already a member; else the barrier (maybe done)."""
        client = self._clients.get(client_id)
        if client is None:
            return None
        hub = self._hub
        return self._barrier.join_by_server(
            client,
            room,
            lambda: hub.join(client.handle, room),
            lambda: self._joined_by_server(client, room),
        )

    def _joined_by_server(self, client: Client, room: str) -> None:
        """`join_room`'s room is live (in redis: confirmed): its `joined` (the position is
        read from here on, so every later message reaches the client after it) and
        presence-join."""
        if self._hooks and client.live and self._hub.in_room(client.handle, room):
            self.joined(client, [room])

    def leave_room(self, client_id: str, room: str) -> bool:
        client = self._clients.get(client_id)
        if client is None or room == client_id:
            return False
        if not self._hub.leave(client.handle, room):
            return False
        self.left(client, [room])
        return True
