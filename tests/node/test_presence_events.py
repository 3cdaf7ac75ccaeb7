"""presence-join / presence-leave (opt-in, `presence_events`) over real sockets: one node on
the memory broker, and two nodes through a real redis-server."""

from __future__ import annotations

from typing import Any

import pytest
from redis_support import node, redis_at, settle
from roomcast.config import resolve_server_options
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

EVENTS = {"presence_rooms": "team:*", "presence_events": True}


def events_node(**kwargs: Any) -> Any:
    kwargs.setdefault("default_rooms", [])
    kwargs.setdefault("server_options", EVENTS)
    return running(validate_room_fn=allow_all, **kwargs)


def join_event(room: str, client_id: str, user_id: str | None = None) -> dict[str, Any]:
    data = {"room": room, "clientId": client_id}
    if user_id is not None:
        data["userId"] = user_id
    return {"event": "presence-join", "data": data}


def leave_event(room: str, client_id: str, user_id: str | None = None) -> dict[str, Any]:
    return {"event": "presence-leave", "data": join_event(room, client_id, user_id)["data"]}


def test_members_hear_joins_and_leaves_of_every_kind_on_one_node():
    async def body():
        async with events_node() as n:
            helper = n.helper
            alice, a = await authed(n.url, "user:alice")
            await join(alice, ["team:a", "lobby"])
            assert await recv(alice) == join_event("team:a", a["id"], "alice")  # its own too
            anon, b = await authed(n.url, "anon")
            await join(anon, ["team:a"])
            for ws in (alice, anon):
                assert await recv(ws) == join_event("team:a", b["id"])  # no userId
            await send(anon, {"event": "leave", "data": {"rooms": ["team:a"]}})
            assert await recv(alice) == leave_event("team:a", b["id"])
            await send(anon, {"event": "leave", "data": {"rooms": ["team:a"]}})  # not a member
            carol, c = await authed(n.url, "user:carol")
            assert helper.join_room(c["id"], "team:a")  # the server's join
            assert await recv(alice) == join_event("team:a", c["id"], "carol")
            assert await recv(carol) == join_event("team:a", c["id"], "carol")
            assert helper.leave_room(c["id"], "team:a")
            assert await recv(alice) == leave_event("team:a", c["id"], "carol")
            assert await helper.join_room_confirmed(c["id"], "team:a")
            assert await recv(alice) == join_event("team:a", c["id"], "carol")
            await recv(carol)
            await carol.close()  # a disconnect is a leave
            assert await recv(alice) == leave_event("team:a", c["id"], "carol")
            await join(anon, ["lobby"])  # no presence in lobby: nothing
            await nothing_more(alice)
            await nothing_more(anon)
            await alice.close()
            await anon.close()

    run(body())


def test_default_presence_rooms_announce_the_login():
    async def body():
        async with events_node(default_rooms=["team:home"]) as n:
            first, a = await authed(n.url)
            assert await recv(first) == join_event("team:home", a["id"], "alice")
            second, b = await authed(n.url, "user:bob")
            for ws in (first, second):
                assert await recv(ws) == join_event("team:home", b["id"], "bob")
            await second.close()
            assert await recv(first) == leave_event("team:home", b["id"], "bob")
            await first.close()

    run(body())


def test_without_presence_events_nothing_is_announced():
    async def body():
        async with events_node(server_options={"presence_rooms": "team:*"}) as n:
            ws, _ = await authed(n.url)
            await join(ws, ["team:q"])
            other, o = await authed(n.url, "user:bob")
            await join(other, ["team:q"])
            await eventually(lambda: "team:q" in n.helper.get_clients(o["id"]).rooms)
            await other.close()
            await nothing_more(ws)
            await ws.close()

    run(body())


def test_presence_events_in_a_history_room_carry_no_offset_and_are_not_kept():
    options = {**EVENTS, "history_rooms": "team:*"}

    async def body():
        async with events_node(server_options=options) as n:
            ws, a = await authed(n.url)
            await join(ws, ["team:h"])
            got = [await recv(ws), await recv(ws)]
            assert join_event("team:h", a["id"], "alice") in got
            [position] = [m["data"] for m in got if m["event"] == "joined"]
            other, b = await authed(n.url, "user:bob")
            await join(other, ["team:h"])
            assert await recv(ws) == join_event("team:h", b["id"], "bob")  # no room/offset
            n.helper.send_to_room("team:h", "m", 1)
            assert (await recv(ws))["offset"] == 1  # presence events took no offset
            late, _ = await authed(n.url, "user:late")
            recover = {"team:h": {"epoch": position["epoch"], "offset": 0}}
            await join(late, ["team:h"], recover)
            before, data = await joined(late)
            assert [m["event"] for m in before] == ["m"] and data["recovered"] is True
            for client in (ws, other, late):
                await client.close()

    run(body())


@pytest.mark.parametrize(
    "options",
    [{"presence_events": True}, {"presence_rooms": "t*", "presence_events": "yes"}],
)
def test_bad_presence_events_options_are_refused(options):
    with pytest.raises(ValueError, match="presence_events"):
        resolve_server_options(options)


def test_presence_events_flag_environment_and_alias():
    from roomcast.cli import build_parser, config_from_args

    parse = build_parser().parse_args
    flag = ["serve", "--presence-rooms", "t*", "--presence-events"]
    assert config_from_args(parse(flag), {}).server_config().options["presence_events"] is True
    environ = {"ROOMCAST_PRESENCE_ROOMS": "t*", "ROOMCAST_PRESENCE_EVENTS": "1"}
    config = config_from_args(parse(["serve"]), environ).server_config()
    assert config.options["presence_events"] is True
    off = config_from_args(parse(["serve"]), {}).server_config()
    assert off.options["presence_events"] is False
    aliased = resolve_server_options({"presenceRooms": "t*", "presenceEvents": True})
    assert aliased["presence_events"] is True


# -- across nodes -----------------------------------------------------------------------------


@pytest.mark.parametrize("history", [False, True])
def test_members_on_other_nodes_hear_joins_and_leaves(redis_server, history):
    options = {**EVENTS, "history_rooms": "team:*"} if history else EVENTS

    async def body():
        redis = redis_at(redis_server.port)
        async with (
            node(redis, default_rooms=[], server_options=options) as a,
            node(redis, default_rooms=[], server_options=options) as b,
        ):
            wa, ida = await authed(a.url, "user:ann")
            await join(wa, ["team:x"])
            assert await recv(wa) == join_event("team:x", ida["id"], "ann")
            if history:
                await joined(wa)
            await settle(a, b)
            wb, idb = await authed(b.url, "anon")
            await join(wb, ["team:x"])
            assert await recv(wa) == join_event("team:x", idb["id"])  # from the other node
            await send(wb, {"event": "leave", "data": {"rooms": ["team:x"]}})
            assert await recv(wa) == leave_event("team:x", idb["id"])
            await join(wb, ["team:x"])
            assert await recv(wa) == join_event("team:x", idb["id"])
            await wb.close()  # disconnect on the other node
            assert await recv(wa) == leave_event("team:x", idb["id"])
            await nothing_more(wa)
            assert a.helper.stats().get("history_unnumbered", 0) == 0  # not counted
            await wa.close()

    run(body())


def test_helpers_sharing_a_memory_broker_announce_to_each_other_unnumbered():
    options = {**EVENTS, "history_rooms": "team:*"}
    network = "memory://presence-events"

    async def body():
        async with (
            events_node(server_options=options, redis_connection=network) as a,
            events_node(server_options=options, redis_connection=network) as b,
        ):
            wa, _ida = await authed(a.url)
            await join(wa, ["team:m"])
            got = {(await recv(wa))["event"], (await recv(wa))["event"]}
            assert got == {"joined", "presence-join"}
            wb, idb = await authed(b.url, "user:bob")
            await join(wb, ["team:m"])
            # From the other helper: plain, not numbered into this helper's history.
            assert await recv(wa) == join_event("team:m", idb["id"], "bob")
            a.helper.send_to_room("team:m", "m", 1)
            assert (await recv(wa))["offset"] == 1
            await wb.close()
            assert await recv(wa) == leave_event("team:m", idb["id"], "bob")
            await wa.close()

    run(body())


def test_default_rooms_and_presence_events_on_a_cluster(redis_cluster):
    """On a real Redis Cluster: a default history+presence room answers `joined` after
    `connected`, and members hear joins and leaves from the other node."""
    from roomcast import RedisClusterHelper

    options = {**EVENTS, "history_rooms": "team:*"}

    def helper() -> RedisClusterHelper:
        return RedisClusterHelper(redis_cluster.url, ready_timeout=5)

    async def body():
        async with (
            node(helper(), default_rooms=["team:home"], server_options=options) as a,
            node(helper(), default_rooms=["team:home"], server_options=options) as b,
        ):
            wa, ida = await authed(a.url, "user:ann")
            got = [await recv(wa), await recv(wa)]
            assert join_event("team:home", ida["id"], "ann") in got
            [position] = [m["data"] for m in got if m["event"] == "joined"]
            assert position["room"] == "team:home" and position["recovered"] is False
            await settle(a, b)
            wb, idb = await authed(b.url, "user:bob")
            assert await recv(wa) == join_event("team:home", idb["id"], "bob")
            b.helper.send("team:home", {"topic": "m", "data": 1})
            message = await recv(wa)
            assert message["offset"] == position["offset"] + 1 and message["data"] == 1
            await wb.close()
            assert await recv(wa) == leave_event("team:home", idb["id"], "bob")
            await wa.close()

    run(body())
