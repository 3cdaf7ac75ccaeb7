"""Room history behind the broker seam: the `HistoryStore` protocol and its in-process
implementation (`MemoryHistory`), a ring per room bounded by size and age.

A room's stream position is an epoch (an opaque string that changes whenever the room's
stored history is lost or reset) and an offset (that of the last message appended in this
epoch; 0 before the first). This module imports nothing of roomcast's.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

Frame = Callable[[int], bytes]
"""Builds a message's wire frame once its offset is known."""


@dataclass(slots=True, frozen=True)
class Entry:
    """One kept message: its offset, what members get (`frame`; `event`/`data` for the
    encrypted ones) and the client ids excluded from it."""

    offset: int
    at: float
    frame: bytes
    event: str
    data: Any
    exclude: frozenset[str]


class HistoryStore(Protocol):
    """Where a history room's messages are numbered and kept."""

    def append(
        self, room: str, event: str, data: Any, exclude: frozenset[str], frame: Frame
    ) -> tuple[str, Entry]:
        """Number one message (the room's next offset) and keep it: (epoch, entry)."""
        ...

    def position(self, room: str) -> tuple[str, int]:
        """(epoch, offset of the last message); a room never seen gets a fresh epoch."""
        ...

    def since(self, room: str, epoch: str, offset: int) -> list[Entry] | None:
        """Every kept message after `offset`, in order; None when they cannot all be given
        (another epoch, an offset ahead of the room's, or some of them no longer kept)."""
        ...

    def kept(self, room: str) -> tuple[str, int, list[Entry]]:
        """(epoch, offset of the last message, every message still kept, in order)."""
        ...


def new_epoch() -> str:
    return secrets.token_hex(4)


@dataclass(slots=True)
class _Ring:
    epoch: str
    touched: float
    offset: int = 0
    entries: deque[Entry] = field(default_factory=deque)


class MemoryHistory:
    """`HistoryStore` in this process: the last `size` messages of each room, each kept for
    `ttl` seconds; a room whose last message (or first look) is older than `ttl` is
    forgotten, so it comes back with a new epoch."""

    def __init__(self, size: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        if size < 1 or ttl <= 0:
            raise ValueError(f"history size and ttl must be positive: {size}, {ttl}")
        self.size = size
        self.ttl = ttl
        self._clock = clock
        self._rooms: dict[str, _Ring] = {}
        self._appends = 0

    def _ring(self, room: str, now: float) -> _Ring:
        ring = self._rooms.get(room)
        if ring is not None and now - ring.touched > self.ttl:
            ring = None  # everything in it expired: the room starts over
        if ring is None:
            ring = self._rooms[room] = _Ring(new_epoch(), now)
        return ring

    def _trim(self, ring: _Ring, now: float) -> None:
        entries = ring.entries
        while entries and (len(entries) > self.size or now - entries[0].at > self.ttl):
            entries.popleft()

    def append(
        self, room: str, event: str, data: Any, exclude: frozenset[str], frame: Frame
    ) -> tuple[str, Entry]:
        now = self._clock()
        ring = self._ring(room, now)
        ring.offset += 1
        ring.touched = now
        entry = Entry(ring.offset, now, frame(ring.offset), event, data, exclude)
        ring.entries.append(entry)
        self._trim(ring, now)
        self._appends += 1
        if self._appends % 4096 == 0:
            self.purge(now)
        return ring.epoch, entry

    def position(self, room: str) -> tuple[str, int]:
        ring = self._ring(room, self._clock())
        return ring.epoch, ring.offset

    def since(self, room: str, epoch: str, offset: int) -> list[Entry] | None:
        now = self._clock()
        ring = self._ring(room, now)
        if epoch != ring.epoch or not 0 <= offset <= ring.offset:
            return None
        if offset == ring.offset:
            return []
        self._trim(ring, now)
        entries = ring.entries
        if not entries or entries[0].offset > offset + 1:
            return None
        return [e for e in entries if e.offset > offset]

    def kept(self, room: str) -> tuple[str, int, list[Entry]]:
        now = self._clock()
        ring = self._ring(room, now)
        self._trim(ring, now)
        return ring.epoch, ring.offset, list(ring.entries)

    def purge(self, now: float | None = None) -> None:
        """Forget the rooms whose history has wholly expired."""
        now = self._clock() if now is None else now
        stale = [r for r, ring in self._rooms.items() if now - ring.touched > self.ttl]
        for room in stale:
            del self._rooms[room]

    def __len__(self) -> int:
        return len(self._rooms)


__all__ = ["Entry", "Frame", "HistoryStore", "MemoryHistory", "new_epoch"]
