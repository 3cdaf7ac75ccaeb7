"""Presence across nodes through a real redis-server, and a node killed with SIGKILL leaving
presence within the TTL (SPEC §10)."""

from __future__ import annotations

import time
from typing import Any

from process_support import roomcast, wait_listening
from redis_support import node
from roomcast import RedisHelper
from support import authed, eventually, recv, run, send

TTL = 1.5


def redis_at(port: int) -> RedisHelper:
    return RedisHelper(host="127.0.0.1", port=port, unsubscribe_delay=0.2, ready_timeout=5)


def presence_node(redis: Any) -> Any:
    options = {"presence_rooms": "team-*", "presence_ttl": TTL}
    return node(redis, default_rooms=[], server_options=options)


async def joined_to(n: Any, room: str, token: str = "user:ann") -> tuple[Any, str]:
    ws, data = await authed(n.url, token)
    await send(ws, {"event": "join", "data": {"rooms": [room]}})
    await eventually(lambda: room in n.helper.get_clients(data["id"]).rooms)
    return ws, data["id"]


async def ids(helper: Any, room: str) -> set[str]:
    return {m["clientId"] for m in await helper.presence(room)}


def test_presence_lists_members_of_every_node_once(redis_server):
    async def body():
        redis = redis_at(redis_server.port)
        async with presence_node(redis) as a, presence_node(redis) as b:
            wa, ida = await joined_to(a, "team-1", "user:ann")
            wb, idb = await joined_to(b, "team-1", "anon")
            await eventually(lambda: _has(a.helper, "team-1", {ida, idb}), 5)
            await eventually(lambda: _has(b.helper, "team-1", {ida, idb}), 5)
            await send(wb, {"event": "presence", "data": {"room": "team-1"}})
            answer = await recv(wb)
            clients = sorted(answer["data"]["clients"], key=lambda c: c["clientId"])
            assert clients == sorted(
                [{"clientId": ida, "userId": "ann"}, {"clientId": idb}],
                key=lambda c: c["clientId"],
            )
            await wa.close()  # a member that leaves disappears on the other node too
            await eventually(lambda: _has(b.helper, "team-1", {idb}), 5)
            await wb.close()

    run(body())


async def _has(helper: Any, room: str, expected: set[str]) -> bool:
    return await ids(helper, room) == expected


def test_a_node_killed_with_sigkill_leaves_presence_within_the_ttl(redis_server):
    proc = roomcast(
        "serve",
        "--port",
        "0",
        "--redis-url",
        redis_server.url,
        "--presence-rooms",
        "team-*",
        "--presence-ttl-ms",
        str(int(TTL * 1000)),
    )
    try:
        port, lines = wait_listening(proc)
        [token] = [line.rsplit(" ", 1)[1] for line in lines if "demo token" in line]

        async def body():
            redis = redis_at(redis_server.port)
            async with presence_node(redis) as b:
                ws, data = await authed(f"ws://127.0.0.1:{port}/ws", token)
                await send(ws, {"event": "join", "data": {"rooms": ["team-9"]}})
                await eventually(lambda: _has(b.helper, "team-9", {data["id"]}), 5)
                proc.kill()  # SIGKILL: no shutdown, nothing cleared
                killed = time.monotonic()
                await eventually(lambda: _has(b.helper, "team-9", set()), TTL + 5)
                gone_after = time.monotonic() - killed
                assert gone_after <= TTL + 1.0, gone_after  # the TTL, plus one refresh
                await ws.close()

        run(body())
    finally:
        proc.kill()
        proc.communicate()
