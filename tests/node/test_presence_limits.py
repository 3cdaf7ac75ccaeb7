"""Presence under load and across nodes, on a real redis-server: a member is in every node's
`presence` answer once its join is answered (read-your-writes, SPEC §10's last paragraph)
and out once its leave is handled; one client's flood of `presence` requests opens no Redis
connections and holds up no one else; huge rooms get a capped answer that says so."""

from __future__ import annotations

import asyncio
from typing import Any

from redis_support import node, raw_redis
from roomcast import RedisHelper
from support import authed, eventually, recv, run, send

TTL = 30.0  # long: nothing here may rely on the periodic refresh


def redis_at(port: int) -> RedisHelper:
    return RedisHelper(host="127.0.0.1", port=port, unsubscribe_delay=0.2, ready_timeout=5)


def presence_node(redis: Any, **options: Any) -> Any:
    options = {"presence_rooms": "team-*", "presence_ttl": TTL, **options}
    return node(
        redis,
        default_rooms=[],
        server_options=options,
        message_handler=lambda client_id, user_id, message: None,
    )


def echo(n: Any) -> None:
    """Answer every custom event with `got` to its sender."""

    def message_handler(client_id: str, user_id: str | None, message: dict[str, Any]) -> None:
        n.helper.send_to_client(client_id, "got", message.get("data"))

    n.helper.message_handler = message_handler


async def ids(helper: Any, room: str) -> set[str]:
    return {m["clientId"] for m in await helper.presence(room)}


def test_a_member_is_in_every_nodes_presence_once_its_joined_arrives(redis_server):
    async def body():
        redis = redis_at(redis_server.port)
        history = {"history_rooms": "team-*"}
        async with presence_node(redis, **history) as a, presence_node(redis, **history) as b:
            members = []
            for i in range(3):
                ws, data = await authed(a.url, f"user:u{i}")
                await send(ws, {"event": "join", "data": {"rooms": ["team-1"]}})
                answer = await recv(ws)
                while answer["event"] != "joined":
                    answer = await recv(ws)
                members.append((ws, data["id"]))
                # Right after `joined`: node B lists every member so far.
                assert await ids(b.helper, "team-1") == {m for _, m in members}
            leaver, _ = members.pop()
            await send(leaver, {"event": "leave", "data": {"rooms": ["team-1"]}})
            await send(leaver, {"event": "presence", "data": {"room": "team-2"}})
            await recv(leaver)  # its next message is handled: the leave was before it
            assert await ids(b.helper, "team-1") == {m for _, m in members}
            for ws, _ in members:
                await ws.close()
            await leaver.close()

    run(body())


def test_in_a_room_without_history_a_member_is_listed_from_its_next_message_on(redis_server):
    async def body():
        redis = redis_at(redis_server.port)
        async with presence_node(redis) as a, presence_node(redis) as b:
            echo(a)
            joined = set()
            clients = []
            for i in range(3):
                ws, data = await authed(a.url, f"user:u{i}")
                await send(ws, {"event": "join", "data": {"rooms": ["team-1"]}})
                await send(ws, {"event": "ping", "data": i})
                assert await recv(ws) == {"event": "got", "data": i}
                joined.add(data["id"])
                clients.append(ws)
                assert await ids(b.helper, "team-1") == joined
            # A disconnect is removed at once, not after the TTL (30 s).
            await ws.close()
            joined.discard(data["id"])
            async with asyncio.timeout(5):
                while await ids(b.helper, "team-1") != joined:
                    await asyncio.sleep(0.02)
            for ws in clients[:-1]:
                await ws.close()

    run(body())


def test_a_presence_flood_from_one_client_opens_no_connections_and_delays_no_one(redis_server):
    async def body():
        redis = redis_at(redis_server.port)
        async with presence_node(redis) as a, presence_node(redis) as b:
            echo(a)
            flood, flood_data = await authed(a.url, "user:flood")
            calm, _ = await authed(a.url, "user:calm")
            remote, remote_data = await authed(b.url, "user:remote")
            for ws in (flood, calm, remote):
                await send(ws, {"event": "join", "data": {"rooms": ["team-1"]}})
                await send(ws, {"event": "ping", "data": "joined"})
            for ws in (flood, calm):
                assert await recv(ws) == {"event": "got", "data": "joined"}
            async with raw_redis(redis_server.port) as raw:
                before = (await raw.info("clients"))["connected_clients"]
                for _ in range(20_000):
                    await flood.send('{"event":"presence","data":{"room":"team-1"}}')
                await send(calm, {"event": "ping", "data": "calm"})
                # The calm client's echo comes back while the flood is being answered.
                assert await recv(calm) == {"event": "got", "data": "calm"}
                # Once the flood's requests are all answered (none in flight or waiting),
                # an echo comes after every answer.
                stats = a.helper.stats
                await eventually(lambda: stats()["presence_requests"] == 0, timeout=30)
                assert stats()["presence_coalesced"] >= 19_000
                await send(flood, {"event": "ping", "data": "end"})
                answers = []
                while True:
                    message = await recv(flood)
                    if message["event"] == "got":
                        break
                    answers.append(message)
                after = (await raw.info("clients"))["connected_clients"]
            # One in flight, the rest coalesced: a handful of answers, each complete.
            assert 1 <= len(answers) <= 3, len(answers)
            expected = {flood_data["id"], remote_data["id"]}
            for answer in answers:
                assert answer["event"] == "presence"
                assert expected <= {c["clientId"] for c in answer["data"]["clients"]}
            assert after <= before + 1, (before, after)
            for ws in (flood, calm, remote):
                await ws.close()

    run(body(), timeout=60)


def test_a_huge_room_gets_a_capped_answer_that_says_so(redis_server):
    async def body():
        redis = redis_at(redis_server.port)
        async with (
            presence_node(redis, presence_limit=3) as a,
            presence_node(redis, presence_limit=3) as b,
        ):
            clients = []
            for n, token in ((a, "user:a1"), (a, "user:a2"), (b, "user:b1"), (b, "user:b2")):
                ws, data = await authed(n.url, token)
                await send(ws, {"event": "join", "data": {"rooms": ["team-1"]}})
                await send(ws, {"event": "presence", "data": {"room": "team-9"}})
                await recv(ws)  # `Presence not allowed`, after the join
                clients.append(ws)
            await send(clients[0], {"event": "presence", "data": {"room": "team-1"}})
            answer = await recv(clients[0])
            assert answer["event"] == "presence"
            data = answer["data"]
            assert len(data["clients"]) == 3
            assert (data["truncated"], data["total"]) == (True, 4)
            assert len(await a.helper.presence("team-1")) == 3
            for ws in clients:
                await ws.close()

    run(body())
