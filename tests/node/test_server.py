"""The single-node server: authentication, rooms, users, delivery, callbacks, cleanup, load."""

from __future__ import annotations

import asyncio
import gc
import re
import weakref

import orjson
import pytest
from support import (
    RawClient,
    allow_all,
    authed,
    closed_with,
    eventually,
    nothing_more,
    open_client,
    recv,
    run,
    running,
    send,
)

ISO_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


# -- connected ---------------------------------------------------------------------------


def test_connected_payload_has_id_user_id_and_iso_time():
    async def body():
        async with running() as node:
            ws, data = await authed(node.url, "user:alice")
            assert set(data) == {"id", "userId", "time"}
            assert data["userId"] == "alice"
            assert ISO_MS_Z.match(data["time"]), data["time"]
            client = node.helper.get_clients(data["id"])
            assert client.user_id == "alice" and client.state == "authenticated"
            assert client.metadata == {"token": "user:alice"}
            await ws.close()

    run(body())


def test_a_connection_keeps_no_upgrade_headers_after_the_upgrade():
    """picows keeps the upgrade request and response for the connection's life; their
    headers (~2 KB per idle connection) and the request line's bytes (the path with its
    query string) are released once the WebSocket is open."""

    async def body():
        async with running() as node:
            ws, data = await authed(node.url + "?token=" + "t" * 200, "user:alice")
            transport = node.helper.get_clients(data["id"]).transport
            assert len(transport.request.headers) == 0
            assert len(transport.response.headers) == 0
            request = transport.request
            assert request.method == request.path == request.version == b""
            with pytest.raises(TypeError):  # one shared mapping: nobody may add to it
                transport.request.headers["X"] = "y"
            await send(ws, {"event": "join", "data": {"rooms": ["r"]}})
            await ws.ping()
            await ws.close()

    run(body())


def test_connected_payload_of_an_anonymous_user_has_no_user_id_key():
    async def body():
        async with running() as node:
            ws, data = await authed(node.url, "anon")
            assert set(data) == {"id", "time"}
            await ws.close()

    run(body())


def test_client_states_move_from_unauthorized_to_authenticated():
    gate = asyncio.Event()

    async def auth(data):
        await gate.wait()
        return {"user_id": "u"}

    async def body():
        async with running(authenticate_fn=auth) as node:
            ws = await open_client(node.url)
            await eventually(lambda: len(node.helper.get_clients()) == 1)
            [client] = node.helper.get_clients().values()
            assert client.state == "unauthorized"
            await send(ws, {"event": "authenticate", "data": {"token": "t"}})
            await eventually(lambda: client.state == "authenticating")
            gate.set()
            assert (await recv(ws))["event"] == "connected"
            assert client.state == "authenticated"
            await ws.close()
            await eventually(lambda: client.state == "disconnected")

    run(body())


# -- rooms -------------------------------------------------------------------------------


def test_authenticated_client_is_in_its_own_room_and_the_default_rooms():
    async def body():
        async with running() as node:
            ws, data = await authed(node.url)
            client = node.helper.get_clients(data["id"])
            assert client.rooms == {data["id"], "ws-default", "ws-notification"}
            assert node.helper.get_clients_by_room("ws-default") == [client]
            await ws.close()

    run(body())


def test_default_rooms_can_be_replaced_or_emptied():
    async def body():
        async with running(default_rooms=["lobby"]) as node:
            ws, data = await authed(node.url)
            assert node.helper.get_clients(data["id"]).rooms == {data["id"], "lobby"}
            await ws.close()
        async with running(default_rooms=[]) as node:
            ws, data = await authed(node.url)
            assert node.helper.get_clients(data["id"]).rooms == {data["id"]}
            await ws.close()

    run(body())


def test_join_sanitizes_names_before_validate_room_fn():
    calls = []

    def validate(client_id, user_id, rooms):
        calls.append((client_id, user_id, rooms))
        return rooms

    async def body():
        async with running(validate_room_fn=validate) as node:
            ws, data = await authed(node.url, "user:bob")
            rooms = [
                "",
                "ws:broadcast",
                "ws:room:x",
                "a" * 257,
                42,
                None,
                "b" * 256,
                "lobby",
                "lobby",
            ]
            await send(ws, {"event": "join", "data": {"rooms": rooms}})
            await eventually(lambda: bool(calls))
            assert calls == [(data["id"], "bob", ["b" * 256, "lobby"])]
            client = node.helper.get_clients(data["id"])
            assert {"b" * 256, "lobby"} <= client.rooms
            await nothing_more(ws)  # a join is never answered
            await ws.close()

    run(body())


def test_join_keeps_only_what_validate_room_fn_allows():
    async def body():
        async with running(
            validate_room_fn=lambda client_id, user_id, rooms: ["a", "ws:evil", "z"]
        ) as node:
            ws, data = await authed(node.url)
            await send(ws, {"event": "join", "data": {"rooms": ["a", "b"]}})
            client = node.helper.get_clients(data["id"])
            await eventually(lambda: "a" in client.rooms)
            rooms = client.rooms
            assert "a" in rooms and "b" not in rooms and "ws:evil" not in rooms and "z" not in rooms
            await ws.close()

    run(body())


def test_async_validate_room_fn_is_awaited():
    async def validate(client_id, user_id, rooms):
        await asyncio.sleep(0.05)
        return [r for r in rooms if r.startswith("ok")]

    async def body():
        async with running(validate_room_fn=validate) as node:
            ws, data = await authed(node.url)
            await send(ws, {"event": "join", "data": {"rooms": ["ok-1", "no-1"]}})
            client = node.helper.get_clients(data["id"])
            await eventually(lambda: "ok-1" in client.rooms)
            assert "no-1" not in client.rooms
            await ws.close()

    run(body())


def test_join_without_validate_room_fn_is_refused():
    async def body():
        async with running() as node:
            ws, data = await authed(node.url)
            await send(ws, {"event": "join", "data": {"rooms": ["lobby"]}})
            await nothing_more(ws)
            assert "lobby" not in node.helper.get_clients(data["id"]).rooms
            await ws.close()

    run(body())


def test_raising_validate_room_fn_joins_nothing():
    def validate(client_id, user_id, rooms):
        raise RuntimeError("policy service down")

    async def body():
        async with running(validate_room_fn=validate) as node:
            ws, data = await authed(node.url)
            await send(ws, {"event": "join", "data": {"rooms": ["lobby"]}})
            await send(ws, {"event": "heartbeat"})
            # Handled in order: once the heartbeat is counted, the join has been acted on.
            await eventually(lambda: node.helper.counters.received["heartbeat"] == 1)
            assert "lobby" not in node.helper.get_clients(data["id"]).rooms
            await ws.close()

    run(body())


def test_leave_only_leaves_joined_rooms_and_never_the_own_id_room():
    async def body():
        async with running(validate_room_fn=allow_all) as node:
            ws, data = await authed(node.url)
            cid = data["id"]
            await send(ws, {"event": "join", "data": {"rooms": ["a", "b"]}})
            await eventually(lambda: {"a", "b"} <= node.helper.get_clients(cid).rooms)
            await send(ws, {"event": "leave", "data": {"rooms": ["a", "never-joined", cid, 7]}})
            await eventually(lambda: "a" not in node.helper.get_clients(cid).rooms)
            assert node.helper.get_clients(cid).rooms == {cid, "b", "ws-default", "ws-notification"}
            assert not node.helper.leave_room(cid, cid)
            assert node.helper.get_clients_by_room("never-joined") == []
            await ws.close()

    run(body())


def test_server_side_join_and_leave():
    async def body():
        async with running() as node:
            ws, data = await authed(node.url)
            cid = data["id"]
            assert node.helper.join_room(cid, "vip")
            assert not node.helper.join_room(cid, "vip")
            assert not node.helper.join_room("nobody", "vip")
            node.helper.send_to_room("vip", "hello", {"n": 1})
            assert await recv(ws) == {"event": "hello", "data": {"n": 1}}
            assert node.helper.leave_room(cid, "vip")
            node.helper.send_to_room("vip", "hello", {"n": 2})
            await nothing_more(ws)
            await ws.close()

    run(body())


# -- delivery ------------------------------------------------------------------------------


def test_room_delivery_with_exclude_and_data_forms():
    async def body():
        async with running(validate_room_fn=allow_all) as node:
            clients = [await authed(node.url, f"user:u{i}") for i in range(3)]
            for ws, _ in clients:
                await send(ws, {"event": "join", "data": {"rooms": ["room"]}})
            await eventually(lambda: len(node.helper.get_clients_by_room("room")) == 3)
            excluded = clients[0][1]["id"]
            assert node.helper.send_to_room("room", "msg", {"x": 1}, exclude=[excluded]) == 2
            for ws, _ in clients[1:]:
                assert await recv(ws) == {"event": "msg", "data": {"x": 1}}
            await nothing_more(clients[0][0])
            node.helper.send_to_room("room", "no-data")
            node.helper.send_to_room("room", "null-data", None)
            for ws, _ in clients:
                assert await recv(ws) == {"event": "no-data"}
                assert await recv(ws) == {"event": "null-data", "data": None}
            for ws, _ in clients:
                await ws.close()

    run(body())


def test_broadcast_reaches_only_authenticated_clients():
    async def body():
        async with running() as node:
            a, _ = await authed(node.url, "user:a")
            b, data_b = await authed(node.url, "user:b")
            pending = await open_client(node.url)
            await eventually(lambda: len(node.helper.get_clients()) == 3)
            assert node.helper.broadcast("news", {"v": 1}) == 2
            assert await recv(a) == {"event": "news", "data": {"v": 1}}
            assert await recv(b) == {"event": "news", "data": {"v": 1}}
            await nothing_more(pending)
            node.helper.broadcast("news", {"v": 2}, exclude=[data_b["id"]])
            assert await recv(a) == {"event": "news", "data": {"v": 2}}
            await nothing_more(b)
            for ws in (a, b, pending):
                await ws.close()

    run(body())


def test_targeted_sends_never_reach_unauthenticated_clients():
    async def body():
        async with running() as node:
            pending = await open_client(node.url)
            await eventually(lambda: len(node.helper.get_clients()) == 1)
            [cid] = node.helper.get_clients()
            assert node.helper.send_to_client(cid, "secret", 1) == 0
            node.helper.send(cid, {"topic": "secret", "data": 1})
            await nothing_more(pending)
            await pending.close()

    run(body())


def test_one_user_with_several_sessions_gets_every_message_on_each():
    async def body():
        async with running() as node:
            first, d1 = await authed(node.url, "user:carol")
            second, d2 = await authed(node.url, "user:carol")
            other, _ = await authed(node.url, "user:dave")
            sessions = node.helper.get_clients_by_user("carol")
            assert {c.id for c in sessions} == {d1["id"], d2["id"]}
            assert node.helper.send_to_user("carol", "dm", {"text": "hi"}) == 2
            for ws in (first, second):
                assert await recv(ws) == {"event": "dm", "data": {"text": "hi"}}
            await nothing_more(other)
            await first.close()
            await eventually(lambda: len(node.helper.get_clients_by_user("carol")) == 1)
            for ws in (second, other):
                await ws.close()

    run(body())


def test_send_resolves_destination_like_the_original():
    async def body():
        async with running(validate_room_fn=allow_all) as node:
            a, da = await authed(node.url, "user:a")
            b, _ = await authed(node.url, "user:b")
            await send(b, {"event": "join", "data": {"rooms": ["team"]}})
            await eventually(lambda: len(node.helper.get_clients_by_room("team")) == 1)
            node.helper.send(payload={"topic": "all", "data": 1})
            for ws in (a, b):
                assert await recv(ws) == {"event": "all", "data": 1}
            node.helper.send(da["id"], {"topic": "only-a", "data": None})
            assert await recv(a) == {"event": "only-a", "data": None}
            node.helper.send("team", {"topic": "team", "data": [1]})
            assert await recv(b) == {"event": "team", "data": [1]}
            node.helper.send("nowhere", {"topic": "lost", "data": 1})
            node.helper.send("team", {"topic": "no-data-key"})
            node.helper.send("team", {"data": 1})
            node.helper.send("team", None)
            for ws in (a, b):
                await nothing_more(ws)
                await ws.close()

    run(body())


def test_custom_events_go_to_message_handler_and_server_events_are_dropped():
    seen = []

    async def handler(client_id, user_id, message):
        seen.append((client_id, user_id, message))

    async def body():
        async with running(message_handler=handler) as node:
            ws, data = await authed(node.url, "user:eve")
            await send(ws, {"event": "chat", "data": {"t": 1}, "id": "m1"})
            for event in ("connected", "error", "disconnect", "heartbeat"):
                await send(ws, {"event": event, "data": {}})
            await send(ws, {"event": "chat", "data": 2})
            # The second chat was sent last: once it is seen, every earlier event was handled.
            await eventually(lambda: len(seen) == 2)
            assert seen == [
                (data["id"], "eve", {"event": "chat", "data": {"t": 1}, "id": "m1"}),
                (data["id"], "eve", {"event": "chat", "data": 2}),
            ]
            await ws.close()

    run(body())


# -- callbacks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True])
def test_connected_is_sent_before_client_connected_fn_and_disconnect_runs_after_cleanup(is_async):
    order = []
    holder = {}

    def connected(client_id, user_id, metadata):
        order.append(("connected_fn", user_id, metadata))
        holder["helper"].send_to_client(client_id, "welcome", {"id": client_id})

    def disconnected(client_id, user_id):
        helper = holder["helper"]
        order.append(
            (
                "disconnected_fn",
                user_id,
                helper.get_clients(client_id),
                helper.get_clients_by_room(client_id),
                helper.get_clients_by_user(user_id),
            )
        )

    async def aconnected(**kw):
        connected(**kw)

    async def adisconnected(**kw):
        disconnected(**kw)

    async def body():
        async with running(
            client_connected_fn=aconnected if is_async else connected,
            client_disconnected_fn=adisconnected if is_async else disconnected,
        ) as node:
            holder["helper"] = node.helper
            ws, data = await authed(node.url, "user:fay")
            assert await recv(ws) == {"event": "welcome", "data": {"id": data["id"]}}
            await ws.close()
            await eventually(lambda: len(order) == 2)
            assert order == [
                ("connected_fn", "fay", {"token": "user:fay"}),
                ("disconnected_fn", "fay", None, [], []),
            ]

    run(body())


def test_client_disconnected_fn_runs_only_for_clients_that_got_connected():
    calls = []

    async def body():
        async with running(
            auth_timeout=0.2,
            client_disconnected_fn=lambda client_id, user_id: calls.append(client_id),
        ) as node:
            never = await open_client(node.url)
            refused = await open_client(node.url)
            await send(refused, {"event": "authenticate", "data": {"token": "bad"}})
            ok, data = await authed(node.url)
            await closed_with(never)
            await closed_with(refused)
            await ok.close()
            await eventually(lambda: len(calls) == 1)
            await eventually(lambda: not node.helper.get_clients())  # every disconnect handled
            assert calls == [data["id"]]

    run(body())


@pytest.mark.parametrize("is_async", [False, True])
def test_raising_callbacks_are_logged_and_change_nothing(is_async, caplog):
    def boom(**kw):
        raise RuntimeError("callback bug")

    async def aboom(**kw):
        raise RuntimeError("callback bug")

    fn = aboom if is_async else boom

    async def body():
        async with running(
            client_connected_fn=fn,
            client_disconnected_fn=fn,
            message_handler=fn,
            validate_room_fn=allow_all,
        ) as node:
            ws, data = await authed(node.url)
            await send(ws, {"event": "chat", "data": 1})
            await send(ws, {"event": "join", "data": {"rooms": ["r"]}})
            await eventually(lambda: "r" in node.helper.get_clients(data["id"]).rooms)
            node.helper.send_to_room("r", "still", "alive")
            assert await recv(ws) == {"event": "still", "data": "alive"}
            await ws.close()
            await eventually(lambda: node.helper.get_clients() == {})
            other, _ = await authed(node.url)
            await other.close()

    run(body())
    assert "callback bug" in caplog.text


# -- cleanup -----------------------------------------------------------------------------------


def test_disconnect_removes_the_client_from_every_index():
    async def body():
        async with running(validate_room_fn=allow_all) as node:
            ws, data = await authed(node.url, "user:gus")
            await send(ws, {"event": "join", "data": {"rooms": ["x", "y"]}})
            await eventually(lambda: len(node.helper.get_clients_by_room("y")) == 1)
            await ws.close()
            await eventually(lambda: node.helper.get_clients() == {})
            helper = node.helper
            for room in ("x", "y", data["id"], "ws-default", "ws-notification"):
                assert helper.get_clients_by_room(room) == []
            assert helper.get_clients_by_user("gus") == []
            stats = helper.stats()
            assert stats["connections"] == 0 and stats["rooms"] == 0 and stats["users"] == 0

    run(body())


# -- load and slow consumers -----------------------------------------------------------------


def test_slow_consumer_does_not_stall_others_and_memory_stays_bounded():
    async def body():
        limit = 64 * 1024
        async with running(
            validate_room_fn=allow_all, server_options={"backpressure_limit": limit}
        ) as node:
            fast, fast_data = await authed(node.url, "user:fast")
            slow, _ = await RawClient.connect(node.port, rcvbuf=4096)
            slow.send_text('{"event":"authenticate","data":{"token":"user:slow"}}')
            await slow.read_frame()  # connected; then it never reads again
            await eventually(lambda: len(node.helper.get_clients_by_room("ws-default")) == 2)
            chunk = "x" * 16 * 1024
            received = 0
            for i in range(200):  # 3.2 MB to each client, far beyond the limit
                node.helper.send_to_room("ws-default", "bulk", {"i": i, "pad": chunk})
                message = await recv(fast)
                assert message["data"]["i"] == i
                received += 1
            assert received == 200
            stats = node.helper.stats()
            assert stats["skipped"] > 0
            slow_client = next(c for c in node.helper.get_clients().values() if c.user_id == "slow")
            assert slow_client.backpressured
            # What the server holds for the slow client stays within the limit plus one message.
            buffered = slow_client.transport.underlying_transport.get_write_buffer_size()
            assert 0 < buffered <= limit + 17 * 1024
            assert node.helper.get_clients(fast_data["id"]).backpressured is False
            slow.close()
            await fast.close()

    run(body(), timeout=60)


def test_close_on_backpressure_limit_drops_the_slow_client():
    async def body():
        async with running(
            server_options={"backpressure_limit": 32 * 1024, "close_on_backpressure_limit": True}
        ) as node:
            slow, _ = await RawClient.connect(node.port, rcvbuf=4096)
            slow.send_text('{"event":"authenticate","data":{"token":"user:slow"}}')
            await slow.read_frame()
            fast, _ = await authed(node.url, "user:fast")
            # Kernel socket buffers absorb the first few MB; keep sending until the server
            # gives up on the slow client (bounded: 32 MB at most).
            for i in range(2000):
                node.helper.broadcast("bulk", {"i": i, "pad": "x" * 16384})
                assert (await recv(fast))["data"]["i"] == i
                if len(node.helper.get_clients()) == 1:
                    break
            await eventually(lambda: len(node.helper.get_clients()) == 1)
            slow.close()
            await fast.close()

    run(body(), timeout=60)


def test_a_thousand_clients_all_receive_a_broadcast():
    async def body():
        async with running() as node:
            sockets = await asyncio.gather(*(authed(node.url, f"user:u{i}") for i in range(1000)))
            assert node.helper.broadcast("tick", {"n": 1}) == 1000
            messages = await asyncio.gather(*(recv(ws) for ws, _ in sockets))
            assert messages == [{"event": "tick", "data": {"n": 1}}] * 1000
            await asyncio.gather(*(ws.close() for ws, _ in sockets))

    run(body(), timeout=120)


def test_messages_to_one_client_keep_their_order_across_fan_out_and_direct_sends():
    async def body():
        async with running() as node:
            ws, data = await authed(node.url)
            for i in range(50):
                if i % 3 == 0:
                    node.helper.broadcast("n", i)
                elif i % 3 == 1:
                    node.helper.send_to_client(data["id"], "n", i)
                else:
                    node.helper.send_to_room("ws-default", "n", i)
            got = [(await recv(ws))["data"] for _ in range(50)]
            assert got == list(range(50))
            await ws.close()

    run(body())


# -- idle timeout and protocol pings -----------------------------------------------------------


def test_pings_keep_a_responsive_connection_open_past_the_idle_timeout():
    async def body():
        async with running(
            heartbeat_timeout=30, server_options={"idle_timeout": 0.6, "send_pings": True}
        ) as node:
            ws, _ = await authed(node.url)  # websockets answers pings by itself
            await asyncio.sleep(1.5)
            assert len(node.helper.get_clients()) == 1
            await ws.close()

    run(body())


def test_a_connection_that_sends_nothing_closes_after_the_idle_timeout():
    async def body():
        async with running(
            auth_timeout=30, server_options={"idle_timeout": 0.5, "send_pings": True}
        ) as node:
            raw, _ = await RawClient.connect(node.port)  # never answers pings
            opcode, _ = await raw.read_frame()
            assert opcode == 0x9  # a ping first, after half the idle timeout
            code, reason = await raw.read_close()
            assert (code, reason) == (1001, "Idle timeout")

    run(body())


def test_envelope_from_the_broker_is_delivered_and_own_envelopes_are_ignored():
    async def body():
        from roomcast.broker.memory import MemoryBroker

        async with running(redis_connection=MemoryBroker("net1")) as node:
            ws, data = await authed(node.url)
            other = MemoryBroker("net1")
            await other.start(lambda channel, raw: None)
            other.publish(
                "ws:room:ws-default",
                orjson.dumps(
                    {
                        "serverId": "emitter",
                        "type": "room",
                        "target": "ws-default",
                        "event": "e",
                        "data": 1,
                    }
                ),
            )
            assert await recv(ws) == {"event": "e", "data": 1}
            other.publish(
                "ws:broadcast",
                orjson.dumps(
                    {
                        "serverId": node.helper.server_id,
                        "type": "broadcast",
                        "event": "mine",
                        "data": 1,
                    }
                ),
            )
            other.publish("ws:broadcast", b"not json")
            other.publish("ws:broadcast", b'{"serverId": 5, "event": "x"}')
            other.publish(
                "ws:client:" + data["id"],
                orjson.dumps(
                    {"serverId": "n2", "type": "client", "target": data["id"], "event": "direct"}
                ),
            )
            assert await recv(ws) == {"event": "direct"}
            await nothing_more(ws)
            await other.close()
            await ws.close()

    run(body())


def test_a_disconnected_client_is_freed_without_the_cycle_collector():
    """picows' per-connection log names its client (a strong reference: the client holds
    picows' transport, which holds the log); the client breaks that cycle when it
    disconnects, so reference counting frees it."""

    async def body():
        async with running() as node:
            ws, data = await authed(node.url)
            ref = weakref.ref(node.helper.get_clients(data["id"]))
            gc.disable()
            try:
                await ws.close()
                await eventually(lambda: ref() is None, timeout=5, what="the Client freed")
            finally:
                gc.enable()

    run(body())
