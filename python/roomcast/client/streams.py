"""Recovery positions of history rooms, and the order and uniqueness of their messages.

A pure object (no I/O): the connection feeds it the history messages and `joined` answers it
receives and asks it what to send on a (re)join; it answers with the messages to hand to the
application and the rooms to re-synchronise.

Rules (SPEC §10):
- A room is *synced* on a connection once its `joined` arrived there. Until then its messages
  are held: on `recovered: true` they are sorted by offset and those after the position sent
  back are handed over once each; on `recovered: false` with no position before (a first
  join) they are handed over as they came; on `recovered: false` after a position (a gap)
  they are dropped: the application reloads the room's state as of the answer, and every
  message handed over after it is newer than that.
- A synced room expects offset last + 1. Anything else (a skip: a message lost on its way,
  or one the client was excluded from; an offset that goes back: Redis lost the stream and a
  new epoch began) is re-synchronised: the connection leaves and re-joins the room with its
  position, and the server replays what is missing or says it cannot (a gap).
- A position is only ever the `epoch` of a `joined` with an offset the client reached in that
  epoch: a new epoch is never paired with an old offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .messages import Joined, Message, Position

# Messages held for a room that is not synced yet; past this the oldest go and the room's
# next `joined` is a gap (a server that never answers cannot grow the client without bound).
MAX_HELD = 100_000


@dataclass(slots=True)
class _Room:
    position: Position | None = None
    synced: bool = False
    asked: Position | None = None  # the position sent back on this connection's join
    requested: bool = False  # a join (or re-sync) of this room is waiting for `joined`
    held: list[Message] = field(default_factory=list)
    overflowed: bool = False


class Streams:
    """The client's history rooms: positions (kept across connections) and per-connection
    sync state."""

    def __init__(self, recover: bool = True, max_held: int = MAX_HELD) -> None:
        self.recover = recover
        self._max_held = max_held
        self._rooms: dict[str, _Room] = {}
        self.replayed = 0  # messages handed over from a recovery (for figures and tests)

    def positions(self) -> dict[str, Position]:
        """The last position of every history room the client has one for."""
        return {r: s.position for r, s in self._rooms.items() if s.position is not None}

    def set_position(self, room: str, position: Position) -> None:
        """Start from a position kept elsewhere (e.g. by a previous process)."""
        self._rooms.setdefault(room, _Room()).position = position

    def known(self, room: str) -> bool:
        """True once the room showed itself a history room (a `joined`, a numbered message,
        or a position given)."""
        return room in self._rooms

    def forget(self, room: str) -> None:
        """The client left the room: no position any more."""
        self._rooms.pop(room, None)

    def new_connection(self) -> None:
        """A new connection: nothing is synced on it yet."""
        for state in self._rooms.values():
            state.synced = False
            state.asked = None
            state.requested = False
            state.held.clear()
            state.overflowed = False

    def recover_for(self, rooms: list[str]) -> dict[str, dict[str, object]]:
        """The `recover` map of a join of `rooms` on this connection (positions of the rooms
        the client has one for), and the rooms marked as waiting for their `joined`."""
        wanted: dict[str, dict[str, object]] = {}
        for room in rooms:
            state = self._rooms.get(room)
            if state is None or state.synced:
                continue
            state.requested = True
            if self.recover and state.position is not None:
                state.asked = state.position
                wanted[room] = {"epoch": state.position.epoch, "offset": state.position.offset}
        return wanted

    def on_message(
        self, message: Message, can_resync: bool = True
    ) -> tuple[list[Message], str | None]:
        """A history room's message: what to hand over now, and the room to re-synchronise
        (leave and join again with `recover`) if its stream broke. A room the client cannot
        re-join itself (`can_resync` False: the server put it there) takes the message as
        it comes."""
        room, offset = message.room, message.offset
        assert room is not None and offset is not None
        state = self._rooms.setdefault(room, _Room())
        if not state.synced:
            self._hold(state, message)
            return [], None
        position = state.position
        assert position is not None
        if offset == position.offset + 1:
            state.position = Position(position.epoch, offset)
            return [message], None
        if not can_resync:
            epoch = position.epoch if offset > position.offset else ""
            state.position = Position(epoch, offset)
            return [message], None
        # A skip or a step back: re-sync from the last position the client reached.
        state.synced = False
        state.requested = False
        state.held = [message]
        return [], room

    def resync_request(self, room: str) -> dict[str, dict[str, object]]:
        """The `recover` map for re-joining `room` after `on_message` asked for it."""
        return self.recover_for([room])

    def on_joined(
        self, room: str, epoch: str, offset: int, recovered: bool, adopt: bool = False
    ) -> tuple[Joined | None, list[Message], bool]:
        """A `joined` answer: the record for the application (None: nothing to tell), the
        held messages to hand over, and whether the room must be re-synchronised at once (a
        `joined` the client did not ask for, e.g. a default room joined at login, while it
        has a position there: the connection re-joins it with that position)."""
        state = self._rooms.setdefault(room, _Room())
        current = state.position
        if not adopt and not state.requested and current is not None:
            if state.synced and epoch == current.epoch:
                # A second answer for a room in sync (a join overtaken by a leave and a new
                # join of the same room): nothing in it is newer than what the client has.
                return None, [], False
            if self.recover and (state.synced or not recovered):
                # Joined by the server (login, `join_room`) without the client's position,
                # or a stream that changed under a room in sync: re-join with the position.
                state.synced = False
                return None, [], True
        previous = state.asked
        if previous is None and state.requested and state.position is not None:
            previous = state.position  # recover=False: the client had a position all the same
        held, state.held = state.held, []
        overflowed, state.overflowed = state.overflowed, False
        if recovered and previous is not None and not overflowed:
            out: list[Message] = []
            last = previous.offset
            if current is not None and current.epoch == previous.epoch:
                last = max(last, current.offset)  # never hand over an offset twice
            for message in sorted(held, key=_offset):
                if _offset(message) > last:
                    out.append(message)
                    last = _offset(message)
            self.replayed += len(out)
            gap = False
            if epoch == previous.epoch:
                offset = max(offset, last)
        else:
            gap = previous is not None or overflowed
            # After a gap the application reloads the room's state as of now: what came
            # before this answer is part of that state, so only later messages follow.
            out = [] if gap else held
        if current is not None and current.epoch == epoch and current.offset > offset:
            offset = current.offset  # a late answer never moves the position back
        state.position = Position(epoch, offset)
        state.synced = True
        state.asked = None
        state.requested = False
        return Joined(room, epoch, offset, recovered, gap, previous), out, False

    def _hold(self, state: _Room, message: Message) -> None:
        if len(state.held) >= self._max_held:
            del state.held[0]
            state.overflowed = True
        state.held.append(message)


def _offset(message: Message) -> int:
    assert message.offset is not None
    return message.offset
