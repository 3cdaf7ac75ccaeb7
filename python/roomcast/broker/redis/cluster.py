"""Cluster routing: which master serves a channel (the slot map), for sharded pub/sub.

Why not redis-py's own cluster pub/sub: its asyncio `RedisCluster` has none before redis-py 8,
and 8's `ClusterPubSub` awaits one SSUBSCRIBE per channel under a lock and delivers through
polled `get_sharded_message()` dicts, with no confirmation of when a subscription is live and
no pipelined SPUBLISH; the join barrier and the hot paths need all three. So the broker keeps
a slot map of its own, read once per session with CLUSTER SLOTS, and any change (MOVED, ASK,
a slot's SUNSUBSCRIBE) ends the session: the next one reads the map again. Hashing is
redis-py's (`key_slot`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from .target import RedisTarget
from .wire import pack

SlotMap = list[int]
"""For every hash slot, the index of the shard (master) serving it."""


async def discover(
    target: RedisTarget,
    sharded: bool,
    connect_timeout: Callable[[], float],
    command_timeout: float,
) -> tuple[list[tuple[str, int]], SlotMap | None]:
    """The masters to use and the slot map (from CLUSTER SLOTS on the first seed node that
    answers). Classic pub/sub needs one node, any: every node sees every PUBLISH."""
    errors = []
    for host, port in target.nodes:
        conn = None
        try:
            conn = await target.connect(host, port, connect_timeout())
            if not sharded:
                return [(host, port)], None
            await conn.send_packed_command(pack(b"CLUSTER", b"SLOTS"), check_health=False)
            reply = await asyncio.wait_for(conn.read_response(), command_timeout)
        except Exception as exc:
            errors.append(f"{host}:{port}: {exc}")
            continue
        finally:
            if conn is not None:
                await conn.disconnect(nowait=True)
        masters: list[tuple[str, int]] = []
        slot_map = [-1] * REDIS_CLUSTER_HASH_SLOTS
        for start, end, master, *_ in reply:
            key = (master[0].decode() if master[0] else host, int(master[1]))
            if key not in masters:
                masters.append(key)
            index = masters.index(key)
            for slot in range(int(start), int(end) + 1):
                slot_map[slot] = index
        if -1 in slot_map or not masters:
            errors.append(f"{host}:{port}: cluster slots are not all covered")
            continue
        return masters, slot_map
    raise ConnectionError("; ".join(errors) or "no cluster node given")


def shard_index(slot_map: SlotMap, channel: str) -> int:
    return slot_map[key_slot(channel.encode())]


def by_slot(channels: list[str]) -> list[list[bytes]]:
    """`channels` grouped by hash slot: every channel of one SSUBSCRIBE must share one."""
    groups: dict[int, list[bytes]] = {}
    for channel in channels:
        encoded = channel.encode()
        groups.setdefault(key_slot(encoded), []).append(encoded)
    return list(groups.values())


def probe_channel(prefix: str, slot_map: SlotMap | None, index: int) -> str:
    """A channel served by shard `index`: `prefix` plus a hash tag that lands in its slots."""
    n = 0
    channel = f"{prefix}{{{n}}}"
    while slot_map is not None and shard_index(slot_map, channel) != index:
        n += 1
        channel = f"{prefix}{{{n}}}"
    return channel


__all__ = ["SlotMap", "by_slot", "discover", "probe_channel", "shard_index"]
