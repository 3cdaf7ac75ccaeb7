"""Presence (SPEC §10): who is in a presence room, for the application (`presence`) and for
a member that asks (the client `presence` event)."""

from __future__ import annotations

import inspect
import logging
from typing import Any

from .base import Callback, HelperBase
from .callbacks import check_callback
from .connection import Client
from .history import RoomGlob
from .log import client_extra
from .protocol import encode
from .session import State

logger = logging.getLogger("roomcast")

PRESENCE = "presence"
PRESENCE_NOT_ALLOWED = "Presence not allowed"
VALIDATE_PRESENCE_KEYWORDS = ("client_id", "user_id", "room")

Member = dict[str, str]


class Presence(HelperBase):
    _validate_presence_fn: Callback | None = None

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
        if glob is not None:
            self._is_presence = RoomGlob(glob)

    async def presence(self, room: str) -> list[Member]:
        """The members of a presence room, each once: `{"clientId", "userId"?}` (no `userId`
        for anonymous clients); empty for a room without presence."""
        is_presence = self._is_presence
        if is_presence is None or not is_presence(room):
            return []
        return self._local_members(room)

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
        if self._hub.in_room(client.handle, room):
            self._spawn(self._answer_presence(client, room, None))
        elif self._validate_presence_fn is None:
            self._send_error(client, PRESENCE_NOT_ALLOWED)
        else:
            self._spawn(self._answer_presence(client, room, self._validate_presence_fn))

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
        members = await self.presence(room)
        if client.state is State.AUTHENTICATED:
            answer = {"room": room, "clients": members}
            self._to_one(client, encode(PRESENCE, answer), PRESENCE, answer)
