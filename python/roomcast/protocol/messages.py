"""Pure protocol pieces, no I/O: message decoding, encoding, room rules and envelopes."""

from __future__ import annotations

from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any, Final

import orjson

from .constants import (
    CLOSE_REASON_LIMIT,
    DISCONNECT_TYPE,
    INTERNAL_ROOM_PREFIX,
    ROOM_NAME_MAX_LENGTH,
    WebSocketEvents,
)


class _Missing:
    """Marks an absent `data` key (distinct from JSON null)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()


class InvalidMessage(Exception):
    """A frame that is not a JSON object."""


class InvalidText(Exception):
    """A text frame that is not valid UTF-8 (RFC 6455 requires failing the connection)."""


def decode(payload: bytes | memoryview, is_text: bool) -> dict[str, Any]:
    """Parse one client message; raise InvalidText or InvalidMessage."""
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        if is_text:
            try:
                bytes(payload).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidText from None
        raise InvalidMessage from None
    if type(message) is not dict:
        raise InvalidMessage
    return message


def encode(event: str, data: Any = MISSING) -> bytes:
    """One server message: `{"event","data"}`, without `data` when there is none."""
    if data is MISSING:
        return orjson.dumps({"event": event})
    return orjson.dumps({"event": event, "data": data})


def encode_at(event: str, data: Any, room: str | None, offset: int | None) -> bytes:
    """A message with its stream position when it has one (a history room's, SPEC §10):
    `{"event","data","room","offset"}` (no `data` if none); else as `encode`."""
    if room is None:
        return encode(event, data)
    if data is MISSING:
        return orjson.dumps({"event": event, "room": room, "offset": offset})
    return orjson.dumps({"event": event, "data": data, "room": room, "offset": offset})


def error_payload(message: str) -> bytes:
    return encode(WebSocketEvents.ERROR, {"message": message})


def iso_now() -> str:
    """Current UTC time as ISO-8601 with milliseconds and a Z, as JavaScript prints it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def requested_rooms(data: Any) -> list[Any]:
    """The `rooms` list of a join/leave payload; malformed payloads give an empty list."""
    if type(data) is not dict:
        return []
    rooms = data.get("rooms")
    return rooms if type(rooms) is list else []


def sanitize_rooms(rooms: list[Any]) -> list[str]:
    """Room names a client may ask to join, in order, without duplicates."""
    seen: dict[str, None] = {}
    for room in rooms:
        if (
            type(room) is str
            and 0 < len(room) <= ROOM_NAME_MAX_LENGTH
            and not room.startswith(INTERNAL_ROOM_PREFIX)
        ):
            seen[room] = None
    return list(seen)


# -- cross-node envelopes ----------------------------------------------------------------


def encode_envelope(
    server_id: str,
    type_: str,
    event: str,
    data: Any,
    target: str | None = None,
    exclude: list[str] | None = None,
) -> bytes:
    """The camelCase envelope the original writes; absent fields omitted, as JSON.stringify does."""
    envelope: dict[str, Any] = {"serverId": server_id, "type": type_}
    if target is not None:
        envelope["target"] = target
    envelope["event"] = event
    if data is not MISSING:
        envelope["data"] = data
    if exclude:
        envelope["exclude"] = exclude
    return orjson.dumps(envelope)


class Envelope:
    __slots__ = ("data", "epoch", "event", "exclude", "offset", "server_id", "target", "type")

    def __init__(
        self,
        server_id: str,
        type_: Any,
        target: Any,
        event: str,
        data: Any,
        exclude: list[str] | None,
        offset: int | None = None,
        epoch: str | None = None,
    ) -> None:
        self.server_id = server_id
        self.type = type_
        self.target = target
        self.event = event
        self.data = data
        self.exclude = exclude
        # A history room's position (SPEC §10), set by the Redis history script.
        self.offset = offset
        self.epoch = epoch


def decode_envelope(raw: bytes | str) -> Envelope | None:
    """Parse an envelope; None when it is not a JSON object with string serverId and event."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(parsed) is not dict:
        return None
    server_id = parsed.get("serverId")
    event = parsed.get("event")
    if type(server_id) is not str or type(event) is not str:
        return None
    exclude = parsed.get("exclude")  # rare: most envelopes have none
    if exclude is not None:
        if type(exclude) is list:
            exclude = [x for x in exclude if type(x) is str] or None
        else:
            exclude = None
    target = parsed.get("target")
    offset = parsed.get("offset")
    epoch = parsed.get("epoch")
    return Envelope(
        server_id,
        parsed.get("type"),
        target if type(target) is str and target else None,
        event,
        parsed.get("data", MISSING),
        exclude,
        offset if type(offset) is int else None,
        epoch if type(epoch) is str else None,
    )


# How many room names a RoomGlob remembers before it forgets them all.
_CACHE_LIMIT = 65536


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
    return encode_at(event, data, room, offset)


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


# -- disconnect envelopes (ours) --------------------------------------------------------

DISCONNECT_SCOPES = ("client", "user")


def valid_close_code(code: int) -> bool:
    """A close code an application may send (RFC 6455 §7.4): 1000, or 3000-4999."""
    return code == 1000 or 3000 <= code <= 4999


def encode_disconnect(server_id: str, scope: str, target: str, code: int, reason: str) -> bytes:
    """`{"serverId","type":"disconnect","target","event":"disconnect","data":{"scope",
    "code","reason"}}`: close client `target` (scope "client") or every session of user
    `target` (scope "user")."""
    data = {"scope": scope, "code": code, "reason": reason}
    return encode_envelope(server_id, DISCONNECT_TYPE, DISCONNECT_TYPE, data, target)


def disconnect_of(data: Any) -> tuple[str, int, str] | None:
    """(scope, code, reason) of a disconnect envelope's data; None when malformed."""
    if type(data) is not dict:
        return None
    scope, code, reason = data.get("scope"), data.get("code"), data.get("reason")
    if scope not in DISCONNECT_SCOPES or type(code) is not int or type(reason) is not str:
        return None
    if not valid_close_code(code) or len(reason.encode()) > CLOSE_REASON_LIMIT:
        return None
    return scope, code, reason
