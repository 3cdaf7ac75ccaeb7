"""Presence (SPEC §10): who is in a presence room, for the application (`presence`) and for
a member that asks (the client `presence` event)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .._core import Hub
from ..aio import stop_task
from ..broker.protocol import Broker
from ..broker.redis.presence import RedisPresence
from ..log import client_extra
from ..protocol.constants import WebSocketChannels, WebSocketMessageTypes
from ..protocol.messages import RoomGlob, encode, encode_envelope
from ..protocol.session import State
from ..transport.connection import Client
from .callbacks import check_callback
from .limits import PRESENCE_WAITING, Serial
from .sender import Sender
from .tasks import Callback, Tasks

logger = logging.getLogger("roomcast")

PRESENCE = "presence"
PRESENCE_NOT_ALLOWED = "Presence not allowed"
VALIDATE_PRESENCE_KEYWORDS = ("client_id", "user_id", "room")
# Opt-in (`presence_events`): to the members of a presence room when a client joins or leaves.
PRESENCE_JOIN = "presence-join"
PRESENCE_LEAVE = "presence-leave"

Member = dict[str, str]


class Presence:
    """The presence rooms of one helper: `is_presence` (None until `start` finds a glob in
    the options, then whether a room has presence), `events` (presence-join/-leave on), the
    members' refresh in Redis and the answers to `presence` requests."""

    def __init__(
        self,
        hub: Hub,
        sender: Sender,
        broker: Broker,
        clients: Mapping[str, Client],
        server_id: str,
        tasks: Tasks,
        options: Mapping[str, Any],
        write_timeout: float,
    ) -> None:
        self._hub = hub
        self._sender = sender
        self._broker = broker
        self._clients = clients
        self._server_id = server_id
        self._tasks = tasks
        self._options = options
        self.is_presence: RoomGlob | None = None
        self.events = False  # presence-join / presence-leave to the room's members
        self._validate: Callback | None = None
        self._remote: RedisPresence | None = None  # cluster-wide presence through redis
        self._task: asyncio.Task[None] | None = None
        # The longest a join's answer (or a client's next message) waits for its presence
        # write (the join barrier's bound).
        self._write_timeout = write_timeout
        self._limit = int(options["presence_limit"])
        # One `presence` request in flight per client; the same room again is coalesced.
        self._requests = Serial(tasks.spawn, PRESENCE_WAITING)

    @property
    def validate_presence_fn(self) -> Callback | None:
        """`validate_presence_fn(client_id, user_id, room) -> bool` (sync or async): may let
        a client that is not a member of a presence room ask for its members."""
        return self._validate

    @validate_presence_fn.setter
    def validate_presence_fn(self, fn: Callback | None) -> None:
        if fn is not None:
            check_callback("validate_presence_fn", fn, VALIDATE_PRESENCE_KEYWORDS)
        self._validate = fn

    def start(self) -> None:
        """At configure: presence rooms from the options, refreshed in redis if the broker
        is redis."""
        options = self._options
        glob = options["presence_rooms"]
        if glob is None:
            return
        self.is_presence = RoomGlob(glob)
        self.events = bool(options["presence_events"])
        from ..broker.redis import RedisBroker

        if isinstance(self._broker, RedisBroker):
            ttl = float(options["presence_ttl"])
            self._remote = RedisPresence(
                self._broker.target,
                ttl,
                self._server_id,
                self._local_members,
                float(options["history_timeout"]),
            )
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._refresh())

    @property
    def in_redis(self) -> bool:
        """Whether members are written to redis as they join and leave."""
        return self._remote is not None

    async def _refresh(self) -> None:
        """Stamp this node in every presence room it has members in, every interval (the
        members themselves are written as they join and leave)."""
        remote = self._remote
        assert remote is not None
        while True:
            is_presence = self.is_presence
            assert is_presence is not None
            rooms = [room for room in self._hub.room_names() if is_presence(room)]
            # Never raises; while Redis does not answer, stamps wait behind the writes.
            await asyncio.wait([remote.refresh(rooms)], timeout=remote.ttl_ms / 1000)
            await asyncio.sleep(remote.interval)

    async def close(self) -> None:
        """Stop refreshing and take this node's members out of presence (best effort)."""
        task, self._task = self._task, None
        await stop_task(task)
        remote, self._remote = self._remote, None
        if remote is not None:
            try:
                await remote.forget()
            except Exception as exc:
                logger.warning("presence not cleared in redis: %s", exc)
            await remote.close()

    def changed(
        self, client: Client, rooms: Sequence[str], joining: bool
    ) -> asyncio.Future[bool] | None:
        """`client`'s entry in the redis presence of each presence room among `rooms`,
        written (or removed) now, behind this node's earlier changes. None if there was
        none to write; else a future resolved once they are in redis, or after the write
        timeout (never an error: failed writes are the store's to count and repair)."""
        remote, is_presence = self._remote, self.is_presence
        assert remote is not None and is_presence is not None
        client_id, user_id = client.id, client.user_id
        written = None
        for room in rooms:
            if room == client_id or not is_presence(room):
                continue
            if not joining:
                written = remote.remove(room, client_id)
            elif user_id is None:
                written = remote.add(room, {"clientId": client_id})
            else:
                written = remote.add(room, {"clientId": client_id, "userId": user_id})
        # One future for every change of a batch: the last one covers them all.
        return None if written is None else bounded(written, self._write_timeout)

    def forget(self, client: Client) -> None:
        """The client is gone: its waiting `presence` requests with it."""
        self._requests.forget(client)

    def stats(self) -> dict[str, int]:
        return {
            "presence_requests": self._requests.in_flight,
            "presence_coalesced": self._requests.coalesced,
        }

    def announce(self, client: Client, rooms: Sequence[str], joining: bool) -> None:
        """`presence-join` / `presence-leave` of `client` to the members of each presence
        room among `rooms`, here and (through the room's channel) on every other node; not
        numbered or kept, even in a history room. A leaver (still in the hub when it is
        disconnecting) does not get its own."""
        is_presence = self.is_presence
        assert is_presence is not None
        event = PRESENCE_JOIN if joining else PRESENCE_LEAVE
        exclude = None if joining else [client.id]
        user_id = client.user_id
        to_room, publish = self._sender.room, self._broker.publish
        for room in rooms:
            if room == client.id or not is_presence(room):
                continue
            data = {"room": room, "clientId": client.id}
            if user_id is not None:
                data["userId"] = user_id
            to_room(room, event, data, exclude)
            envelope = encode_envelope(
                self._server_id, WebSocketMessageTypes.ROOM, event, data, room, None
            )
            publish(WebSocketChannels.for_room(room), envelope)

    async def members(self, room: str) -> list[Member]:
        """The members of a presence room, each once: `{"clientId", "userId"?}` (no `userId`
        for anonymous clients); empty for a room without presence. At most `presence_limit`
        of them (this node's first)."""
        return (await self.page(room))[0]

    async def page(self, room: str) -> tuple[list[Member], int]:
        """At most `presence_limit` members of `room`, and how many it has."""
        is_presence = self.is_presence
        if is_presence is None or not is_presence(room):
            return [], 0
        limit = self._limit
        members = self._local_members(room)
        total = len(members)
        del members[limit:]
        remote = self._remote
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

    def on_request(self, client: Client, data: Any) -> None:
        """A client's `presence` event (only taken from message_handler when some room has
        presence)."""
        room = data.get("room") if type(data) is dict else None
        is_presence = self.is_presence
        if type(room) is not str or is_presence is None or not is_presence(room):
            self._sender.error(client, PRESENCE_NOT_ALLOWED)
            return
        # One request in flight per client; the same room asked again meanwhile is answered
        # once (`limits.Serial`).
        if self._hub.in_room(client.handle, room):
            self._requests.submit(client, room, lambda: self._answer(client, room, None))
        elif self._validate is None:
            self._sender.error(client, PRESENCE_NOT_ALLOWED)
        else:
            check = self._validate
            self._requests.submit(client, room, lambda: self._answer(client, room, check))

    async def _answer(self, client: Client, room: str, check: Callback | None) -> None:
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
                    self._sender.error(client, PRESENCE_NOT_ALLOWED)
                return
        members, total = await self.page(room)
        if client.state is State.AUTHENTICATED:
            answer: dict[str, Any] = {"room": room, "clients": members}
            if total > len(members):
                answer["truncated"] = True  # `presence_limit`: the first ones, not all
                answer["total"] = total
            self._sender.one(client, encode(PRESENCE, answer), PRESENCE, answer)


def bounded(future: asyncio.Future[bool], timeout: float) -> asyncio.Future[bool]:
    """A future resolved (True) once `future` is, or after `timeout` seconds: a barrier for
    the client's next messages, not a verdict."""
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
