"""The servers' history settings in Redis, so that emitters number the same rooms.

A server with history rooms writes `ws:history:settings` (JSON: `rooms`, the glob; `size`;
`ttl`, seconds) at start and every `REFRESH` seconds, expiring `EXPIRY` seconds after the
last write: the key goes away a minute after the last such server stops, and comes back
within `REFRESH` after Redis lost it. `WebSocketEmitter.configure()` (and `roomcast emit`)
read it when not told the settings.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from .history import RedisHistory, client_for
from .target import RedisTarget

logger = logging.getLogger("roomcast.redis")

KEY = "ws:history:settings"
EXPIRY = 60
REFRESH = 20.0

# The settings by the emitter's (and the server options') names.
Settings = dict[str, Any]


def encode_settings(rooms: str, size: int, ttl: float) -> bytes:
    return orjson.dumps({"rooms": rooms, "size": size, "ttl": ttl})


def decode_settings(raw: Any) -> Settings | None:
    """`{"history_rooms", "history_size", "history_ttl"}` from the key's value; None when
    it is missing or not what a server writes."""
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    rooms, size, ttl = value.get("rooms"), value.get("size"), value.get("ttl")
    if not isinstance(rooms, str) or not rooms or type(size) is not int or size < 1:
        return None
    if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not ttl > 0:
        return None
    return {"history_rooms": rooms, "history_size": size, "history_ttl": float(ttl)}


async def read_settings(target: RedisTarget) -> Settings | None:
    """The settings the servers published, on a connection of its own (closed after)."""
    client = client_for(target)
    try:
        return decode_settings(await client.get(KEY))
    finally:
        await client.aclose()


async def keep_settings(history: RedisHistory, rooms: str) -> None:
    """A server's task: write its settings now and every `REFRESH` seconds; warn once when
    the key held other settings (another server configured otherwise)."""
    value = encode_settings(rooms, history.size, history.ttl)
    warned = False
    while True:
        try:
            client = await history.client()
            old = await client.set(KEY, value, ex=EXPIRY, get=True)
            if old is not None and old != value and not warned:
                warned = True
                logger.warning(
                    "history settings in redis were %s, this node's are %s: the servers "
                    "differ, and an emitter numbers the rooms of whichever wrote last",
                    old.decode(errors="replace") if isinstance(old, bytes) else old,
                    value.decode(),
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # redis away: the next round tries again
            logger.debug("history settings not written to redis: %s", exc)
        await asyncio.sleep(REFRESH)


__all__ = ["KEY", "decode_settings", "encode_settings", "keep_settings", "read_settings"]
