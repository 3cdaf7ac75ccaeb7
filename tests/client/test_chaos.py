"""The Python client under chaos: 50 clients with both URLs of two `roomcast serve` nodes on a
real redis-server, 2,000 numbered messages into a history room at about 200/s, nodes SIGKILLed
and restarted three times and Redis restarted once meanwhile. Every client ends with every
message exactly once, in order, except where Redis lost the stream: there a gap is reported
and nothing is duplicated."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from client_support import ROOM, Nodes, Seen, emit_with_faults, problems, summary, wait_all
from redis_support import RedisServer
from roomcast.client import Client, Connected, Disconnected, Joined, Message
from support import run

CLIENTS = 50


def watch(client: Client, seen: Seen) -> None:
    dropped_at: list[float] = []

    def on_number(message: Message) -> None:
        seen.log.append(("n", message.data["n"]))

    def on_gap(joined: Joined) -> None:
        seen.log.append(("gap", 0))

    def on_disconnected(info: Disconnected) -> None:
        seen.reasons.append(f"{info.code} {info.reason}")
        dropped_at.append(time.monotonic())
        seen.disconnects.append(dropped_at[-1])

    def on_connected(info: Connected) -> None:
        if dropped_at:
            seen.reconnects.append(time.monotonic() - dropped_at.pop())
            dropped_at.clear()

    client.on("n", on_number)
    client.on("gap", on_gap)
    client.on("disconnected", on_disconnected)
    client.on("connected", on_connected)


@pytest.mark.timeout(240)
def test_fifty_clients_get_every_message_once_in_order_through_node_kills_and_a_redis_restart(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("PYTHONFAULTHANDLER", "1")  # a node that crashes says where
    redis = RedisServer(tmp_path / "redis").start()
    nodes = Nodes(tmp_path, redis)
    clients: list[Client] = []
    seens: list[Seen] = []

    async def body() -> None:
        for index in (0, 1):
            await asyncio.get_running_loop().run_in_executor(None, nodes.start, index)
        urls = nodes.urls
        for i in range(CLIENTS):
            # Half start on each node; each goes to the other when its node dies.
            ordered = urls if i % 2 == 0 else urls[::-1]
            client = Client(
                ordered, token=f"user{i}", rooms=[ROOM], history_rooms="chaos*", backoff=(0.05, 1.0)
            )
            seen = Seen()
            watch(client, seen)
            clients.append(client)
            seens.append(seen)
        await asyncio.wait_for(asyncio.gather(*(c.connect() for c in clients)), 60)
        await asyncio.wait_for(asyncio.gather(*(c.join(ROOM) for c in clients)), 60)
        chaos = await emit_with_faults(nodes, redis)
        last = chaos.published[-1]
        try:
            await wait_all(
                lambda: all(s.numbers() and s.numbers()[-1] >= last for s in seens),
                90,
                lambda: (
                    # The first clients' last numbers and why their connections ended, and
                    # the nodes' last words (a crash prints its traceback: faulthandler).
                    str([(s.numbers()[-1:], s.reasons[-3:]) for s in seens][:3])
                    + str([(c.state, c.connections, c.positions) for c in clients[:3]])
                    + " | ".join(
                        f"node {i}: {n.proc.poll()} {n.stderr_text()[-6000:]}"
                        for i, n in enumerate(nodes.served)
                        if n is not None
                    )
                ),
            )
        finally:
            for client in clients:
                await client.close()
        report = summary(seens, chaos)
        report["replayed"] = sum(c.replayed for c in clients)
        report["connections"] = sum(c.connections for c in clients)
        print("chaos figures:", json.dumps(report))
        bad = {i: p for i, s in enumerate(seens) if (p := problems(s, chaos))}
        assert not bad, (bad, report)
        # The faults really hit the clients: each node kill dropped some of them, and the
        # ones that reconnected were given back what they missed.
        assert report["reconnects"] >= CLIENTS // 2, report
        assert report["replayed"] > 0, report

    try:
        run(body(), timeout=220)
    finally:
        nodes.close()
        redis.kill()
