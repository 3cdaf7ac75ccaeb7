"""Limits one client meets (SPEC §12, the README's "Limits" table), against a real server
over real sockets: rooms per client, room churn, validate_room_fn's timeout, handler tasks in
flight, the inbound rate limit, own-id rooms. (Frames per message: transport/test_fragments.)"""

from __future__ import annotations

import asyncio
from typing import Any

from redis_support import node, raw_redis
from roomcast import RedisHelper
from support import (
    allow_all,
    authed,
    closed_with,
    eventually,
    nothing_more,
    recv,
    run,
    running,
    send,
)
from websockets.exceptions import ConnectionClosed

# -- rooms per client -------------------------------------------------------------------------


def test_a_join_past_max_rooms_per_client_is_refused_whole_with_room_limit_reached():
    async def body():
        options = {"max_rooms_per_client": 5}
        async with running(
            validate_room_fn=allow_all, default_rooms=[], server_options=options
        ) as n:
            ws, data = await authed(n.url)
            client = n.helper.get_clients(data["id"])
            await send(ws, {"event": "join", "data": {"rooms": ["a", "b", "c"]}})
            await eventually(lambda: len(client.rooms) == 4)  # with its own-id room
            # One more would do (the 5th); two more would not: neither is joined.
            await send(ws, {"event": "join", "data": {"rooms": ["d", "e"]}})
            assert await recv(ws) == {"event": "error", "data": {"message": "Room limit reached"}}
            assert client.rooms == {data["id"], "a", "b", "c"}
            # Rooms it is in already do not count twice.
            await send(ws, {"event": "join", "data": {"rooms": ["a", "b", "d"]}})
            await eventually(lambda: "d" in client.rooms)
            await send(ws, {"event": "join", "data": {"rooms": ["e"]}})
            assert await recv(ws) == {"event": "error", "data": {"message": "Room limit reached"}}
            await send(ws, {"event": "leave", "data": {"rooms": ["a"]}})
            await send(ws, {"event": "join", "data": {"rooms": ["e"]}})
            await eventually(lambda: client.rooms == {data["id"], "b", "c", "d", "e"})
            await ws.close()

    run(body())


def test_a_hundred_thousand_rooms_asked_by_one_client_are_refused_with_no_subscription(
    redis_server,
):
    async def body():
        redis = RedisHelper(host="127.0.0.1", port=redis_server.port, ready_timeout=5)
        async with node(redis, default_rooms=[]) as n:
            ws, data = await authed(n.url)
            client = n.helper.get_clients(data["id"])
            for batch in range(10):  # 10 joins of 10,000 names: 100,000 rooms, each too many
                rooms = [f"r{batch}-{i}" for i in range(10_000)]
                await send(ws, {"event": "join", "data": {"rooms": rooms}})
                answer = await recv(ws)
                assert answer == {"event": "error", "data": {"message": "Room limit reached"}}
            assert client.rooms == {data["id"]}
            async with raw_redis(redis_server.port) as raw:
                own = f"ws:room:{data['id']}".encode()
                assert await raw.pubsub_channels("ws:room:*") == [own]  # its own-id room only
            # Under the limit, a join still works (and subscribes).
            await send(ws, {"event": "join", "data": {"rooms": ["r0-1"]}})
            await eventually(lambda: client.rooms == {data["id"], "r0-1"})
            await ws.close()

    run(body(), timeout=60)


# -- room churn -------------------------------------------------------------------------------


def test_room_churn_past_its_rate_pauses_reading_and_loses_nothing():
    async def body():
        options = {"room_changes_per_second": 50.0}
        handled: list[Any] = []
        async with running(
            validate_room_fn=allow_all,
            default_rooms=[],
            server_options=options,
            message_handler=lambda client_id, user_id, message: handled.append(message["data"]),
        ) as n:
            ws, data = await authed(n.url)
            client = n.helper.get_clients(data["id"])
            for i in range(60):  # 120 room changes: more than a second's worth
                await send(ws, {"event": "join", "data": {"rooms": [f"r{i}"]}})
                await send(ws, {"event": "leave", "data": {"rooms": [f"r{i}"]}})
            await send(ws, {"event": "join", "data": {"rooms": ["last"]}})
            await send(ws, {"event": "note", "data": "after"})
            await eventually(lambda: client.reading_paused)
            await eventually(lambda: handled == ["after"], timeout=10)
            assert client.rooms == {data["id"], "last"}
            await eventually(lambda: not client.reading_paused, timeout=10)
            await ws.close()

    run(body())


# -- validate_room_fn's timeout ---------------------------------------------------------------


def test_an_async_validate_room_fn_past_its_timeout_refuses_the_join():
    async def body():
        never = asyncio.Event()
        cancelled: list[bool] = []

        async def validate_room_fn(client_id: str, user_id: str | None, rooms: list[str]) -> Any:
            if rooms == ["slow"]:
                try:
                    await never.wait()
                except asyncio.CancelledError:
                    cancelled.append(True)
                    raise
            return rooms

        handled: list[Any] = []
        async with running(
            validate_room_fn=validate_room_fn,
            default_rooms=[],
            server_options={"validate_room_timeout": 0.2},
            message_handler=lambda client_id, user_id, message: handled.append(message["data"]),
        ) as n:
            ws, data = await authed(n.url)
            client = n.helper.get_clients(data["id"])
            await send(ws, {"event": "join", "data": {"rooms": ["slow"]}})
            await send(ws, {"event": "note", "data": "behind the join"})
            await eventually(lambda: handled == ["behind the join"])
            assert client.rooms == {data["id"]} and cancelled == [True]
            await send(ws, {"event": "join", "data": {"rooms": ["quick"]}})
            await eventually(lambda: "quick" in client.rooms)
            await nothing_more(ws)
            await ws.close()

    run(body())


# -- handler tasks in flight ------------------------------------------------------------------


def test_handler_tasks_past_the_bound_wait_in_order_and_reading_pauses():
    async def body():
        release = asyncio.Event()
        started: list[int] = []
        done: list[int] = []

        async def message_handler(client_id: str, user_id: str | None, message: Any) -> None:
            started.append(message["data"])
            await release.wait()
            done.append(message["data"])

        async with running(
            message_handler=message_handler, server_options={"max_handler_tasks_per_client": 4}
        ) as n:
            ws, data = await authed(n.url)
            other, _ = await authed(n.url, "user:bob")
            client = n.helper.get_clients(data["id"])
            for i in range(50):
                await send(ws, {"event": "work", "data": i})
            await eventually(lambda: client.reading_paused)
            assert started == [0, 1, 2, 3]
            # Another client is not held up by it.
            await send(other, {"event": "work", "data": 1000})
            await eventually(lambda: 1000 in started)
            await send(ws, {"event": "heartbeat"})
            release.set()
            await eventually(lambda: len(done) == 51)
            assert [i for i in started if i != 1000] == list(range(50))
            await eventually(lambda: not client.reading_paused)
            await ws.close()
            await other.close()

    run(body())


# -- the inbound rate limit -------------------------------------------------------------------


def test_a_flooding_client_gets_rate_limit_exceeded_then_1008_and_others_are_untouched():
    async def body():
        handled: list[str] = []
        options = {"rate_limit_messages": 50, "rate_limit_burst": 1}
        async with running(
            server_options=options,
            message_handler=lambda client_id, user_id, message: handled.append(client_id),
        ) as n:
            flood, flood_data = await authed(n.url)
            calm, calm_data = await authed(n.url, "user:bob")
            try:
                for _ in range(1000):
                    await send(flood, {"event": "spam"})
            except ConnectionClosed:
                pass
            code, reason, received = await closed_with(flood)
            assert (code, reason) == (1008, "Rate limit exceeded")
            assert received == [{"event": "error", "data": {"message": "Rate limit exceeded"}}]
            # Every message that passed was handled; a client within the limit is unaffected.
            assert 48 <= handled.count(flood_data["id"]) <= 100
            for _ in range(10):
                await send(calm, {"event": "note"})
            await eventually(lambda: handled.count(calm_data["id"]) == 10)
            await nothing_more(calm)
            await calm.close()

    run(body())


def test_the_rate_limit_is_off_by_default():
    async def body():
        handled: list[str] = []
        async with running(
            message_handler=lambda client_id, user_id, message: handled.append(client_id)
        ) as n:
            ws, _ = await authed(n.url)
            for _ in range(3000):
                await send(ws, {"event": "spam"})
            await eventually(lambda: len(handled) == 3000)
            await nothing_more(ws)
            await ws.close()

    run(body())


# -- own-id rooms -----------------------------------------------------------------------------


def test_a_client_cannot_join_another_clients_own_id_room_through_the_library():
    async def body():
        async with running(validate_room_fn=allow_all, default_rooms=[]) as n:
            victim, victim_data = await authed(n.url, "user:victim")
            spy, spy_data = await authed(n.url, "user:spy")
            spy_client = n.helper.get_clients(spy_data["id"])
            await send(spy, {"event": "join", "data": {"rooms": [victim_data["id"], "chat"]}})
            await eventually(lambda: "chat" in spy_client.rooms)
            assert spy_client.rooms == {spy_data["id"], "chat"}
            n.helper.send_to_room(victim_data["id"], "private", "secret")  # its own-id room
            assert await recv(victim) == {"event": "private", "data": "secret"}
            await nothing_more(spy)
            await victim.close()
            await spy.close()

    run(body())


def test_an_application_may_opt_out_of_private_client_rooms():
    async def body():
        options = {"private_client_rooms": False}
        async with running(
            validate_room_fn=allow_all, default_rooms=[], server_options=options
        ) as n:
            victim, victim_data = await authed(n.url, "user:victim")
            spy, spy_data = await authed(n.url, "user:spy")
            spy_client = n.helper.get_clients(spy_data["id"])
            await send(spy, {"event": "join", "data": {"rooms": [victim_data["id"]]}})
            await eventually(lambda: victim_data["id"] in spy_client.rooms)
            await victim.close()
            await spy.close()

    run(body())


# -- the join-barrier queue -------------------------------------------------------------------


def test_messages_behind_a_join_barrier_past_join_queue_limit_pause_reading_and_all_arrive():
    async def body():
        release = asyncio.Event()

        async def validate_room_fn(client_id: str, user_id: str | None, rooms: list[str]) -> Any:
            await release.wait()  # the join (and what the client sends after it) waits
            return rooms

        handled: list[Any] = []
        async with running(
            validate_room_fn=validate_room_fn,
            default_rooms=[],
            server_options={"join_queue_limit": 10_000},
            message_handler=lambda client_id, user_id, message: handled.append(message["data"]),
        ) as n:
            ws, data = await authed(n.url)
            client = n.helper.get_clients(data["id"])
            await send(ws, {"event": "join", "data": {"rooms": ["a"]}})
            for i in range(20):  # 20 x ~1 KB: past 10,000 bytes, far below 256 messages
                await send(ws, {"event": "note", "data": [i, "x" * 1000]})
            await eventually(lambda: client.reading_paused)
            assert handled == []
            release.set()
            await eventually(lambda: len(handled) == 20)
            assert [item[0] for item in handled] == list(range(20))
            assert "a" in client.rooms
            await eventually(lambda: not client.reading_paused)
            await ws.close()

    run(body())
