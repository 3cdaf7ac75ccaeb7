"""History rooms under a frozen Redis, a big recovery, and a history that went back in time
(SPEC §10, §12), against a real redis-server and real clients: members keep getting live
messages (without an offset) within `history_timeout`, joins are answered, a recovery larger
than the backpressure limit arrives whole, and a rolled-back offset starts a new epoch."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from redis_support import node, raw_redis, redis_at
from roomcast.broker.redis.history import keys_of
from support import RawClient, authed, eventually, join, joined, recv, run, running, send

OPTIONS = {"history_rooms": "chat:*"}
# A live message's bound while Redis is frozen: the history timeout (1 s by default), and
# room for a loaded machine.
LIVE_BOUND = 1.0 + 2.0


@contextmanager
def frozen(server: Any) -> Iterator[None]:
    """redis-server stopped (SIGSTOP) inside the block: connections open, nothing answers."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def history_node(redis_server: Any, **options: Any) -> Any:
    return node(
        redis_at(redis_server.port), default_rooms=[], server_options={**OPTIONS, **options}
    )


async def member(url: str, room: str, recover: dict[str, Any] | None = None) -> Any:
    ws, _ = await authed(url)
    await join(ws, [room], recover)
    return ws


def test_a_frozen_redis_leaves_live_messages_and_joins_answered_and_numbering_resumes(
    redis_server,
):
    async def body():
        async with history_node(redis_server) as n:
            helper = n.helper
            room = "chat:frozen"
            a = await member(n.url, room)
            _, position = await joined(a)
            helper.send_to_room(room, "m", "before")
            first = await recv(a)
            assert first["offset"] == 1 and first["data"] == "before"
            loop = asyncio.get_running_loop()
            with frozen(redis_server):
                started = loop.time()
                sent = 0
                while loop.time() - started < 10.0:
                    helper.send_to_room(room, "m", f"frozen {sent}")
                    got = await recv(a, timeout=LIVE_BOUND)
                    assert got == {"event": "m", "data": f"frozen {sent}"}, "live, no offset"
                    sent += 1
                    if sent == 3:
                        # A join with a recovery is answered, not recovered.
                        b, connected = await authed(n.url)
                        await join(b, [room], {room: {"epoch": position["epoch"], "offset": 0}})
                        before, data = await asyncio.wait_for(joined(b), LIVE_BOUND)
                        assert before == [] and data["recovered"] is False
                        assert data["reason"] == "history unavailable"
                        handle = helper.get_clients(connected["id"]).handle
                        assert helper._hub.held_bytes(handle, room) == 0, "released"
                    await asyncio.sleep(0.5)
                assert helper.history_store.queued_bytes == 0, "nothing piles up for Redis"
                got = await recv(b, timeout=LIVE_BOUND)
                assert "offset" not in got
            assert helper.stats()["history_unnumbered"] == sent
            await eventually(lambda: not helper.history_store.down, timeout=10.0)
            helper.send_to_room(room, "m", "after")
            got = await recv(a)
            while got.get("data") != "after":  # the broker may deliver the last frozen late
                got = await recv(a)
            assert got["offset"] == 2, "numbering resumes where Redis left it"
            assert got["room"] == room
            await a.close()
            await b.close()

    run(body(), timeout=60)


@pytest.mark.parametrize("close_on_limit", [False, True])
@pytest.mark.parametrize("broker", ["memory", "redis"])
def test_a_recovery_bigger_than_the_backpressure_limit_arrives_whole(
    request, broker, close_on_limit
):
    options = {**OPTIONS, "close_on_backpressure_limit": close_on_limit}

    async def body():
        if broker == "memory":
            context = running(
                default_rooms=[],
                validate_room_fn=lambda client_id, user_id, rooms: rooms,
                server_options=options,
            )
        else:
            redis_server = request.getfixturevalue("redis_server")
            context = node(redis_at(redis_server.port), default_rooms=[], server_options=options)
        async with context as n:
            room = "chat:big"
            keeper = await member(n.url, room)
            _, position = await joined(keeper)
            payload = "x" * 16 * 1024
            for i in range(100):  # one at a time: live, 1.6 MB at once would pass the limit
                n.helper.send_to_room(room, "m", f"{i} {payload}")
                assert (await recv(keeper))["offset"] == i + 1
            late = await member(n.url, room, {room: {"epoch": position["epoch"], "offset": 0}})
            before, data = await joined(late)
            assert [m["offset"] for m in before] == list(range(1, 101)), "whole, in order"
            assert [m["data"].split()[0] for m in before] == [str(i) for i in range(100)]
            assert data == {
                "room": room,
                "epoch": position["epoch"],
                "offset": 100,
                "recovered": True,
            }
            n.helper.send_to_room(room, "m", "next")
            assert (await recv(late))["offset"] == 101
            assert n.helper._hub.stats()["skipped"] == 0
            await late.close()
            await keeper.close()

    run(body(), timeout=60)


def test_an_offset_rolled_back_under_one_epoch_starts_a_new_epoch(redis_server):
    async def body():
        async with history_node(redis_server) as n, raw_redis(redis_server.port) as r:
            room = "chat:rollback"
            a = await member(n.url, room)
            _, position = await joined(a)
            epoch = position["epoch"]
            stream, meta = keys_of(room)
            for i in range(1, 21):
                n.helper.send_to_room(room, "m", i)
                assert (await recv(a))["offset"] == i
                if i == 10:  # a snapshot
                    saved = [(key, await r.dump(key)) for key in (stream, meta)]
            # Restored from the snapshot (or a replica promoted at message 10).
            for key, value in saved:
                await r.restore(key, 0, value, replace=True)
            n.helper.send_to_room(room, "m", "after the restore")
            got = await recv(a)
            assert got == {"event": "m", "data": "after the restore"}, "live, unnumbered"

            async def new_epoch() -> bool:
                value = await r.hget(meta, "epoch")
                return value is not None and value.decode() != epoch

            async with asyncio.timeout(10):
                while not await new_epoch():
                    await asyncio.sleep(0.01)
            n.helper.send_to_room(room, "m", "new")
            got = await recv(a)
            assert (got["offset"], got["data"]) == (1, "new"), "the new epoch, from 1"
            back = await member(n.url, room, {room: {"epoch": epoch, "offset": 20}})
            before, data = await joined(back)
            assert before == [] and data["recovered"] is False and data["epoch"] != epoch
            assert data["offset"] == 1
            assert n.helper.stats()["history_unnumbered"] == 1
            await a.close()
            await back.close()

    run(body(), timeout=60)


def test_history_timeouts_are_server_options_and_flags():
    from roomcast.cli.flags import build_parser, config_from_args
    from roomcast.config import resolve_server_options

    resolved = resolve_server_options({"historyTimeout": 0.25, "history_queue_limit": 4096})
    assert resolved["history_timeout"] == 0.25 and resolved["history_queue_limit"] == 4096
    assert resolved["recovery_timeout"] == 10.0
    for bad in ({"history_timeout": 0}, {"history_queue_limit": 0}, {"recovery_timeout": -1}):
        with pytest.raises(ValueError):
            resolve_server_options(bad)
    args = build_parser().parse_args(
        ["serve", "--history-timeout-ms", "250", "--history-queue-limit", "4096"]
    )
    config = config_from_args(args, {"ROOMCAST_RECOVERY_TIMEOUT_MS": "2000"})
    options = config.server_config()
    assert options.options["history_timeout"] == 0.25
    assert options.options["history_queue_limit"] == 4096
    assert options.options["recovery_timeout"] == 2.0


async def stalled_member(port: int, room: str, recover: dict[str, Any]) -> RawClient:
    """A client with a tiny receive buffer that joins (with `recover`) and then reads only
    when told: its replay cannot get through until it does."""
    raw, head = await RawClient.connect(port, rcvbuf=4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    token = {"type": "Bearer", "token": "user:slow"}
    raw.send_text(orjson.dumps({"event": "authenticate", "data": token}))
    _, connected = await raw.read_frame()
    assert orjson.loads(connected)["event"] == "connected"
    raw.send_text(orjson.dumps({"event": "join", "data": {"rooms": [room], "recover": recover}}))
    return raw


async def read_until_joined(raw: RawClient) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    before = []
    while True:
        _, payload = await raw.read_frame(timeout=30)
        message = orjson.loads(payload)
        if message["event"] == "joined":
            return before, message["data"]
        before.append(message)


async def fill(n: Any, keeper: Any, room: str, count: int, size: int) -> None:
    """`count` messages of `size` bytes to `room`, one at a time (the keeper reads each)."""
    for i in range(count):
        n.helper.send_to_room(room, "m", f"{i} {'x' * size}")
        got = await recv(keeper)
        assert got["data"].startswith(f"{i} ")


def test_a_client_too_slow_for_its_replay_gets_what_fit_then_recovered_false(redis_server):
    async def body():
        async with history_node(redis_server, recovery_timeout=1.0) as n:
            room = "chat:slow"
            keeper = await member(n.url, room)
            _, position = await joined(keeper)
            await fill(n, keeper, room, 100, 100_000)
            raw = await stalled_member(
                n.port, room, {room: {"epoch": position["epoch"], "offset": 0}}
            )
            await asyncio.sleep(2.0)  # past the recovery timeout, reading nothing
            before, data = await read_until_joined(raw)
            offsets = [m["offset"] for m in before]
            assert offsets == list(range(1, len(offsets) + 1)) and len(offsets) < 100
            assert data == {
                "room": room,
                "epoch": position["epoch"],
                "offset": 100,
                "recovered": False,
                "reason": "client too slow",
            }
            n.helper.send_to_room(room, "m", "next")
            _, payload = await raw.read_frame()
            assert orjson.loads(payload)["offset"] == 101, "live after joined"
            await keeper.close()
            await raw.aclose()

    run(body(), timeout=60)


def test_an_epoch_change_during_a_recovery_answers_at_the_new_epoch(redis_server):
    async def body():
        async with history_node(redis_server) as n, raw_redis(redis_server.port) as r:
            room = "chat:reset"
            keeper = await member(n.url, room)
            _, position = await joined(keeper)
            await fill(n, keeper, room, 100, 100_000)
            raw = await stalled_member(
                n.port, room, {room: {"epoch": position["epoch"], "offset": 0}}
            )
            await asyncio.sleep(0.5)  # the replay is under way, stalled
            await r.flushall()  # Redis lost its history (a restart without persistence)
            n.helper.send_to_room(room, "m", "new 1")
            n.helper.send_to_room(room, "m", "new 2")
            got = [await recv(keeper) for _ in range(2)]
            assert [(m["offset"], m["data"]) for m in got] == [(1, "new 1"), (2, "new 2")]
            before, data = await read_until_joined(raw)
            assert [m["offset"] for m in before] == list(range(1, 101)), "the old replay"
            assert data["epoch"] != position["epoch"] and data["offset"] == 0
            assert data["recovered"] is False
            assert data["reason"] == "history reset during recovery"
            after = [orjson.loads((await raw.read_frame())[1]) for _ in range(2)]
            assert [(m["offset"], m["data"]) for m in after] == [(1, "new 1"), (2, "new 2")]
            await keeper.close()
            await raw.aclose()

    run(body(), timeout=60)


def test_two_big_recoveries_in_one_join_both_arrive_whole_without_a_close():
    options = {**OPTIONS, "close_on_backpressure_limit": True}

    async def body():
        context = running(
            default_rooms=[],
            validate_room_fn=lambda client_id, user_id, rooms: rooms,
            server_options=options,
        )
        async with context as n:
            rooms = ["chat:one", "chat:two"]
            keeper, _ = await authed(n.url)
            await join(keeper, rooms)
            positions = {}
            for _ in rooms:
                _, data = await joined(keeper)
                positions[data["room"]] = data
            for room in rooms:
                await fill(n, keeper, room, 100, 16 * 1024)
            recover = {r: {"epoch": positions[r]["epoch"], "offset": 0} for r in rooms}
            late, _ = await authed(n.url)
            await join(late, rooms, recover)
            got: dict[str, list[int]] = {room: [] for room in rooms}
            answered = []
            while len(answered) < 2:
                message = await recv(late)
                if message["event"] == "joined":
                    answered.append(message["data"])
                    assert got[message["data"]["room"]] == list(range(1, 101))
                else:
                    got[message["room"]].append(message["offset"])
            assert all(d["recovered"] and d["offset"] == 100 for d in answered)
            assert n.helper._hub.stats()["skipped"] == 0
            await late.close()
            await keeper.close()

    run(body(), timeout=60)


@pytest.mark.parametrize("broker", ["memory", "redis"])
def test_an_encrypted_recovery_bigger_than_the_backpressure_limit_is_never_cut_short(
    request, broker
):
    """Sealed replays are not paced: one that passes half the backpressure limit is not sent
    at all, and `joined` says so (never a replay silently short of `recovered: true`)."""
    from encryption_support import encrypted_client
    from roomcast.crypto import EcdhScheme

    async def body():
        options = {**OPTIONS, "history_size": 200}
        if broker == "memory":
            context = running(
                default_rooms=[],
                validate_room_fn=lambda client_id, user_id, rooms: rooms,
                server_options=options,
                encryption=EcdhScheme(),
            )
        else:
            redis_server = request.getfixturevalue("redis_server")
            context = node(
                redis_at(redis_server.port),
                default_rooms=[],
                server_options=options,
                encryption=EcdhScheme(),
            )
        async with context as n:
            room = "chat:big"
            keeper = await member(n.url, room)
            _, position = await joined(keeper)
            payload = "x" * 16 * 1024
            for i in range(100):
                n.helper.send_to_room(room, "m", f"{i} {payload}")
                assert (await recv(keeper))["offset"] == i + 1
            small = {"epoch": position["epoch"], "offset": 98}
            whole = {"epoch": position["epoch"], "offset": 0}
            head = 100
            for wanted, replayed, recovered in ((small, [99, 100], True), (whole, [], False)):
                ws, _, crypto = await encrypted_client(n.url)
                await send(ws, crypto.seal("join", {"rooms": [room], "recover": {room: wanted}}))
                before = []
                while (message := crypto.open(await recv(ws)))["event"] != "joined":
                    before.append(message["offset"])
                assert before == replayed
                data = message["data"]
                assert data["recovered"] is recovered and data["offset"] == head
                if not recovered:
                    assert data["reason"] == "replay too large for an encrypted session"
                n.helper.send_to_room(room, "m", "next")
                head += 1
                assert crypto.open(await recv(ws))["offset"] == head
                assert (await recv(keeper))["offset"] == head
                await ws.close()
            assert n.helper.stats()["skipped"] == 0
            await keeper.close()

    run(body(), timeout=60)
