"""Reading replies from a redis-py connection: the one place that knows redis-py's internals.

The fast path reads straight from the connection's hiredis reader (`_parser._reader`) and
its stream (`_parser._stream`): redis-py's `read_response` costs several coroutine frames
and checks per reply, as much as the rest of a message's way through a node, and pub/sub and
pipelined PUBLISH replies need none of it. It is used only with a redis-py major version
whose parser it was tested against, when hiredis is there, and unless `ROOMCAST_REDIS_PARSER`
is `public` (CI runs the Redis tests both ways); otherwise the public `read_response` is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import redis
from redis.asyncio.connection import Connection

logger = logging.getLogger("roomcast.redis")

TESTED_MAJORS = range(5, 9)
"""redis-py major versions whose hiredis parser internals the fast path was tested against
(5.3.1, 6.4.0, 7.4.1, 8.1.0); keep in step with the pin in pyproject.toml."""
PARSER_ENV = "ROOMCAST_REDIS_PARSER"
"""`public` forces redis-py's public `read_response` (the fallback), `fast` or unset allows
the fast path."""
READ_SIZE = 65536


def _not_enough_data() -> tuple[object, str]:
    """The marker the hiredis reader returns when no whole reply is buffered, or None and
    why the fast path cannot be used with this redis-py."""
    major = redis.VERSION[0]
    if not isinstance(major, int) or major not in TESTED_MAJORS:
        return None, f"redis-py {redis.__version__} is not a tested version"
    try:
        from redis._parsers.hiredis import NOT_ENOUGH_DATA
    except ImportError:
        return None, f"redis-py {redis.__version__} has no hiredis parser marker"
    return NOT_ENOUGH_DATA, ""


# Checked once, when the module is imported.
_MORE, _WHY_NOT = _not_enough_data()
_public = os.environ.get(PARSER_ENV, "fast") == "public"
_logged = False


def fast_path_enabled() -> bool:
    """Whether connections with the hiredis parser are read through its internals."""
    return _MORE is not None and not _public


def use_public_parser(public: bool) -> bool:
    """Force (True) or allow (False) the public path for connections opened from now on, as
    `ROOMCAST_REDIS_PARSER=public` does for a whole process; returns the previous setting.
    For tests, which run the Redis tests both ways."""
    global _public, _logged
    previous, _public, _logged = _public, public, False
    return previous


def _log_path(fast: bool, why: str) -> None:
    global _logged
    if not _logged:
        _logged = True
        if fast:
            version = redis.__version__
            logger.debug("reading redis replies from hiredis directly (redis-py %s)", version)
        else:
            logger.debug("reading redis replies through redis-py's read_response (%s)", why)


class Replies:
    """Replies of one connection, read after it connected.

    `gets()` returns the next reply already buffered, or `more` when there is none (then
    `fill()` reads); both are None on the public path, where only `next()` works.
    """

    __slots__ = ("_feed", "_read", "conn", "gets", "more", "next")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.gets: Callable[[], Any] | None = None
        self.more: object = None
        self.next: Callable[[], Any] = self._public
        # redis-py's private parser: untyped, and present only as checked here.
        parser = getattr(conn, "_parser", None)
        reader: Any = getattr(parser, "_reader", None)
        stream: Any = getattr(parser, "_stream", None)
        if _MORE is None or _public or not (hasattr(reader, "gets") and hasattr(stream, "read")):
            why = _WHY_NOT or (f"{PARSER_ENV}=public" if _public else "no hiredis reader")
            _log_path(False, why)
            return
        _log_path(True, "")
        self.gets = reader.gets
        self._feed: Callable[[bytes], None] = reader.feed
        self._read: Callable[[int], Any] = stream.read
        self.more = _MORE
        self.next = self._fast

    async def _fast(self) -> Any:
        gets, more = self.gets, self.more
        assert gets is not None
        reply = gets()
        while reply is more:
            await self.fill()
            reply = gets()
        if isinstance(reply, Exception):  # error replies come back as values
            raise reply
        return reply

    async def fill(self) -> None:
        """Read what the socket has into the hiredis reader (fast path only)."""
        data = await self._read(READ_SIZE)
        if not data:
            raise ConnectionError(f"connection closed by {self.conn.host}:{self.conn.port}")
        self._feed(data)

    async def _public(self) -> Any:
        return await self.conn.read_response(disconnect_on_error=False)


def transport_of(conn: Connection) -> Any:
    """The asyncio transport a connected redis-py connection writes to (its stream writer's),
    or None when this redis-py keeps it elsewhere: then writes go through
    `send_packed_command` only."""
    writer: Any = getattr(conn, "_writer", None)
    transport = getattr(writer, "transport", None)
    if all(hasattr(transport, name) for name in ("write", "is_closing", "get_write_buffer_size")):
        return transport
    return None


__all__ = [
    "PARSER_ENV",
    "TESTED_MAJORS",
    "Replies",
    "fast_path_enabled",
    "transport_of",
    "use_public_parser",
]
