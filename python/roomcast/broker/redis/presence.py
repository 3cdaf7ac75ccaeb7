"""Presence in Redis: per room, one hash `ws:presence:{p:<room>}` holding, for each node with
members there, a stamp `n:<node>` (the Redis time in ms until which its members count) and
one field `m:<node>:<client id>` per member (the member as answered, JSON).

A join or a leave writes its one field (and the node's stamp) at once, through one writer
task per node: changes are applied in the order they were made, those made while a write is
in flight go together in the next pipeline, and whoever waits for one (the join answer,
SPEC §10) hears when it is in Redis. Each node re-stamps its rooms every `interval` (a third
of the TTL at most); a node that dies stops, so its members stop counting at most `ttl`
later, and readers delete them. A stamp found missing where this node had written one (a
Redis restart, or a reader that took the node for dead) makes the node write the room's
members whole again. The hash expires twice the TTL after the last write.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from ...aio import stop_task
from .script import Script, client_for
from .target import RedisTarget

logger = logging.getLogger("roomcast.redis")

# KEYS: the room's hash. ARGV: node, ttl ms, number of members added, then the added
# members' (client id, member JSON) pairs, then the removed members' client ids. Stamps the
# node with Redis time; returns 1 when its stamp was there already, else 0.
CHANGE = """
local now = redis.call('TIME')
local until_ms = now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[2])
local node = ARGV[1]
local had = redis.call('HSET', KEYS[1], 'n:' .. node, string.format('%d', until_ms)) == 0
local added = tonumber(ARGV[3])
local i = 4
for _ = 1, added do
  redis.call('HSET', KEYS[1], 'm:' .. node .. ':' .. ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HDEL', KEYS[1], 'm:' .. node .. ':' .. ARGV[i])
  i = i + 1
end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
return had and 1 or 0
"""

# KEYS: the room's hash. ARGV: node, ttl ms, then (client id, member JSON) pairs: the
# node's members of the room, whole (its other member fields are deleted). Stamps the node.
REPLACE = """
local now = redis.call('TIME')
local until_ms = now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[2])
local prefix = 'm:' .. ARGV[1] .. ':'
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[1], field)
  end
end
redis.call('HSET', KEYS[1], 'n:' .. ARGV[1], string.format('%d', until_ms))
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], prefix .. ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
return 1
"""

# KEYS: the room's hash. ARGV: node, ttl ms (0: take the node out). Returns 1 when the
# node's stamp was there already, else 0 (and writes none when taking the node out).
STAMP = """
local node = ARGV[1]
if tonumber(ARGV[2]) == 0 then
  local prefix = 'm:' .. node .. ':'
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(field, 1, #prefix) == prefix then
      redis.call('HDEL', KEYS[1], field)
    end
  end
  return redis.call('HDEL', KEYS[1], 'n:' .. node)
end
local now = redis.call('TIME')
local until_ms = now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[2])
local had = redis.call('HSET', KEYS[1], 'n:' .. node, string.format('%d', until_ms)) == 0
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
return had and 1 or 0
"""

# KEYS: the room's hash. ARGV: a node to leave out, the most members to return. Returns
# {live members (of the other nodes too), member JSON, ...}; deletes dead nodes' fields.
READ = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  local field = all[i]
  if string.sub(field, 1, 2) == 'n:' then
    if tonumber(all[i + 1]) > ms then
      live[string.sub(field, 3)] = true
    else
      redis.call('HDEL', KEYS[1], field)
    end
  end
end
local skip = ARGV[1]
local limit = tonumber(ARGV[2])
local out = {0}
for i = 1, #all, 2 do
  local field = all[i]
  if string.sub(field, 1, 2) == 'm:' then
    local node = string.match(field, '^m:([^:]*):')
    if node and live[node] then
      if node ~= skip then
        out[1] = out[1] + 1
        if out[1] <= limit then
          out[#out + 1] = all[i + 1]
        end
      end
    else
      redis.call('HDEL', KEYS[1], field)
    end
  end
end
return out
"""

_SCRIPTS = {name: Script(source) for name, source in (("change", CHANGE), ("replace", REPLACE))}
_STAMP = Script(STAMP)
_READ = Script(READ)
_SCRIPTS["stamp"] = _STAMP

# Presence reads in flight at once per node, and the read pool's connections: a flood of
# requests waits its turn on these instead of opening connections.
CONCURRENT_READS = 8
# The writer's connections' name (one per Redis node it writes to).
WRITER_NAME = "roomcast-presence-writer"

Member = dict[str, str]
MembersOf = Callable[[str], list[Member]]


def key_of(room: str) -> str:
    return f"ws:presence:{{p:{room}}}"


def _member_json(member: Member) -> bytes:
    return orjson.dumps(member)


class RedisPresence:
    """A node's side of cluster-wide presence. `members_of(room)` gives this node's members
    of a room now (to write them whole again when Redis lost them)."""

    def __init__(
        self,
        target: RedisTarget,
        ttl: float,
        node: str,
        members_of: MembersOf,
        timeout: float | None = None,
    ) -> None:
        # A bounded pool for reads (redis-py's default is unbounded), waited for in turn.
        kwargs = {**target.connection_kwargs, "max_connections": CONCURRENT_READS}
        self.target = dataclasses.replace(target, connection_kwargs=kwargs)
        self.ttl_ms = max(1, round(ttl * 1000))
        self.interval = min(1.0, ttl / 3)
        self.node = node
        self._members_of = members_of
        # Every connect and reply waits at most this long (`history_timeout`): a frozen
        # Redis fails a write (written whole again later) or a read (answered without it).
        self.timeout = timeout
        self._client: Any = None
        self._writer_client: Any = None
        self._connecting = asyncio.Lock()
        self._reads = asyncio.Semaphore(CONCURRENT_READS)
        # What the writer sends next: member changes by room (None: a removal), rooms to
        # stamp, rooms to write whole, and who waits for them.
        self._changes: dict[str, dict[str, Member | None]] = {}
        self._stamps: set[str] = set()
        self._repairs: set[str] = set()
        self._next: asyncio.Future[bool] | None = None  # one for every caller of a batch
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._written: set[str] = set()  # rooms this node has a stamp in
        self.failed = 0  # writes that did not reach Redis
        self.pipelines = 0

    # -- writes --------------------------------------------------------------------------

    def add(self, room: str, member: Member) -> asyncio.Future[bool]:
        """Write `member` (`{"clientId", "userId"?}`) into the room's presence, behind every
        change made before; the future says whether it reached Redis (never raises)."""
        self._changes.setdefault(room, {})[member["clientId"]] = member
        return self._wait()

    def remove(self, room: str, client_id: str) -> asyncio.Future[bool]:
        """`add`'s opposite."""
        self._changes.setdefault(room, {})[client_id] = None
        return self._wait()

    def refresh(self, rooms: Iterable[str]) -> asyncio.Future[bool]:
        """Re-stamp this node in `rooms` (its members there keep counting for the TTL)."""
        self._stamps.update(rooms)
        return self._wait()

    def _wait(self) -> asyncio.Future[bool]:
        loop = asyncio.get_running_loop()
        future = self._next
        if future is None:
            future = self._next = loop.create_future()
        if self._writer is None:
            self._wake = asyncio.Event()
            self._writer = loop.create_task(self._write())
        assert self._wake is not None
        self._wake.set()
        return future

    async def _write(self) -> None:
        wake = self._wake
        this = asyncio.current_task()
        assert wake is not None and this is not None
        while True:
            if this.cancelling():  # a cancellation redis-py swallowed (it may)
                _settle(self._next, False)
                raise asyncio.CancelledError
            await wake.wait()
            wake.clear()
            changes, self._changes = self._changes, {}
            stamps, self._stamps = self._stamps, set()
            repairs, self._repairs = self._repairs, set()
            waiter, self._next = self._next, None
            calls = self._calls(changes, stamps, repairs)
            try:
                replies = await self._send(calls)
            except asyncio.CancelledError:
                _settle(waiter, False)
                raise
            except Exception as exc:
                if this.cancelling():  # redis-py turned our cancellation into an error
                    _settle(waiter, False)
                    raise asyncio.CancelledError from exc
                replies = [exc] * len(calls)
            error: BaseException | None = None
            written = self._written
            for (name, room, _), reply in zip(calls, replies, strict=True):
                if isinstance(reply, BaseException):
                    error = reply
                    self.failed += 1
                    self._repairs.add(room)  # written whole once Redis answers again
                    continue
                if not int(reply) and (name == "stamp" or (name == "change" and room in written)):
                    # Our stamp was gone: Redis lost the room, or a reader took this node
                    # for dead. Its members are written whole, now.
                    self._repairs.add(room)
                    wake.set()
                written.add(room)
            if error is not None:
                logger.warning("presence not written to redis: %s", error)
            _settle(waiter, error is None)

    def _calls(
        self,
        changes: dict[str, dict[str, Member | None]],
        stamps: set[str],
        repairs: set[str],
    ) -> list[tuple[str, str, list[Any]]]:
        """(script, room, its ARGV) for one pipeline: a repaired room is written whole, then
        changed (a leaver may still be in `members_of`), the rest only stamped."""
        node, ttl = self.node, self.ttl_ms
        calls: list[tuple[str, str, list[Any]]] = []
        for room in repairs:
            args: list[Any] = [node, ttl]
            for member in self._members_of(room):
                args += (member["clientId"], _member_json(member))
            calls.append(("replace", room, args))
        for room, members in changes.items():
            added: list[Any] = []
            removed: list[str] = []
            for client_id, change in members.items():
                if change is None:
                    removed.append(client_id)
                else:
                    added += (client_id, _member_json(change))
            calls.append(("change", room, [node, ttl, len(added) // 2, *added, *removed]))
        for room in stamps:
            if room not in repairs and room not in changes:
                calls.append(("stamp", room, [node, ttl]))
        return calls

    async def _send(self, calls: list[tuple[str, str, list[Any]]]) -> list[Any]:
        if not calls:
            return []
        client = await self._writer_redis()
        try:
            replies = await self._pipeline(client, calls)
        except (RedisConnectionError, RuntimeError):
            # A pooled connection closed under it (a Redis restart): once more on a fresh
            # one. Each call is idempotent.
            replies = await self._pipeline(client, calls)
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):  # moved to a node that lost it: rare
                name, room, args = calls[i]
                try:
                    replies[i] = await _SCRIPTS[name](client, [key_of(room)], args)
                except Exception as exc:
                    replies[i] = exc
        return replies

    async def _pipeline(self, client: Any, calls: list[tuple[str, str, list[Any]]]) -> list[Any]:
        """One pipeline; each connection's first call of a script is an EVAL (which loads
        it, for a Redis that restarted), the later ones EVALSHA (see `RedisHistory`)."""
        cluster = self.target.cluster
        pipe = client.pipeline(transaction=False)
        loaded: set[tuple[str, str]] = set()
        for name, room, args in calls:
            key = key_of(room)
            script = _SCRIPTS[name]
            where = (client.get_node_from_key(key).name if cluster else "", name)
            if where in loaded:
                pipe.execute_command("EVALSHA", script.sha, 1, key, *args)
            else:
                loaded.add(where)
                pipe.eval(script.source, 1, key, *args)
        self.pipelines += 1
        return list(await pipe.execute(raise_on_error=False))

    async def _writer_redis(self) -> Any:
        if self._writer_client is None:
            client = client_for(self.target, WRITER_NAME, self.timeout)
            if self.target.cluster:
                await client.initialize()
            self._writer_client = client
        return self._writer_client

    # -- reads ---------------------------------------------------------------------------

    async def read(self, room: str, limit: int) -> tuple[list[Member], int]:
        """The live members of every node but this one: at most `limit` of them, and how
        many there are."""
        async with self._reads:
            client = await self._redis()
            try:
                reply = await _READ(client, [key_of(room)], [self.node, limit])
            except (RedisConnectionError, RuntimeError):
                reply = await _READ(client, [key_of(room)], [self.node, limit])
        return [orjson.loads(raw) for raw in reply[1:]], int(reply[0])

    async def _redis(self) -> Any:
        if self._client is None:
            async with self._connecting:
                if self._client is None:
                    client = client_for(self.target, timeout=self.timeout)
                    if self.target.cluster:
                        await client.initialize()
                    self._client = client
        return self._client

    # -- the end -------------------------------------------------------------------------

    async def forget(self) -> None:
        """Take this node's members out of every room it wrote (best effort)."""
        await stop_task(self._writer)
        self._writer = None
        _settle(self._next, False)
        self._next = None
        if not self._written:
            return
        client = await self._writer_redis()
        for room in self._written:
            await _STAMP(client, [key_of(room)], [self.node, 0])
        self._written = set()

    async def close(self) -> None:
        await stop_task(self._writer)
        self._writer = None
        _settle(self._next, False)
        self._next = None
        for client in (self._client, self._writer_client):
            if client is not None:
                await client.aclose()
        self._client = self._writer_client = None


def _settle(future: asyncio.Future[bool] | None, ok: bool) -> None:
    if future is not None and not future.done():
        future.set_result(ok)


__all__ = ["CONCURRENT_READS", "RedisPresence", "key_of"]
