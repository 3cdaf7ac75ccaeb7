"""History rooms (SPEC §10): numbered delivery, `joined`, and recovery on join.

Whether a room keeps history is decided once per room name (`RoomGlob` caches the glob's
answer), so rooms without history pay one attribute test on the fan-out path and nothing
else. The store sits behind the broker seam (`roomcast.broker.history`).
"""

from __future__ import annotations

import logging
from fnmatch import fnmatchcase
from typing import Any

import orjson

from .base import HelperBase
from .broker.history import HistoryStore, MemoryHistory
from .broker.memory import MemoryBroker
from .connection import Client
from .protocol import MISSING, encode

logger = logging.getLogger("roomcast")

JOINED = "joined"
_CACHE_LIMIT = 65536
_NO_ONE: frozenset[str] = frozenset()


class RoomGlob:
    """`fnmatchcase(room, pattern)`, remembered per room name (forgotten wholesale past
    `_CACHE_LIMIT` names, so a flood of one-off rooms cannot grow it without bound)."""

    __slots__ = ("_cache", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._cache: dict[str, bool] = {}

    def __call__(self, room: str) -> bool:
        hit = self._cache.get(room)
        if hit is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            hit = self._cache[room] = fnmatchcase(room, self.pattern)
        return hit


def history_frame(event: str, data: Any, room: str, offset: int) -> bytes:
    """A history room's message: `{"event","data","room","offset"}` (no `data` if none)."""
    if data is MISSING:
        return orjson.dumps({"event": event, "room": room, "offset": offset})
    return orjson.dumps({"event": event, "data": data, "room": room, "offset": offset})


def recover_request(data: Any) -> dict[str, tuple[str, int]]:
    """The well-formed entries of a join's `recover` map; malformed ones are ignored."""
    if type(data) is not dict:
        return {}
    recover = data.get("recover")
    if type(recover) is not dict:
        return {}
    wanted: dict[str, tuple[str, int]] = {}
    for room, position in recover.items():
        if type(position) is not dict:
            continue
        epoch, offset = position.get("epoch"), position.get("offset")
        if type(epoch) is str and type(offset) is int and offset >= 0:
            wanted[room] = (epoch, offset)
    return wanted


class History(HelperBase):
    # Class defaults: no history rooms until `_setup_history` finds a glob.
    _is_history: RoomGlob | None = None
    _history: HistoryStore | None = None

    def _setup_history(self) -> None:
        options = self.server_options
        glob = options["history_rooms"]
        if glob is None:
            return
        if not isinstance(self._broker, MemoryBroker):
            raise ValueError(
                "history_rooms needs the memory:// broker: history in redis is not built yet"
            )
        self._history = MemoryHistory(int(options["history_size"]), options["history_ttl"])
        self._is_history = RoomGlob(glob)

    def _send_history(self, room: str, event: str, data: Any, exclude: list[str] | None) -> int:
        """Number and keep one room message, then deliver it to the local members."""
        store = self._history
        assert store is not None
        _, entry = store.append(
            room,
            event,
            data,
            frozenset(exclude) if exclude else _NO_ONE,
            lambda offset: history_frame(event, data, room, offset),
        )
        count = self._hub.send_room(room, entry.frame, exclude or None)
        if self._encrypted:
            owners = self._hub.encrypted_owners(room, None, exclude or None)
            self._sealer.deliver(owners, event, data)
            count += len(owners)
        return count

    def _joined(
        self, client: Client, rooms: list[str], recover: dict[str, tuple[str, int]]
    ) -> None:
        """After a client's join: per history room among `rooms` (just joined), the
        recovered messages if asked and possible, then `joined`."""
        is_history, store = self._is_history, self._history
        assert is_history is not None and store is not None
        for room in rooms:
            if not is_history(room):
                continue
            epoch, offset = store.position(room)
            recovered = False
            wanted = recover.get(room)
            if wanted is not None:
                entries = store.since(room, *wanted)
                if entries is not None:
                    recovered = True
                    for entry in entries:
                        if client.id not in entry.exclude:
                            self._to_one(client, entry.frame, entry.event, entry.data)
            data = {"room": room, "epoch": epoch, "offset": offset, "recovered": recovered}
            self._to_one(client, encode(JOINED, data), JOINED, data)
