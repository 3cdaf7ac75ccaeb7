"""History rooms on one node (memory broker), over real sockets: offsets, `joined`, recovery
(SPEC §10)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from roomcast.broker.history import MemoryHistory
from roomcast.config import ServerConfig, resolve_server_options
from support import (
    allow_all,
    authed,
    eventually,
    join,
    joined,
    nothing_more,
    recv,
    run,
    running,
    send,
)

HISTORY = {"history_rooms": "chat:*"}


def history_node(**options: Any) -> Any:
    return running(
        validate_room_fn=allow_all, default_rooms=[], server_options={**HISTORY, **options}
    )


def test_messages_to_a_history_room_carry_room_and_increasing_offsets():
    async def body():
        async with history_node() as node:
            ws, _ = await authed(node.url)
            await join(ws, ["chat:a"])
            _, data = await joined(ws)
            assert data["room"] == "chat:a" and data["offset"] == 0 and not data["recovered"]
            assert isinstance(data["epoch"], str) and data["epoch"]
            node.helper.send_to_room("chat:a", "msg", {"n": 1})
            node.helper.send("chat:a", {"topic": "msg", "data": None})
            node.helper.send_to_room("chat:a", "bare")
            assert await recv(ws) == {
                "event": "msg",
                "data": {"n": 1},
                "room": "chat:a",
                "offset": 1,
            }
            assert await recv(ws) == {"event": "msg", "data": None, "room": "chat:a", "offset": 2}
            assert await recv(ws) == {"event": "bare", "room": "chat:a", "offset": 3}
            await ws.close()

    run(body())


def test_plain_rooms_are_unchanged_byte_for_byte():
    async def body():
        async with history_node() as node:
            ws, _ = await authed(node.url)
            await join(ws, ["lobby"], recover={"lobby": {"epoch": "x", "offset": 0}})
            await eventually(lambda: len(node.helper.get_clients_by_room("lobby")) == 1)
            node.helper.send_to_room("lobby", "msg", {"n": 1})
            node.helper.send("lobby", {"topic": "t", "data": [1]})
            assert await ws.recv() == b'{"event":"msg","data":{"n":1}}'.decode()
            assert await ws.recv() == b'{"event":"t","data":[1]}'.decode()
            await nothing_more(ws)  # and no `joined`
            await ws.close()

    run(body())


def test_no_history_configured_sends_no_joined_and_no_offsets():
    async def body():
        async with running(validate_room_fn=allow_all, default_rooms=[]) as node:
            ws, _ = await authed(node.url)
            await join(ws, ["chat:a"], recover={"chat:a": {"epoch": "x", "offset": 0}})
            await eventually(lambda: len(node.helper.get_clients_by_room("chat:a")) == 1)
            node.helper.send_to_room("chat:a", "msg", 1)
            assert await ws.recv() == '{"event":"msg","data":1}'
            await nothing_more(ws)
            await ws.close()

    run(body())


def test_joined_splits_messages_by_offset_while_publishing():
    async def body():
        async with history_node() as node:
            helper = node.helper
            stop = asyncio.Event()

            async def publish() -> None:
                n = 0
                while not stop.is_set():
                    n += 1
                    helper.send_to_room("chat:busy", "m", n)
                    await asyncio.sleep(0)

            publisher = asyncio.create_task(publish())
            # An unbounded queue: the client ends with unread messages, and a bounded queue
            # stops reading, so it would never see the server's close reply.
            ws, _ = await authed(node.url, max_queue=None)
            await join(ws, ["chat:busy"], recover={"chat:busy": {"epoch": "?", "offset": 0}})
            before, data = await joined(ws)
            assert before == [] and data["recovered"] is False and data["offset"] > 0
            after = [(await recv(ws))["offset"] for _ in range(50)]
            stop.set()
            await publisher
            assert after == list(range(data["offset"] + 1, data["offset"] + 51))
            await ws.close()

    run(body())


def test_recovery_after_reconnect_replays_missed_messages_in_order():
    async def body():
        async with history_node() as node:
            helper = node.helper
            ws, _ = await authed(node.url)
            await join(ws, ["chat:r"])
            _, position = await joined(ws)
            helper.send_to_room("chat:r", "m", 1)
            assert (await recv(ws))["offset"] == 1
            await ws.close()
            await eventually(lambda: not helper.get_clients_by_room("chat:r"))
            for n in range(2, 6):
                helper.send_to_room("chat:r", "m", n)
            ws, _ = await authed(node.url)
            recover = {"chat:r": {"epoch": position["epoch"], "offset": 1}}
            await join(ws, ["chat:r"], recover)
            before, data = await joined(ws)
            assert [m["data"] for m in before] == [2, 3, 4, 5]
            assert [m["offset"] for m in before] == [2, 3, 4, 5]
            assert data == {
                "room": "chat:r",
                "epoch": position["epoch"],
                "offset": 5,
                "recovered": True,
            }
            helper.send_to_room("chat:r", "m", 6)
            assert await recv(ws) == {"event": "m", "data": 6, "room": "chat:r", "offset": 6}
            await ws.close()

    run(body())


def test_recovery_at_the_current_offset_replays_nothing_and_succeeds():
    async def body():
        async with history_node() as node:
            node.helper.send_to_room("chat:s", "m", 1)
            ws, _ = await authed(node.url)
            await join(ws, ["chat:s"])
            _, first = await joined(ws)
            await join(ws, ["chat:t"], {"chat:t": {"epoch": "nope", "offset": 0}})
            _, other = await joined(ws)
            assert other["recovered"] is False
            ws2, _ = await authed(node.url)
            await join(ws2, ["chat:s"], {"chat:s": {"epoch": first["epoch"], "offset": 1}})
            before, data = await joined(ws2)
            assert before == [] and data["recovered"] is True and data["offset"] == 1
            await ws.close()
            await ws2.close()

    run(body())


def test_overflow_beyond_history_size_is_not_recovered():
    async def body():
        async with history_node(history_size=3) as node:
            ws, _ = await authed(node.url)
            await join(ws, ["chat:o"])
            _, position = await joined(ws)
            for n in range(4):
                node.helper.send_to_room("chat:o", "m", n)
            ws2, _ = await authed(node.url)
            await join(ws2, ["chat:o"], {"chat:o": {"epoch": position["epoch"], "offset": 0}})
            before, data = await joined(ws2)
            assert before == [] and data["recovered"] is False and data["offset"] == 4
            ws3, _ = await authed(node.url)
            await join(ws3, ["chat:o"], {"chat:o": {"epoch": position["epoch"], "offset": 1}})
            before, data = await joined(ws3)
            assert [m["offset"] for m in before] == [2, 3, 4] and data["recovered"] is True
            for client in (ws, ws2, ws3):
                await client.close()

    run(body())


def test_unknown_epoch_or_offset_ahead_is_not_recovered():
    async def body():
        async with history_node() as node:
            node.helper.send_to_room("chat:e", "m", 1)
            ws, _ = await authed(node.url)
            await join(ws, ["chat:e"], {"chat:e": {"epoch": "other", "offset": 0}})
            before, data = await joined(ws)
            assert before == [] and data["recovered"] is False
            ws2, _ = await authed(node.url)
            await join(ws2, ["chat:e"], {"chat:e": {"epoch": data["epoch"], "offset": 9}})
            before, again = await joined(ws2)
            assert before == [] and again["recovered"] is False
            await ws.close()
            await ws2.close()

    run(body())


def test_history_expires_after_its_ttl():
    async def body():
        async with history_node(history_ttl=0.2) as node:
            node.helper.send_to_room("chat:ttl", "m", 1)
            ws, _ = await authed(node.url)
            await join(ws, ["chat:ttl"])
            _, position = await joined(ws)
            assert position["offset"] == 1
            recover = {"chat:ttl": {"epoch": position["epoch"], "offset": 0}}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while True:  # recoverable until the TTL passes, then never again
                probe, _ = await authed(node.url)
                await join(probe, ["chat:ttl"], recover)
                before, data = await joined(probe)
                await probe.close()
                if not data["recovered"]:
                    break
                assert [m["data"] for m in before] == [1]
                assert loop.time() < deadline, "history never expired"
                await asyncio.sleep(0.05)
            assert before == []
            await ws.close()

    run(body())


def test_recovery_skips_messages_the_client_was_excluded_from():
    async def body():
        async with history_node() as node:
            helper = node.helper
            ws, me = await authed(node.url)
            await join(ws, ["chat:x"])
            _, position = await joined(ws)
            helper.send_to_room("chat:x", "m", 1, exclude=[me["id"]])
            helper.send_to_room("chat:x", "m", 2)
            assert (await recv(ws))["offset"] == 2  # live: the excluded one is skipped
            await send(ws, {"event": "leave", "data": {"rooms": ["chat:x"]}})
            await eventually(lambda: not helper.get_clients_by_room("chat:x"))
            helper.send_to_room("chat:x", "m", 3)
            helper.send_to_room("chat:x", "m", 4, exclude=[me["id"]])
            helper.send_to_room("chat:x", "m", 5)
            # Same connection, same client id: rejoin and recover from the start.
            await join(ws, ["chat:x"], {"chat:x": {"epoch": position["epoch"], "offset": 0}})
            before, data = await joined(ws)
            assert [m["offset"] for m in before] == [2, 3, 5]
            assert data["recovered"] is True and data["offset"] == 5
            other, _ = await authed(node.url)
            await join(other, ["chat:x"], {"chat:x": {"epoch": position["epoch"], "offset": 0}})
            before, _ = await joined(other)
            assert [m["offset"] for m in before] == [1, 2, 3, 4, 5]
            await ws.close()
            await other.close()

    run(body())


def test_recovery_respects_exclude_for_the_same_client_id():
    history = MemoryHistory(10, 60)
    history.append("r", "m", 1, frozenset(), lambda n: orjson.dumps(n))
    history.append("r", "m", 2, frozenset({"c1"}), lambda n: orjson.dumps(n))
    epoch, offset = history.position("r")
    entries = history.since("r", epoch, 0)
    assert offset == 2 and entries is not None
    assert [e.offset for e in entries if "c1" not in e.exclude] == [1]


def test_memory_history_ring_bounds_and_epochs():
    now = [0.0]
    history = MemoryHistory(2, 10, clock=lambda: now[0])
    epoch, offset = history.position("r")
    assert offset == 0
    for n in range(3):
        history.append("r", "m", n, frozenset(), lambda o: b"%d" % o)
    assert history.since("r", epoch, 0) is None  # offset 1 is gone
    assert [e.offset for e in history.since("r", epoch, 1) or []] == [2, 3]
    now[0] = 11.0
    fresh, offset = history.position("r")
    assert fresh != epoch and offset == 0


@pytest.mark.parametrize(
    "options",
    [
        {"history_size": 0},
        {"history_size": "5"},
        {"history_ttl": 0},
        {"history_rooms": ""},
        {"presence_rooms": 5},
        {"presence_ttl": -1},
    ],
)
def test_bad_history_options_are_refused(options):
    with pytest.raises(ValueError):
        resolve_server_options(options)


def test_history_options_have_defaults_and_aliases():
    resolved = resolve_server_options({"historyRooms": "a*", "historyTtl": 2})
    assert resolved["history_rooms"] == "a*" and resolved["history_ttl"] == 2.0
    assert resolved["history_size"] == 100 and resolved["presence_ttl"] == 30.0
    config = ServerConfig(options={"history_rooms": "x"})
    assert config.options["history_rooms"] == "x"


def test_history_flags_and_environment_map_onto_the_options():
    from roomcast.cli import build_parser, config_from_args

    args = build_parser().parse_args(
        ["serve", "--history-rooms", "chat-*", "--history-ttl-ms", "1500"]
    )
    environ = {"ROOMCAST_HISTORY_SIZE": "7", "ROOMCAST_PRESENCE_ROOMS": "team-*"}
    options = config_from_args(args, environ).server_config().options
    assert options["history_rooms"] == "chat-*" and options["history_ttl"] == 1.5
    assert options["history_size"] == 7 and options["presence_rooms"] == "team-*"
    plain = config_from_args(build_parser().parse_args(["serve"]), {}).server_config()
    assert plain.options["history_rooms"] is None and plain.options["presence_rooms"] is None


def test_roomcast_serve_with_history_rooms_sends_joined():
    from process_support import roomcast, wait_listening

    proc = roomcast("serve", "--port", "0", "--allow-rooms", "*", "--history-rooms", "chat-*")
    try:
        port, lines = wait_listening(proc)
        [token] = [line.rsplit(" ", 1)[1] for line in lines if "demo token" in line]

        async def body():
            ws, _ = await authed(f"ws://127.0.0.1:{port}/ws", token)
            await join(ws, ["plain", "chat-1"])
            _, data = await joined(ws)
            assert data["room"] == "chat-1" and data["offset"] == 0
            await ws.close()

        run(body())
    finally:
        proc.kill()
        proc.communicate()
