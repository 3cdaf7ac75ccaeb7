"""Presence (SPEC §10): who is in a presence room, for the application (`presence`) and for
a member that asks (the client `presence` event)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

from ..aio import stop_task
from ..broker.redis.presence import RedisPresence
from ..log import client_extra
from ..protocol.constants import WebSocketChannels, WebSocketMessageTypes
from ..protocol.messages import RoomGlob, encode, encode_envelope
from ..protocol.session import State
from ..transport.connection import Client
from .base import Callback, HelperBase
from .callbacks import check_callback

logger = logging.getLogger("roomcast")

PRESENCE = "presence"
PRESENCE_NOT_ALLOWED = "Presence not allowed"
VALIDATE_PRESENCE_KEYWORDS = ("client_id", "user_id", "room")
# Opt-in (`presence_events`): to the members of a presence room when a client joins or leaves.
PRESENCE_JOIN = "presence-join"
PRESENCE_LEAVE = "presence-leave"

Member = dict[str, str]


class Presence(HelperBase):
    _validate_presence_fn: Callback | None = None
    _presence_task: asyncio.Task[None] | None = None
    _presence_limit = 1000

    @property
    def validate_presence_fn(self) -> Callback | None:
        """`validate_presence_fn(client_id, user_id, room) -> bool` (sync or async): may let
        a client that is not a member of a presence room ask for its members."""
        return self._validate_presence_fn

    @validate_presence_fn.setter
    def validate_presence_fn(self, fn: Callback | None) -> None:
        if fn is not None:
            check_callback("validate_presence_fn", fn, VALIDATE_PRESENCE_KEYWORDS)
        self._validate_presence_fn = fn

    def _setup_presence(self) -> None:
        glob = self.server_options["presence_rooms"]
        if glob is None:
            return
        self._is_presence = RoomGlob(glob)
        self._presence_events = bool(self.server_options["presence_events"])
        self._presence_limit = int(self.server_options["presence_limit"])
        from ..broker.redis import RedisBroker

        if isinstance(self._broker, RedisBroker):
            ttl = float(self.server_options["presence_ttl"])
            self._presence_remote = RedisPresence(
                self._broker.target, ttl, self.server_id, self._local_members
            )
            loop = asyncio.get_running_loop()
            self._presence_task = loop.create_task(self._refresh_presence())

    async def _refresh_presence(self) -> None:
        """Stamp this node in every presence room it has members in, every interval (the
        members themselves are written as they join and leave)."""
        remote = self._presence_remote
        assert remote is not None
        while True:
            is_presence = self._is_presence
            assert is_presence is not None
            rooms = [room for room in self._hub.room_names() if is_presence(room)]
            # Never raises; while Redis does not answer, stamps wait behind the writes.
            await asyncio.wait([remote.refresh(rooms)], timeout=remote.ttl_ms / 1000)
            await asyncio.sleep(remote.interval)

    async def _close_presence(self) -> None:
        """Stop refreshing and take this node's members out of presence (best effort)."""
        task, self._presence_task = self._presence_task, None
        await stop_task(task)
        remote, self._presence_remote = self._presence_remote, None
        if remote is not None:
            try:
                await remote.forget()
            except Exception as exc:
                logger.warning("presence not cleared in redis: %s", exc)
            await remote.close()

    def _presence_changed(
        self, client: Client, rooms: list[str], joining: bool
    ) -> asyncio.Future[bool] | None:
        """`client`'s entry in the redis presence of each presence room among `rooms`,
        written (or removed) now, behind this node's earlier changes. None if there was
        none to write; else a future resolved once they are in redis, or after
        `subscribe_timeout` (never an error)."""
        remote = self._presence_remote
        is_presence = self._is_presence
        assert remote is not None and is_presence is not None
        client_id = client.id
        written = None
        for room in rooms:
            if room == client_id or not is_presence(room):
                continue
            if not joining:
                written = remote.remove(room, client_id)
            elif client.user_id is None:
                written = remote.add(room, {"clientId": client_id})
            else:
                written = remote.add(room, {"clientId": client_id, "userId": client.user_id})
        if written is None:
            return None
        # One future for every change of a batch: the last one covers them all.
        return bounded(written, self.subscribe_timeout)

    def _announce(self, client: Client, rooms: list[str], joining: bool) -> None:
        """`presence-join` / `presence-leave` of `client` to the members of each presence
        room among `rooms`, here and (through the room's channel) on every other node; not
        numbered or kept, even in a history room. A leaver (still in the hub when it is
        disconnecting) does not get its own."""
        is_presence = self._is_presence
        assert is_presence is not None
        event = PRESENCE_JOIN if joining else PRESENCE_LEAVE
        exclude = None if joining else [client.id]
        user_id = client.user_id
        hub, publish = self._hub, self._broker.publish
        for room in rooms:
            if room == client.id or not is_presence(room):
                continue
            data = {"room": room, "clientId": client.id}
            if user_id is not None:
                data["userId"] = user_id
            hub.send_room(room, encode(event, data), exclude)
            if self._encrypted:
                self._sealer.deliver(hub.encrypted_owners(room, None, exclude), event, data)
            envelope = encode_envelope(
                self.server_id, WebSocketMessageTypes.ROOM, event, data, room, None
            )
            publish(WebSocketChannels.for_room(room), envelope)

    async def presence(self, room: str) -> list[Member]:
        """The members of a presence room, each once: `{"clientId", "userId"?}` (no `userId`
        for anonymous clients); empty for a room without presence. At most `presence_limit`
        of them (this node's first)."""
        return (await self._presence_page(room))[0]

    async def _presence_page(self, room: str) -> tuple[list[Member], int]:
        """At most `presence_limit` members of `room`, and how many it has."""
        is_presence = self._is_presence
        if is_presence is None or not is_presence(room):
            return [], 0
        limit = self._presence_limit
        members = self._local_members(room)
        total = len(members)
        del members[limit:]
        remote = self._presence_remote
        if remote is not None:
            try:
                others, count = await remote.read(room, limit)
            except Exception as exc:
                logger.warning("presence of room %s unreadable in redis: %s", room, exc)
                others, count = [], 0
            # A client is on one node: the other nodes' members are not this node's.
            total += count
            members.extend(others[: limit - len(members)])
        return members, total

    def _local_members(self, room: str) -> list[Member]:
        clients = self._clients
        members: list[Member] = []
        for client_id in self._hub.room_members(room):
            client = clients.get(client_id)
            if client is None or client.state is not State.AUTHENTICATED:
                continue
            user_id = client.user_id
            members.append(
                {"clientId": client_id}
                if user_id is None
                else {"clientId": client_id, "userId": user_id}
            )
        return members

    def _on_presence(self, client: Client, data: Any) -> None:
        """A client's `presence` event (only taken from message_handler when some room has
        presence)."""
        room = data.get("room") if type(data) is dict else None
        is_presence = self._is_presence
        if type(room) is not str or is_presence is None or not is_presence(room):
            self._send_error(client, PRESENCE_NOT_ALLOWED)
            return
        # One request in flight per client; the same room asked again meanwhile is answered
        # once (`limits.Serial`).
        if self._hub.in_room(client.handle, room):
            self._limits.presence.submit(
                client, room, lambda: self._answer_presence(client, room, None)
            )
        elif self._validate_presence_fn is None:
            self._send_error(client, PRESENCE_NOT_ALLOWED)
        else:
            check = self._validate_presence_fn
            self._limits.presence.submit(
                client, room, lambda: self._answer_presence(client, room, check)
            )

    async def _answer_presence(self, client: Client, room: str, check: Callback | None) -> None:
        if check is not None:
            try:
                allowed = check(client_id=client.id, user_id=client.user_id, room=room)
                if inspect.isawaitable(allowed):
                    allowed = await allowed
            except Exception:
                logger.exception(
                    "validate_presence_fn raised for %s", client.id, extra=client_extra(client)
                )
                allowed = False
            if not allowed:
                if client.state is State.AUTHENTICATED:
                    self._send_error(client, PRESENCE_NOT_ALLOWED)
                return
        members, total = await self._presence_page(room)
        if client.state is State.AUTHENTICATED:
            answer: dict[str, Any] = {"room": room, "clients": members}
            if total > len(members):
                answer["truncated"] = True  # `presence_limit`: the first ones, not all
                answer["total"] = total
            self._to_one(client, encode(PRESENCE, answer), PRESENCE, answer)


def bounded(future: asyncio.Future[bool], timeout: float) -> asyncio.Future[bool]:
    """A future resolved (True) once `future` is, or after `timeout` seconds: a barrier for
    the client's next messages, not a verdict (failed writes are the store's to count)."""
    loop = future.get_loop()
    out: asyncio.Future[bool] = loop.create_future()

    def done(_: Any = None) -> None:
        timer.cancel()
        if not out.done():
            out.set_result(True)

    def late() -> None:
        if not out.done():
            out.set_result(True)

    timer = loop.call_later(timeout, late)
    future.add_done_callback(done)
    return out
