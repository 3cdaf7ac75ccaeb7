"""`roomcast.client.Client` against real servers over real sockets: join answers, recovery
after a dropped connection, tokens, encryption, heartbeats, presence, slow callbacks."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest
from redis_support import free_port
from roomcast import JwtAuthenticator
from roomcast.client import (
    AuthenticationRefused,
    Client,
    ClientClosed,
    Disconnected,
    Joined,
    Member,
    Message,
    RequestError,
    State,
)
from roomcast.crypto import EcdhScheme
from support import allow_all, eventually, run, running

SECRET = "client-tests-secret-0123456789abcdef"
OPTIONS = {"history_rooms": "h-*", "presence_rooms": "p-*"}


def url_of(node) -> str:
    return f"ws://127.0.0.1:{node.port}/ws"


def token(sub: str, exp_in: float = 3600) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + exp_in)}, SECRET, algorithm="HS256")


def client(url: str | list[str], **kwargs) -> Client:
    kwargs.setdefault("backoff", (0.02, 0.2))
    kwargs.setdefault("history_rooms", "h-*")
    return Client(url, **kwargs)


def drop(node, client_id: str) -> None:
    """The server closes one connection (as a node restart or a proxy would)."""
    node.helper.get_clients(client_id).close(1011, "dropped by the test")


def test_join_answers_history_rooms_and_their_messages_carry_room_and_offset():
    async def body():
        async with running(validate_room_fn=allow_all, server_options=OPTIONS) as node:
            got: list[Message] = []
            async with client(url_of(node), token="user:ann") as c:
                c.on("n", got.append)
                assert c.state is State.CONNECTED and c.user_id == "ann" and c.id
                answer = await c.join("h-1", "plain")
                assert list(answer) == ["h-1"]
                assert answer["h-1"].recovered is False and answer["h-1"].offset == 0
                assert set(node.helper.get_clients(c.id).rooms) >= {"h-1", "plain"}
                node.helper.send_to_room("h-1", "n", {"i": 1})
                node.helper.send_to_room("plain", "n", {"i": 2})
                await eventually(lambda: len(got) == 2)
                assert (got[0].data, got[0].room, got[0].offset) == ({"i": 1}, "h-1", 1)
                assert (got[1].data, got[1].room, got[1].offset) == ({"i": 2}, None, None)
                await c.leave("plain")
                assert "plain" not in node.helper.get_clients(c.id).rooms
            assert c.state is State.CLOSED

    run(body())


def test_a_dropped_connection_rejoins_and_recovers_every_message_once_in_order():
    async def body():
        async with running(validate_room_fn=allow_all, server_options=OPTIONS) as node:
            got: list[int] = []
            joined: list[Joined] = []
            drops: list[Disconnected] = []
            c = client(url_of(node), token="user:ann", rooms=["h-1"])
            c.on("n", lambda m: got.append(m.data))
            c.on("joined", joined.append)
            c.on("disconnected", drops.append)
            await c.connect()
            await c.join("h-1")
            for i in range(1, 4):
                node.helper.send_to_room("h-1", "n", i)
            await eventually(lambda: got == [1, 2, 3])
            first_id = c.id
            assert first_id is not None
            drop(node, first_id)
            for i in range(4, 8):  # while it is away
                node.helper.send_to_room("h-1", "n", i)
            await eventually(lambda: c.connections == 2 and len(joined) == 2)
            node.helper.send_to_room("h-1", "n", 8)
            await eventually(lambda: got[-1:] == [8])
            assert got == list(range(1, 9))
            assert [d.code for d in drops] == [1011] and drops[0].reconnecting
            assert joined[1].recovered and not joined[1].gap
            assert joined[1].previous is not None and joined[1].previous.offset == 3
            assert c.replayed == 4 and c.id != first_id
            assert c.positions["h-1"].offset == 8
            await c.close()

    run(body())


def test_async_for_yields_every_message_and_ends_at_close():
    async def body():
        async with running(validate_room_fn=allow_all, server_options=OPTIONS) as node:
            c = client(url_of(node), token="user:ann")
            await c.connect()
            await c.join("h-2")
            for i in range(3):
                node.helper.send_to_room("h-2", "n", i)
            seen = []
            async for message in c:
                seen.append((message.event, message.data, message.offset))
                if len(seen) == 3:
                    await c.close()
            assert seen == [("n", 0, 1), ("n", 1, 2), ("n", 2, 3)]

    run(body())


def test_the_next_url_is_tried_when_the_first_does_not_answer():
    async def body():
        async with running(validate_room_fn=allow_all) as node:
            dead = f"ws://127.0.0.1:{free_port()}/ws"
            async with client([dead, url_of(node)], token="user:ann") as c:
                assert c.state is State.CONNECTED

    run(body())


def test_an_expired_token_is_replaced_through_get_token():
    auth = JwtAuthenticator(SECRET)
    tokens = [token("ann", exp_in=-60), token("ann")]
    calls: list[str] = []

    async def get_token() -> str:
        calls.append(tokens.pop(0) if tokens else token("ann"))
        return calls[-1]

    async def body():
        async with running(authenticate_fn=auth, validate_room_fn=allow_all) as node:
            drops: list[Disconnected] = []
            c = client(url_of(node), get_token=get_token)
            c.on("disconnected", drops.append)
            await asyncio.wait_for(c.connect(), 10)
            assert c.user_id == "ann" and c.connections == 1
            await eventually(lambda: len(drops) == 1)
            assert (drops[0].code, drops[0].error, drops[0].reconnecting) == (
                4003,
                "Authentication failed",
                True,
            )
            assert len(calls) == 2
            # Every reconnect asks for a token again.
            assert c.id is not None
            drop(node, c.id)
            await eventually(lambda: c.connections == 2)
            assert len(calls) == 3
            await c.close()

    run(body())


def test_4003_without_a_new_token_stops_reconnecting():
    auth = JwtAuthenticator(SECRET)
    expired = token("ann", exp_in=-60)
    calls: list[str] = []

    def get_token() -> str:
        calls.append(expired)
        return expired

    async def body():
        async with running(authenticate_fn=auth) as node:
            for c in (
                client(url_of(node), token=expired),
                client(url_of(node), get_token=get_token),
            ):
                with pytest.raises(AuthenticationRefused) as refused:
                    await asyncio.wait_for(c.connect(), 10)
                assert (refused.value.code, refused.value.error) == (4003, "Authentication failed")
                assert c.state is State.CLOSED and c.connections == 0
                assert c._run_task is not None and c._run_task.done()  # no further attempt
                await c.close()
            assert len(calls) == 2  # the attempt, then the check for a new token

    run(body())


def test_a_server_that_requires_encryption_speaks_ecdh_and_refuses_a_plain_client():
    async def body():
        async with running(
            validate_room_fn=allow_all,
            encryption=EcdhScheme(),
            require_encryption=True,
            server_options=OPTIONS,
        ) as node:
            got: list[Message] = []
            async with client(url_of(node), token="user:ann", encryption=True) as c:
                c.on("n", got.append)
                assert node.helper.get_clients(c.id).encrypted
                answer = await c.join("h-3")
                assert answer["h-3"].offset == 0
                node.helper.send_to_room("h-3", "n", {"text": "héllo ✓"})
                await eventually(lambda: len(got) == 1)
                assert (got[0].data, got[0].room, got[0].offset) == ({"text": "héllo ✓"}, "h-3", 1)
            plain = client(url_of(node), token="user:bob")
            with pytest.raises(AuthenticationRefused) as refused:
                await asyncio.wait_for(plain.connect(), 10)
            assert refused.value.code == 4004
            await plain.close()

    run(body())


def test_heartbeats_keep_an_idle_client_past_the_server_heartbeat_timeout():
    async def body():
        async with running(heartbeat_timeout=0.6) as node:
            drops: list[Disconnected] = []
            idle = client(url_of(node), token="user:idle", heartbeat=0.6)
            idle.on("disconnected", drops.append)
            await idle.connect()
            silent = client(url_of(node), token="user:silent", heartbeat=0, reconnect=False)
            await silent.connect()
            await eventually(lambda: silent.state is State.CLOSED)
            assert silent.close_code == 4002  # the control: without heartbeats it is closed
            started = time.monotonic()
            await eventually(lambda: time.monotonic() - started > 2.4, timeout=10)
            assert drops == [] and idle.connections == 1 and idle.state is State.CONNECTED
            await idle.close()
            await silent.close()

    run(body())


def test_presence_lists_the_members_and_a_room_without_presence_is_refused():
    async def body():
        async with running(validate_room_fn=allow_all, server_options=OPTIONS) as node:
            async with (
                client(url_of(node), token="user:ann", rooms=["p-1"]) as a,
                client(url_of(node), token="anon", rooms=["p-1"]) as b,
            ):
                await a.join("p-1")
                await b.join("p-1")
                members = await a.presence("p-1")
                assert sorted(members, key=lambda m: m.user_id or "") == sorted(
                    [Member(a.id or "", "ann"), Member(b.id or "", None)],
                    key=lambda m: m.user_id or "",
                )
                with pytest.raises(RequestError, match="Presence not allowed"):
                    await a.presence("plain")

    run(body())


def test_a_slow_callback_delays_neither_heartbeats_nor_answers():
    async def body():
        async with running(
            validate_room_fn=allow_all, heartbeat_timeout=0.6, server_options=OPTIONS
        ) as node:
            release = asyncio.Event()
            got: list[int] = []

            async def slow(message: Message) -> None:
                got.append(message.data)
                if message.data == 1:
                    await release.wait()

            async with client(url_of(node), token="user:slow", heartbeat=0.6) as c:
                c.on("n", slow)
                await c.join("h-s", "p-s")
                node.helper.send_to_room("h-s", "n", 1)
                await eventually(lambda: got == [1])
                started = time.monotonic()
                await eventually(lambda: time.monotonic() - started > 2.0, timeout=10)
                assert len(await c.presence("p-s")) == 1  # the reader still answers
                assert c.connections == 1 and c.state is State.CONNECTED
                node.helper.send_to_room("h-s", "n", 2)
                release.set()
                await eventually(lambda: got == [1, 2])

    run(body())


def test_requests_on_a_closed_client_raise():
    async def body():
        c = client("ws://127.0.0.1:1/ws", token="x")
        with pytest.raises(ClientClosed):
            await c.send("hi")
        with pytest.raises(ValueError, match="reserved event: join"):
            await c.send("join")
        with pytest.raises(ValueError, match="backoff"):
            Client("ws://x", backoff=(2.0, 1.0))

    run(body())


def test_the_quick_start_ends_with_a_roomcast_client_that_works_as_printed(tmp_path):
    import subprocess
    import sys

    from test_readme import free_port as readme_port
    from test_readme import listening, python_blocks

    blocks = python_blocks("Quick start")
    server_code = blocks[0]
    [client_code] = [b for b in blocks if "from roomcast.client import Client" in b]
    assert blocks[-1] == client_code  # the Quick start ends with it
    port = readme_port()
    (tmp_path / "chat.py").write_text(server_code.replace("8080", str(port)))
    (tmp_path / "client.py").write_text(client_code.replace("8080", str(port)))
    server = subprocess.Popen([sys.executable, "chat.py"], cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while not listening(port):
            assert server.poll() is None, server.communicate()[1]
            assert time.monotonic() < deadline, "quick-start server did not start"
            time.sleep(0.05)
        out = subprocess.run(
            [sys.executable, "client.py"], cwd=tmp_path, capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout == "chat {'from': 'bea', 'text': 'hello'}\n"
    finally:
        server.kill()
        server.communicate()


def test_the_client_imports_nothing_of_the_server_side():
    from test_layout import import_graph

    graph = import_graph()
    client_modules = [m for m in graph if m.startswith("roomcast.client")]
    assert "roomcast.client.client" in client_modules
    outside = {t for m in client_modules for t in graph[m] if not t.startswith("roomcast.client")}
    assert outside == set()
