"""Bounded flush passes (`server_options["pass_sockets"]`, `["pass_bytes"]`): a flush to many
clients writes part of them, lets the loop run, and goes on with the rest; every client gets
every message once and in order."""

from __future__ import annotations

import asyncio

import pytest
from roomcast import WebSocketServerHelper
from support import authed, recv, run, running, token_auth


async def clients(url: str, count: int) -> list:
    return [(await authed(url, f"user:u{i}"))[0] for i in range(count)]


def test_every_client_gets_every_message_in_order_across_partial_passes():
    """60 clients, 7 per pass: broadcasts and messages to single clients arrive while
    passes are split, and each client's stream is exactly what was sent to it."""

    async def body():
        async with running(server_options={"pass_sockets": 7}) as node:
            sockets = await clients(node.url, 60)
            ids = {c.user_id: c.id for c in node.helper.get_clients().values()}
            expected: dict[int, list[list]] = {i: [] for i in range(60)}
            for n in range(120):
                if n % 5 == 4:
                    target = (n * 7) % 60
                    node.helper.send_to_client(ids[f"u{target}"], "one", [n, target])
                    expected[target].append([n, target])
                else:
                    node.helper.broadcast("all", [n])
                    for i in range(60):
                        expected[i].append([n])
                if n % 3 == 2:
                    await asyncio.sleep(0)  # parts of earlier flushes go out in between
            for i, ws in enumerate(sockets):
                got = [(await recv(ws))["data"] for _ in range(len(expected[i]))]
                assert got == expected[i], i
            assert node.helper.stats()["passes_split"] > 0
            assert node.helper.stats()["pending_bytes"] == 0
            for ws in sockets:
                await ws.close()

    run(body(), timeout=60)


def test_the_loop_runs_between_the_parts_of_a_flush():
    """A callback scheduled right after a broadcast to 40 clients runs after the first 5 were
    written, not after all 40."""

    async def body():
        async with running(server_options={"pass_sockets": 5}) as node:
            sockets = await clients(node.url, 40)
            before = node.helper.stats()["frames_out"]
            seen: list[int] = []
            node.helper.broadcast("m", 1)  # schedules the flush
            asyncio.get_running_loop().call_soon(
                lambda: seen.append(node.helper.stats()["frames_out"] - before)
            )
            for ws in sockets:
                assert (await recv(ws))["data"] == 1
            assert seen == [5]
            assert node.helper.stats()["frames_out"] - before == 40
            for ws in sockets:
                await ws.close()

    run(body(), timeout=60)


def test_a_split_pass_goes_on_at_once_with_a_write_delay():
    """With `write_delay`, the first part waits for the window and the rest follows through
    `resume`: 20 clients, 4 per pass, are written in 5 parts, each client once."""

    async def body():
        async with running(server_options={"pass_sockets": 4, "write_delay": 0.2}) as node:
            sockets = await clients(node.url, 20)
            before = node.helper.stats()["passes_split"]
            node.helper.broadcast("m", 2)
            for ws in sockets:
                assert (await recv(ws))["data"] == 2
            assert node.helper.stats()["passes_split"] - before == 4  # 5 parts of 4
            for ws in sockets:
                await ws.close()

    run(body(), timeout=60)


@pytest.mark.parametrize("name", ["pass_sockets", "pass_bytes"])
@pytest.mark.parametrize("value", [0, -3, 1.5, "9"])
def test_the_bounds_must_be_positive_integers(name, value):
    with pytest.raises(ValueError, match=f"^{name} must be a positive integer: {value!r}$"):
        WebSocketServerHelper("t", "/ws", "memory://", token_auth, server_options={name: value})
