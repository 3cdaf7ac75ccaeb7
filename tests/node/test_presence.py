"""Presence on one node (memory broker), over real sockets (SPEC §10)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support import allow_all, authed, eventually, nothing_more, recv, run, running, send

PRESENCE = {"presence_rooms": "team:*"}
NOT_ALLOWED = {"event": "error", "data": {"message": "Presence not allowed"}}


def presence_node(**kwargs: Any) -> Any:
    kwargs.setdefault("server_options", PRESENCE)
    return running(validate_room_fn=allow_all, default_rooms=[], **kwargs)


async def member(node: Any, token: str, room: str) -> tuple[Any, str]:
    ws, data = await authed(node.url, token)
    await send(ws, {"event": "join", "data": {"rooms": [room]}})
    await eventually(lambda: room in node.helper.get_clients(data["id"]).rooms)
    return ws, data["id"]


def test_a_member_gets_every_member_with_user_ids():
    async def body():
        async with presence_node() as node:
            alice, alice_id = await member(node, "user:alice", "team:a")
            anon, anon_id = await member(node, "anon", "team:a")
            await send(alice, {"event": "presence", "data": {"room": "team:a"}})
            answer = await recv(alice)
            assert answer["event"] == "presence" and answer["data"]["room"] == "team:a"
            clients = sorted(answer["data"]["clients"], key=lambda c: c["clientId"])
            expected = [{"clientId": alice_id, "userId": "alice"}, {"clientId": anon_id}]
            assert clients == sorted(expected, key=lambda c: c["clientId"])
            assert sorted(await node.helper.presence("team:a"), key=lambda c: c["clientId"]) == (
                clients
            )
            await anon.close()
            await eventually(
                lambda: anon_id not in {c.id for c in node.helper.get_clients_by_room("team:a")}
            )
            assert await node.helper.presence("team:a") == [
                {"clientId": alice_id, "userId": "alice"}
            ]
            await alice.close()

    run(body())


def test_non_members_and_rooms_without_presence_are_refused():
    async def body():
        async with presence_node() as node:
            await member(node, "user:bob", "team:b")
            ws, _ = await member(node, "user:eve", "lobby")
            for data in ({"room": "team:b"}, {"room": "lobby"}, {"room": 5}, None, "team:b"):
                await send(ws, {"event": "presence", "data": data})
                assert await recv(ws) == NOT_ALLOWED
            assert await node.helper.presence("lobby") == []
            await ws.close()

    run(body())


@pytest.mark.parametrize("asynchronous", [False, True])
def test_validate_presence_fn_widens_who_may_ask(asynchronous):
    calls: list[tuple[str, str | None, str]] = []

    def allow(client_id: str, user_id: str | None, room: str) -> bool:
        calls.append((client_id, user_id, room))
        return user_id == "admin"

    async def allow_async(client_id: str, user_id: str | None, room: str) -> bool:
        await asyncio.sleep(0)
        return allow(client_id, user_id, room)

    async def body():
        async with presence_node() as node:
            node.helper.validate_presence_fn = allow_async if asynchronous else allow
            _, bob_id = await member(node, "user:bob", "team:c")
            admin, admin_data = await authed(node.url, "user:admin")
            await send(admin, {"event": "presence", "data": {"room": "team:c"}})
            assert await recv(admin) == {
                "event": "presence",
                "data": {"room": "team:c", "clients": [{"clientId": bob_id, "userId": "bob"}]},
            }
            eve, eve_data = await authed(node.url, "user:eve")
            await send(eve, {"event": "presence", "data": {"room": "team:c"}})
            assert await recv(eve) == NOT_ALLOWED
            assert calls == [
                (admin_data["id"], "admin", "team:c"),
                (eve_data["id"], "eve", "team:c"),
            ]
            await admin.close()
            await eve.close()

    run(body())


def test_a_raising_validate_presence_fn_refuses_and_the_server_goes_on():
    def boom(client_id: str, user_id: str | None, room: str) -> bool:
        raise RuntimeError("boom")

    async def body():
        async with presence_node() as node:
            node.helper.validate_presence_fn = boom
            ws, _ = await authed(node.url)
            await send(ws, {"event": "presence", "data": {"room": "team:d"}})
            assert await recv(ws) == NOT_ALLOWED
            await send(ws, {"event": "presence", "data": {"room": "team:d"}})
            assert await recv(ws) == NOT_ALLOWED
            await ws.close()

    run(body())


def test_validate_presence_fn_signature_is_checked():
    async def body():
        async with presence_node() as node:
            with pytest.raises(TypeError, match="validate_presence_fn"):
                node.helper.validate_presence_fn = lambda a, b: True

    run(body())


def test_without_presence_rooms_a_presence_event_goes_to_message_handler():
    handled: list[dict[str, Any]] = []

    async def body():
        async with running(
            validate_room_fn=allow_all,
            message_handler=lambda client_id, user_id, message: handled.append(message),
        ) as node:
            ws, _ = await authed(node.url)
            await send(ws, {"event": "presence", "data": {"room": "team:a"}})
            await eventually(lambda: bool(handled))
            assert handled == [{"event": "presence", "data": {"room": "team:a"}}]
            await nothing_more(ws)
            await ws.close()

    run(body())
