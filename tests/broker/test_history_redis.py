"""History rooms across nodes through a real redis-server: two nodes and the emitter agree
on offsets; recovery on either node; recovery while publishing goes on (SPEC §10)."""

from __future__ import annotations

import asyncio
from typing import Any

from redis_support import node, raw_redis, redis_at, settle
from roomcast import WebSocketEmitter
from roomcast.broker.redis.history import keys_of
from support import authed, eventually, join, joined, recv, run, send

OPTIONS = {"history_rooms": "chat:*"}


def history_node(redis: Any, **options: Any) -> Any:
    return node(redis, default_rooms=[], server_options={**OPTIONS, **options})


def emitter_of(redis: Any, **kwargs: Any) -> WebSocketEmitter:
    return WebSocketEmitter(redis, history_rooms="chat:*", **kwargs)


async def member(n: Any, room: str, recover: dict[str, Any] | None = None) -> Any:
    ws, _ = await authed(n.url)
    await join(ws, [room], recover)
    return ws


def test_nodes_and_emitter_number_one_sequence_and_recover_on_either_node(redis_server):
    async def body():
        redis = redis_at(redis_server.port)
        emitter = emitter_of(redis)
        await emitter.configure()
        try:
            async with history_node(redis) as a, history_node(redis) as b:
                wa = await member(a, "chat:one")
                wb = await member(b, "chat:one")
                _, pa = await joined(wa)
                _, pb = await joined(wb)
                assert pa["epoch"] == pb["epoch"] and pa["offset"] == pb["offset"] == 0
                await settle(a, b)
                a.helper.send("chat:one", {"topic": "m", "data": "a1"})
                b.helper.send_to_room("chat:one", "m", "b2")
                await emitter.to_room("chat:one", "m", "e3")
                for ws in (wa, wb):
                    got = [await recv(ws) for _ in range(3)]
                    assert [m["offset"] for m in got] == [1, 2, 3]
                    assert {m["data"] for m in got} == {"a1", "b2", "e3"}
                    assert all(m["room"] == "chat:one" for m in got)
                await wa.close()
                a.helper.send("chat:one", {"topic": "m", "data": "a4"})
                await emitter.to_room("chat:one", "m", "e5")
                b.helper.send("chat:one", {"topic": "m", "data": "b6"})
                assert [(await recv(wb))["offset"] for _ in range(3)] == [4, 5, 6]
                # Back on the other node, from offset 3.
                back = await member(
                    b, "chat:one", {"chat:one": {"epoch": pa["epoch"], "offset": 3}}
                )
                before, data = await joined(back)
                assert [m["offset"] for m in before] == [4, 5, 6]
                assert {m["data"] for m in before} == {"a4", "e5", "b6"}  # two publishers
                assert data == {
                    "room": "chat:one",
                    "epoch": pa["epoch"],
                    "offset": 6,
                    "recovered": True,
                }
                await emitter.to_room("chat:one", "m", "e7")
                assert (await recv(back))["offset"] == 7
                assert (await recv(wb))["offset"] == 7
                await back.close()
                await wb.close()
        finally:
            await emitter.shutdown()

    run(body())


def test_recovery_while_publishing_has_no_gap_and_no_duplicate(redis_server):
    async def body():
        redis = redis_at(redis_server.port)
        emitter = emitter_of(redis, history_size=100000)  # the servers' settings
        await emitter.configure()
        try:
            async with (
                history_node(redis, history_size=100000) as a,
                history_node(redis, history_size=100000) as b,
            ):
                first = await member(a, "chat:busy")
                _, start = await joined(first)
                await first.close()
                stop = asyncio.Event()
                sent = 0

                async def publish() -> None:
                    nonlocal sent
                    while not stop.is_set():
                        await emitter.to_room("chat:busy", "m", sent)
                        sent += 1
                        if sent % 4 == 0:
                            a.helper.send("chat:busy", {"topic": "m", "data": -sent})

                publisher = asyncio.create_task(publish())
                await eventually(lambda: sent >= 500, timeout=20)
                clients = []
                for _ in range(10):  # reconnect while it goes on, on both nodes
                    for n in (a, b):
                        clients.append(
                            await member(
                                n,
                                "chat:busy",
                                {"chat:busy": {"epoch": start["epoch"], "offset": 0}},
                            )
                        )
                await eventually(lambda: sent >= 3000, timeout=60)
                stop.set()
                await publisher
                async with raw_redis(redis_server.port) as r:
                    last = int(await r.hget(keys_of("chat:busy")[1], "offset"))
                for ws in clients:
                    offsets = []
                    recovered = None
                    while not offsets or offsets[-1] < last:
                        message = await recv(ws, timeout=20)
                        if message["event"] == "joined":
                            recovered = message["data"]["recovered"]
                            assert message["data"]["offset"] == len(offsets), message
                            continue
                        offsets.append(message["offset"])
                    assert recovered is True
                    assert offsets == list(range(1, last + 1))
                    await ws.close()
        finally:
            await emitter.shutdown()

    run(body(), timeout=120)


def test_overflow_epoch_change_and_restart_are_not_recovered(redis_server):
    async def body():
        redis = redis_at(redis_server.port)
        async with history_node(redis, history_size=3) as a:
            ws = await member(a, "chat:o")
            _, position = await joined(ws)
            await settle(a)
            for n in range(5):
                a.helper.send("chat:o", {"topic": "m", "data": n})
            assert [(await recv(ws))["offset"] for _ in range(5)] == [1, 2, 3, 4, 5]
            ok = await member(a, "chat:o", {"chat:o": {"epoch": position["epoch"], "offset": 2}})
            before, data = await joined(ok)
            assert [m["offset"] for m in before] == [3, 4, 5] and data["recovered"] is True
            lost = await member(a, "chat:o", {"chat:o": {"epoch": position["epoch"], "offset": 1}})
            before, data = await joined(lost)
            assert before == [] and data["recovered"] is False and data["offset"] == 5
            other = await member(a, "chat:o", {"chat:o": {"epoch": "nope", "offset": 5}})
            before, data = await joined(other)
            assert before == [] and data["recovered"] is False
            async with raw_redis(redis_server.port) as r:
                await r.flushall()  # what a restart without persistence leaves
            again = await member(a, "chat:o", {"chat:o": {"epoch": position["epoch"], "offset": 5}})
            before, data = await joined(again)
            assert before == [] and data["recovered"] is False
            assert data["epoch"] != position["epoch"] and data["offset"] == 0
            for client in (ws, ok, lost, other, again):
                await client.close()

    run(body())


def test_history_keys_expire_with_the_ttl(redis_server):
    async def body():
        redis = redis_at(redis_server.port)
        async with history_node(redis, history_ttl=0.3) as a, raw_redis(redis_server.port) as r:
            ws = await member(a, "chat:ttl")
            _, position = await joined(ws)
            await settle(a)
            a.helper.send("chat:ttl", {"topic": "m", "data": 1})
            assert (await recv(ws))["offset"] == 1
            stream, meta = keys_of("chat:ttl")
            assert 0 < await r.pttl(stream) <= 300 and 0 < await r.pttl(meta) <= 300
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while await r.exists(stream, meta):
                assert loop.time() < deadline, "history keys never expired"
                await asyncio.sleep(0.05)
            late = await member(
                a, "chat:ttl", {"chat:ttl": {"epoch": position["epoch"], "offset": 0}}
            )
            before, data = await joined(late)
            assert before == [] and data["recovered"] is False
            await ws.close()
            await late.close()

    run(body())


def test_exclude_holds_on_recovery_across_nodes(redis_server):
    async def body():
        redis = redis_at(redis_server.port)
        async with history_node(redis) as a, history_node(redis) as b:
            ws, me = await authed(a.url)
            await join(ws, ["chat:x"])
            _, position = await joined(ws)
            await send(ws, {"event": "leave", "data": {"rooms": ["chat:x"]}})
            await eventually(lambda: not a.helper.get_clients_by_room("chat:x"))
            b.helper.send_to_room("chat:x", "m", 1)
            b.helper.send_to_room("chat:x", "m", 2, exclude=[me["id"]])
            b.helper.send_to_room("chat:x", "m", 3)
            async with raw_redis(redis_server.port) as r:

                async def numbered_three() -> bool:
                    return await r.hget(keys_of("chat:x")[1], "offset") == b"3"

                await eventually(numbered_three)
            await join(ws, ["chat:x"], {"chat:x": {"epoch": position["epoch"], "offset": 0}})
            before, data = await joined(ws)
            assert [m["offset"] for m in before] == [1, 3] and data["recovered"] is True
            await ws.close()

    run(body())


def test_plain_rooms_on_redis_are_unchanged(redis_server):
    async def body():
        redis = redis_at(redis_server.port)
        async with history_node(redis) as a, history_node(redis) as b:
            ws, data = await authed(b.url)
            await send(ws, {"event": "join", "data": {"rooms": ["lobby"]}})
            await eventually(lambda: "lobby" in b.helper.get_clients(data["id"]).rooms)
            await settle(a, b)
            a.helper.send("lobby", {"topic": "t", "data": 1})
            assert await ws.recv() == '{"event":"t","data":1}'
            await ws.close()

    run(body())


def test_roomcast_emit_goes_through_the_history_of_history_rooms(redis_server):
    from process_support import emit

    async def body():
        redis = redis_at(redis_server.port)
        async with history_node(redis) as a:
            ws = await member(a, "chat:cli")
            _, position = await joined(ws)
            await settle(a)
            url = redis_server.url
            done = await asyncio.to_thread(
                emit,
                "--redis-url",
                url,
                "--room",
                "chat:cli",
                "--event",
                "e",
                "--data",
                "1",
                "--history-rooms",
                "chat:*",
            )
            assert done.returncode == 0, done.stderr
            assert await recv(ws) == {"event": "e", "data": 1, "room": "chat:cli", "offset": 1}
            back = await member(
                a, "chat:cli", {"chat:cli": {"epoch": position["epoch"], "offset": 0}}
            )
            before, data = await joined(back)
            assert [m["data"] for m in before] == [1] and data["recovered"] is True
            await ws.close()
            await back.close()

    run(body())


def test_a_redis_restart_gives_a_new_epoch_and_no_recovery(redis_server):
    async def body():
        redis = redis_at(redis_server.port)
        async with history_node(redis) as a:
            ws = await member(a, "chat:restart")
            _, position = await joined(ws)
            await settle(a)
            a.helper.send("chat:restart", {"topic": "m", "data": 1})
            assert (await recv(ws))["offset"] == 1
            await asyncio.to_thread(redis_server.kill)  # no persistence: history is gone
            await asyncio.to_thread(redis_server.start)
            await settle(a, timeout=20)  # reconnected and subscribed again
            back = await member(
                a, "chat:restart", {"chat:restart": {"epoch": position["epoch"], "offset": 1}}
            )
            before, data = await joined(back)
            assert before == [] and data["recovered"] is False
            assert data["epoch"] != position["epoch"] and data["offset"] == 0
            a.helper.send("chat:restart", {"topic": "m", "data": 2})
            message = await recv(back)
            assert message["offset"] == 1 and message["data"] == 2  # numbered anew
            await ws.close()
            await back.close()

    run(body(), timeout=60)
