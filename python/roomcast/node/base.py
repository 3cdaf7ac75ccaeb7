"""What every part of the helper shares: its state (declared here, set up by
`WebSocketServerHelper.__init__`), tasks, callbacks and error events.

The helper is one object built from role mixins (`auth.Authentication`, `rooms.Rooms`,
`delivery.Delivery`) over this base, so a public call or an inbound message costs no more
Python calls than it did as one class.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .. import _core
from ..encryption.scheme import EncryptionScheme
from ..encryption.sealing import Sealer
from ..protocol.constants import ErrorMessages, WebSocketEvents
from ..protocol.counters import Counters
from ..protocol.messages import error_payload
from ..transport.connection import Client, Links
from .barrier import JoinBarrier
from .limits import Limits

logger = logging.getLogger("roomcast")

Callback = Callable[..., Any]

# Error events in clear, by message (see `_send_error` for who gets them sealed).
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
        ErrorMessages.ROOM_LIMIT,
        ErrorMessages.RATE_LIMIT,
    )
}


class HelperBase:
    """State and plumbing shared by the helper's parts."""

    identifier: str
    server_id: str
    default_rooms: list[str]
    auth_timeout: float
    heartbeat_interval: float
    heartbeat_timeout: float
    require_encryption: bool
    subscribe_timeout: float
    server_options: dict[str, Any]
    counters: Counters

    authenticate_fn: Callback
    validate_room_fn: Callback | None
    client_connected_fn: Callback | None
    client_disconnected_fn: Callback | None
    message_handler: Callback | None
    handshake_fn: Callback | None
    encryption: EncryptionScheme | None

    _broker: Any
    _hub: _core.Hub
    _links: Links
    _loop: asyncio.AbstractEventLoop | None
    # Python's own index of connections: the hub maps ids to handles internally but cannot
    # hand back the `Client` of an id.
    _clients: dict[str, Client]
    # How many clients are encrypted: a plaintext-only node skips the hub's encrypted look-up.
    _encrypted: int
    _sealer: Sealer
    _barrier: JoinBarrier
    _limits: Limits
    # The inbound rate limit's settings (None: off, nothing counted per message).
    _rate: Any = None
    _held: dict[str, list[Any]]  # the barrier's, read on every inbound message
    _tasks: set[asyncio.Future[Any]]
    # History rooms (`roomcast.node.history`): None when no room keeps history.
    _is_history: Callable[[str], bool] | None = None
    _remote: Any = None  # history.RedisHistory when history rooms live in redis
    # Presence rooms (`roomcast.node.presence`): None when no room has presence.
    _is_presence: Callable[[str], bool] | None = None
    _presence_events = False  # presence-join / presence-leave to the room's members
    # Something happens when a client joins a room (history's `joined`, presence events,
    # its presence entry in redis), or leaves one (the last two).
    _room_hooks = False
    _leave_hooks = False
    _presence_remote: Any = None  # presence's RedisPresence when presence lives in redis

    # -- settings read by several parts ----------------------------------------------------

    @property
    def outbound_transformer(self) -> Callback | None:
        """What encrypted clients get of each message (see the README)."""
        return self._sealer.transformer

    @outbound_transformer.setter
    def outbound_transformer(self, transformer: Callback | None) -> None:
        self._sealer.transformer = transformer

    @property
    def encrypted_batch_limit(self) -> int:
        return self._sealer.batch_limit

    @encrypted_batch_limit.setter
    def encrypted_batch_limit(self, limit: int) -> None:
        self._sealer.batch_limit = int(limit)

    # -- implemented by the parts (declared for the others) ----------------------------------

    def _on_join(self, client: Client, data: Any) -> None:
        raise NotImplementedError  # rooms.Rooms

    def _on_leave(self, client: Client, data: Any) -> None:
        raise NotImplementedError  # rooms.Rooms

    async def _authenticate(self, client: Client, data: dict[str, Any]) -> None:
        raise NotImplementedError  # auth.Authentication

    def _forget_keys(self, client: Client) -> None:
        raise NotImplementedError  # auth.Authentication

    def _send_history(self, room: str, event: str, data: Any, exclude: list[str] | None) -> int:
        raise NotImplementedError  # history.History

    def _setup_rooms(self) -> None:
        """History and presence (SPEC §10) from the server options; at configure."""
        self._setup_history()
        self._setup_presence()
        self._leave_hooks = self._presence_events or self._presence_remote is not None
        self._room_hooks = self._is_history is not None or self._leave_hooks

    def _rooms_joined(
        self, client: Client, rooms: list[str], recover: dict[str, tuple[str, int]] | None = None
    ) -> None:
        """After `client` joined `rooms` (a `join`, its default rooms at login, or
        `join_room`): `joined` for each history room, `presence-join` for each presence
        room (when enabled)."""
        if self._presence_remote is not None:
            written = self._presence_changed(client, rooms, True)
            if written is not None:
                # Read-your-writes (SPEC §10): its `joined` and its next messages wait for
                # its presence entry to be in redis (at most `subscribe_timeout`).
                self._barrier.hold(
                    client, written, lambda: self._joined_later(client, rooms, recover)
                )
                if self._presence_events:
                    self._announce(client, rooms, True)
                return
        if self._is_history is not None:
            self._joined(client, rooms, recover or {})
        if self._presence_events:
            self._announce(client, rooms, True)

    def _joined_later(
        self, client: Client, rooms: list[str], recover: dict[str, tuple[str, int]] | None
    ) -> None:
        """`_joined` once the presence write it waited for is done: of the rooms the client
        is still in."""
        if self._is_history is None or not client.live:
            return
        hub, handle = self._hub, client.handle
        still = [room for room in rooms if hub.in_room(handle, room)]
        if still:
            self._joined(client, still, recover or {})

    def _rooms_left(self, client: Client, rooms: list[str]) -> None:
        """After `client` left `rooms` (or before it is removed, disconnecting)."""
        if self._presence_remote is not None:
            written = self._presence_changed(client, rooms, False)
            if written is not None and client.live:
                # Its next messages are handled once it is out of presence in redis.
                self._barrier.hold(client, written, lambda: None)
        if self._presence_events:
            self._announce(client, rooms, False)

    def _setup_history(self) -> None:
        raise NotImplementedError  # history.History

    def _setup_presence(self) -> None:
        raise NotImplementedError  # presence.Presence

    def _on_history_envelope(self, room: str, envelope: Any) -> bool:
        raise NotImplementedError  # history.History

    async def _close_presence(self) -> None:
        raise NotImplementedError  # presence.Presence

    def _announce(self, client: Client, rooms: list[str], joining: bool) -> None:
        raise NotImplementedError  # presence.Presence

    def _on_presence(self, client: Client, data: Any) -> None:
        raise NotImplementedError  # presence.Presence

    def _presence_changed(
        self, client: Client, rooms: list[str], joining: bool
    ) -> asyncio.Future[bool] | None:
        raise NotImplementedError  # presence.Presence

    def _joined(
        self, client: Client, rooms: list[str], recover: dict[str, tuple[str, int]]
    ) -> None:
        raise NotImplementedError  # history.History

    def _to_one(
        self,
        client: Client,
        frame: bytes,
        event: str,
        data: Any,
        position: tuple[str, int] | None = None,
    ) -> None:
        """One message to one client (`frame` in clear, or `event`/`data` sealed, with a
        history room's `position` (room, offset)), behind whatever it was sent before."""
        if client.encrypted:
            self._sealer.deliver([client], event, data, position)
        else:
            self._hub.send(client.handle, frame)

    # -- errors ------------------------------------------------------------------------------

    def _send_error(self, client: Client, message: str) -> None:
        """An error event: sealed like any other message once the client holds its key (it
        got `connected`), in clear before that (during authentication or the handshake)."""
        if client.seals_errors():
            self._sealer.deliver([client], WebSocketEvents.ERROR, {"message": message})
            return
        payload = _ERRORS.get(message)
        self._hub.send(client.handle, payload if payload is not None else error_payload(message))

    # -- tasks and callbacks -------------------------------------------------------------------

    def _schedule(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        loop.call_soon(callback)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        assert self._loop is not None
        task = asyncio.ensure_future(coro, loop=self._loop)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task failed", exc_info=task.exception())

    def _invoke(self, name: str, fn: Callback, **kwargs: Any) -> None:
        """Call an application callback; log (never raise) what it raises, sync or async."""
        try:
            result = fn(**kwargs)
        except Exception:
            logger.exception("%s raised", name)
            return
        if inspect.isawaitable(result):
            self._spawn(_guard(name, result))


async def _guard(name: str, awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:
        logger.exception("%s raised", name)
