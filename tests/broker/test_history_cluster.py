"""History rooms on a real three-master Redis Cluster: rooms in different slots, two nodes
and the emitter, recovery on the other node (SPEC §10)."""

from __future__ import annotations

from typing import Any

import pytest
from redis_support import node, settle
from roomcast import RedisClusterHelper, WebSocketEmitter
from roomcast.broker.redis.cluster import by_slot
from roomcast.broker.redis.history import keys_of
from support import authed, join, joined, run

ROOMS = [f"chat:{i}" for i in range(6)]


def cluster_helper(cluster: Any, **kwargs: Any) -> RedisClusterHelper:
    kwargs.setdefault("ready_timeout", 5)
    return RedisClusterHelper(cluster.url, **kwargs)


def test_the_keys_of_a_room_share_one_slot():
    for room in ["a", "chat:1", "{odd}", "x}y{z", ""]:
        assert len(by_slot(keys_of(room))) == 1


def test_history_across_a_cluster_recovers_on_the_other_node(redis_cluster):
    async def body():
        options = {"history_rooms": "chat:*"}
        emitter = WebSocketEmitter(cluster_helper(redis_cluster), history_rooms="chat:*")
        await emitter.configure()
        try:
            async with (
                node(cluster_helper(redis_cluster), default_rooms=[], server_options=options) as a,
                node(cluster_helper(redis_cluster), default_rooms=[], server_options=options) as b,
            ):
                wa, _ = await authed(a.url)
                await join(wa, ROOMS)
                positions = {}
                for _ in ROOMS:
                    _, data = await joined(wa)
                    positions[data["room"]] = data
                await settle(a)
                for room in ROOMS:
                    a.helper.send(room, {"topic": "m", "data": f"{room}/1"})
                    await emitter.to_room(room, "m", f"{room}/2")
                got: dict[str, list[int]] = {room: [] for room in ROOMS}
                from support import recv

                for _ in range(2 * len(ROOMS)):
                    message = await recv(wa)
                    got[message["room"]].append(message["offset"])
                assert got == {room: [1, 2] for room in ROOMS}
                await wa.close()
                for room in ROOMS:
                    await emitter.to_room(room, "m", f"{room}/3")
                wb, _ = await authed(b.url)
                recover = {room: {"epoch": positions[room]["epoch"], "offset": 2} for room in ROOMS}
                await join(wb, ROOMS, recover)
                # Rooms recover concurrently: per room, its replay comes before its joined.
                seen: dict[str, list[tuple[int, str]]] = {room: [] for room in ROOMS}
                done: dict[str, dict] = {}
                while len(done) < len(ROOMS):
                    message = await recv(wb)
                    if message["event"] == "joined":
                        done[message["data"]["room"]] = message["data"]
                    else:
                        assert message["room"] not in done, message  # live after joined
                        seen[message["room"]].append((message["offset"], message["data"]))
                for room in ROOMS:
                    assert seen[room] == [(3, f"{room}/3")]
                    assert done[room]["recovered"] is True and done[room]["offset"] == 3
                await wb.close()
        finally:
            await emitter.shutdown()

    run(body())


@pytest.mark.parametrize("sharded", [True])
def test_history_with_sharded_pub_sub_is_refused(redis_cluster, sharded):
    async def body():
        helper = cluster_helper(redis_cluster, sharded=sharded)
        with pytest.raises(ValueError, match="not sharded"):
            WebSocketEmitter(helper, history_rooms="chat:*")

    run(body())
