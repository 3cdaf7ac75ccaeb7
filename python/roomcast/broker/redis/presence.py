"""Presence in Redis: per room, one hash `ws:presence:{p:<room>}` whose field per node holds
that node's members of the room and the Redis time until which they count.

Each node rewrites its fields every `interval` (a third of the TTL at most); a node that
dies stops refreshing, so its members stop counting at most `ttl` later, and readers delete
the expired fields. The hash itself expires twice the TTL after the last write.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from .history import _Script, _text, client_for
from .target import RedisTarget

logger = logging.getLogger("roomcast.redis")

# KEYS: the room's hash. ARGV: node id, ttl ms, members (JSON). Stamps with Redis time.
WRITE = """
local now = redis.call('TIME')
local until_ms = now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', until_ms) .. ' ' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
return 1
"""

# KEYS: the room's hash. Returns {now ms, field, value, field, value, ...}; drops expired.
READ = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {ms}
for i = 1, #all, 2 do
  local until_ms = tonumber(string.match(all[i + 1], '^(%d+) '))
  if until_ms and until_ms > ms then
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
"""

_WRITE = _Script(WRITE)
_READ = _Script(READ)


def key_of(room: str) -> str:
    return f"ws:presence:{{p:{room}}}"


class RedisPresence:
    """A node's side of cluster-wide presence."""

    def __init__(self, target: RedisTarget, ttl: float) -> None:
        self.target = target
        self.ttl_ms = max(1, round(ttl * 1000))
        self.interval = min(1.0, ttl / 3)
        self._client: Any = None

    def _redis(self) -> Any:
        if self._client is None:
            self._client = client_for(self.target)
        return self._client

    async def write(
        self, node: str, rooms: dict[str, list[dict[str, str]]], gone: set[str]
    ) -> None:
        """This node's members of `rooms` (refreshed), and no more of the `gone` rooms."""
        client = self._redis()
        for room, members in rooms.items():
            await _WRITE(client, [key_of(room)], [node, self.ttl_ms, orjson.dumps(members)])
        for room in gone:
            await client.hdel(key_of(room), node)

    async def read(self, room: str, skip: str) -> list[dict[str, str]]:
        """The live members of every node but `skip`."""
        reply = await _READ(self._redis(), [key_of(room)], [])
        members: list[dict[str, str]] = []
        for i in range(1, len(reply), 2):
            if _text(reply[i]) == skip:
                continue
            raw = reply[i + 1]
            members.extend(orjson.loads(raw[raw.index(b" ") + 1 :]))
        return members

    async def forget(self, node: str, rooms: set[str]) -> None:
        client = self._redis()
        for room in rooms:
            await client.hdel(key_of(room), node)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


__all__ = ["RedisPresence", "key_of"]
