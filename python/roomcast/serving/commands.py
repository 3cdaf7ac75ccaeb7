"""The server API's commands (`roomcast.serving.api`): each request body checked field by
field into a value, with a short message naming what is wrong (400) and nothing sent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..protocol.constants import (
    API_SERVER_ID,
    CLOSE_REASON_LIMIT,
    WebSocketChannels,
    WebSocketMessageTypes,
)
from ..protocol.messages import MISSING, encode_disconnect, encode_envelope, valid_close_code
from ..transport.httpapi import ApiError

BATCH_LIMIT = 10_000
"""Most commands in one `/api/batch`."""


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


@dataclass(frozen=True, slots=True)
class Publish:
    """One message: `type` is room, user, client or broadcast (then `target` is None)."""

    type: str
    target: str | None
    event: str
    data: Any
    exclude: list[str] | None

    @property
    def channel(self) -> str:
        if self.type == WebSocketMessageTypes.ROOM:
            return WebSocketChannels.for_room(self.target or "")
        if self.type == WebSocketMessageTypes.USER:
            return WebSocketChannels.for_user(self.target or "")
        if self.type == WebSocketMessageTypes.CLIENT:
            return WebSocketChannels.for_client(self.target or "")
        return WebSocketChannels.BROADCAST

    def envelope(self) -> bytes:
        return encode_envelope(
            API_SERVER_ID, self.type, self.event, self.data, self.target, self.exclude
        )


@dataclass(frozen=True, slots=True)
class Disconnect:
    scope: str  # "client" or "user"
    target: str
    code: int
    reason: str

    @property
    def channel(self) -> str:
        if self.scope == "client":
            return WebSocketChannels.for_client(self.target)
        return WebSocketChannels.for_user(self.target)

    def envelope(self) -> bytes:
        return encode_disconnect(API_SERVER_ID, self.scope, self.target, self.code, self.reason)


def _object(value: Any, where: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise _bad(f"{where} must be a JSON object")
    return value


def _check_fields(body: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for name in body:
        if name not in allowed:
            raise _bad(f"{where}unknown field: {name}")


def _string(body: dict[str, Any], name: str, where: str) -> str:
    if name not in body:
        raise _bad(f"{where}missing field: {name}")
    value = body[name]
    if type(value) is not str or not value:
        raise _bad(f"{where}{name} must be a non-empty string")
    return value


def _exclude(body: dict[str, Any], where: str) -> list[str] | None:
    value = body.get("exclude")
    if value is None:
        return None
    if type(value) is not list or any(type(x) is not str for x in value):
        raise _bad(f"{where}exclude must be a list of client ids")
    return value or None


_TARGETS = ("room", "user", "client")
_PUBLISH_FIELDS = (*_TARGETS, "event", "data", "exclude")
_BROADCAST_FIELDS = ("event", "data", "exclude")


def parse_publish(body: Any, where: str = "") -> Publish:
    body = _object(body, where.rstrip(": ") or "the body")
    _check_fields(body, _PUBLISH_FIELDS, where)
    given = [name for name in _TARGETS if name in body]
    if len(given) != 1:
        raise _bad(f"{where}give exactly one of room, user or client")
    kind = given[0]
    target = _string(body, kind, where)
    event = _string(body, "event", where)
    exclude = _exclude(body, where)
    if exclude is not None and kind != "room":
        raise _bad(f"{where}exclude applies to a room (or a broadcast), not a {kind}")
    return Publish(kind, target, event, body.get("data", MISSING), exclude)


def parse_broadcast(body: Any, where: str = "") -> Publish:
    body = _object(body, where.rstrip(": ") or "the body")
    _check_fields(body, _BROADCAST_FIELDS, where)
    event = _string(body, "event", where)
    return Publish(
        WebSocketMessageTypes.BROADCAST, None, event, body.get("data", MISSING), _exclude(body, "")
    )


def parse_batch(body: Any) -> list[Publish]:
    body = _object(body, "the body")
    _check_fields(body, ("commands",), "")
    if "commands" not in body:
        raise _bad("missing field: commands")
    commands = body["commands"]
    if type(commands) is not list:
        raise _bad("commands must be a list")
    if len(commands) > BATCH_LIMIT:
        raise _bad(f"too many commands: {len(commands)} (at most {BATCH_LIMIT})")
    parsed: list[Publish] = []
    for index, command in enumerate(commands):
        where = f"commands[{index}]"
        if type(command) is not dict or len(command) != 1:
            raise _bad(f"{where} must be an object with one key, publish or broadcast")
        ((name, inner),) = command.items()
        if name == "publish":
            parsed.append(parse_publish(inner, f"{where}.publish: "))
        elif name == "broadcast":
            parsed.append(parse_broadcast(inner, f"{where}.broadcast: "))
        else:
            raise _bad(f"{where}: unknown command: {name}")
    return parsed


def parse_disconnect(body: Any) -> Disconnect:
    body = _object(body, "the body")
    _check_fields(body, ("client", "user", "code", "reason"), "")
    given = [name for name in ("client", "user") if name in body]
    if len(given) != 1:
        raise _bad("give exactly one of client or user")
    scope = given[0]
    target = _string(body, scope, "")
    code = body.get("code", 1000)
    if type(code) is not int or not valid_close_code(code):
        raise _bad(f"code must be 1000 or 3000-4999, got {code!r}")
    reason = body.get("reason", "")
    if type(reason) is not str:
        raise _bad("reason must be a string")
    if len(reason.encode()) > CLOSE_REASON_LIMIT:
        raise _bad(f"reason longer than {CLOSE_REASON_LIMIT} bytes")
    return Disconnect(scope, target, code, reason)


def parse_room(body: Any) -> str:
    body = _object(body, "the body")
    _check_fields(body, ("room",), "")
    return _string(body, "room", "")


def parse_history(body: Any) -> tuple[str, tuple[str, int] | None, int | None]:
    body = _object(body, "the body")
    _check_fields(body, ("room", "since", "limit"), "")
    room = _string(body, "room", "")
    since = body.get("since")
    position: tuple[str, int] | None = None
    if since is not None:
        since = _object(since, "since")
        _check_fields(since, ("epoch", "offset"), "since: ")
        epoch, offset = since.get("epoch"), since.get("offset")
        if type(epoch) is not str:
            raise _bad("since.epoch must be a string")
        if type(offset) is not int or offset < 0:
            raise _bad("since.offset must be a whole number >= 0")
        position = (epoch, offset)
    limit = body.get("limit")
    if limit is not None and (type(limit) is not int or limit < 1):
        raise _bad("limit must be a whole number >= 1")
    return room, position, limit


def parse_info(body: Any) -> None:
    _check_fields(_object(body, "the body"), (), "")


__all__ = [
    "BATCH_LIMIT",
    "Disconnect",
    "Publish",
    "parse_batch",
    "parse_broadcast",
    "parse_disconnect",
    "parse_history",
    "parse_info",
    "parse_publish",
    "parse_room",
]
