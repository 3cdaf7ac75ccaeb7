"""Redis Sentinel, for real: a master, a replica and three sentinels started here on free
ports; two `roomcast serve` processes and the emitter on a `redis+sentinel://` URL; the master
SIGKILLed under a stream of messages. Clients on both nodes keep receiving once the replica is
promoted (the outage window is measured and printed, not asserted), `/health` says degraded
meanwhile, and history, presence, the emitter and `roomcast emit` work on the new master."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from typing import Any

import jwt
import orjson
import pytest
from process_support import emit
from redis_support import RedisSentinel
from roomcast import WebSocketEmitter, connection_from_url
from serving_support import SECRET, Served, http_get
from support import eventually, open_client, recv, run, send
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.timeout(150)

# Generous bounds for a loaded two-core machine; none of them is what the test measures.
FAILOVER_WAIT = 45.0
STEP = 0.02  # seconds between two messages of the stream


def token(user: str) -> str:
    return jwt.encode({"sub": user}, SECRET, algorithm="HS256")


class Reader:
    """A client that records when each message of the stream arrived and keeps the rest."""

    def __init__(self, ws: ClientConnection, client_id: str) -> None:
        self.ws = ws
        self.id = client_id
        self.ticks: list[tuple[float, int]] = []  # (arrival time, sequence number)
        self.other: list[dict[str, Any]] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = orjson.loads(raw)
                if message["event"] == "tick":
                    self.ticks.append((time.monotonic(), message["data"]))
                else:
                    self.other.append(message)
        except ConnectionClosed:
            pass

    def after(self, seq: int) -> bool:
        return any(n > seq for _, n in self.ticks)

    def gap_from(self, start: float) -> float:
        """The longest time without a tick, from `start` to the last tick."""
        times = [start] + [t for t, _ in self.ticks if t > start]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def count(self, event: str) -> int:
        return sum(m["event"] == event for m in self.other)

    def taken(self, event: str) -> list[dict[str, Any]]:
        found = [m for m in self.other if m["event"] == event]
        self.other = [m for m in self.other if m["event"] != event]
        return found


async def login(port: int, user: str, rooms: list[str]) -> Reader:
    ws = await open_client(f"ws://127.0.0.1:{port}/ws")
    await send(ws, {"event": "authenticate", "data": {"type": "Bearer", "token": token(user)}})
    connected = await recv(ws)
    assert connected["event"] == "connected", connected
    reader = Reader(ws, connected["data"]["id"])
    await send(ws, {"event": "join", "data": {"rooms": rooms}})
    return reader


def health(port: int) -> tuple[int, Any]:
    code, raw = http_get(f"http://127.0.0.1:{port}/health")
    return code, orjson.loads(raw)


def test_clients_on_two_nodes_keep_receiving_through_a_sentinel_failover(tmp_path, capsys):
    setup = RedisSentinel(tmp_path / "sentinel").start()
    served: list[Served] = []
    try:
        for i in range(2):
            served.append(
                Served(
                    [
                        "--port",
                        "0",
                        "--redis-url",
                        setup.url,
                        "--jwt-secret",
                        SECRET,
                        "--history-rooms",
                        "h-*",
                        "--presence-rooms",
                        "h-*",
                        "--log-level",
                        "warning",
                    ],
                    tmp_path,
                    tmp_path / f"node-{i}.log",
                )
            )
        ports = [node.listening_port() for node in served]
        figures = run(_failover(setup, ports, served), timeout=120)
    finally:
        for node in served:
            node.close()
        setup.kill()
    with capsys.disabled():
        print(
            f"\nsentinel failover (master SIGKILLed, {figures['step_ms']} ms between messages, "
            f"load {figures['load']}): outage seen by the client on node A "
            f"{figures['outage_a']:.2f} s, on node B {figures['outage_b']:.2f} s; the "
            f"emitter could not publish for {figures['emitter_outage']:.2f} s; /health was "
            f"degraded for {figures['degraded_a']:.2f} s / {figures['degraded_b']:.2f} s"
        )


async def _failover(setup: RedisSentinel, ports: list[int], served: list[Served]) -> dict[str, Any]:
    new_master = setup.replica.port
    assert setup.master_port() == setup.master.port
    emitter = WebSocketEmitter(
        connection_from_url(setup.url, ready_timeout=20), history_rooms="h-*"
    )
    await emitter.configure()
    ann = await login(ports[0], "ann", ["live", "h-chat"])
    bob = await login(ports[1], "bob", ["live", "h-chat"])
    readers = (ann, bob)
    for reader in readers:
        await eventually(lambda r=reader: r.count("joined") == 1, 10, "joined h-chat")
        reader.taken("joined")

    # History before the failover, replicated before the master dies (what Redis had not
    # yet copied to the replica when its master died is lost: asynchronous replication).
    for n in (1, 2, 3):
        await emitter.to_room("h-chat", "note", {"n": n})
    for reader in readers:
        await eventually(lambda r=reader: r.count("note") == 3, 10, "notes")
        assert [m["offset"] for m in reader.taken("note")] == [1, 2, 3]
    meta = "ws:history:{r:h-chat}:m"
    await eventually(lambda: setup.replica.cli("hget", meta, "offset").strip() == "3", 10)
    epoch = setup.replica.cli("hget", meta, "epoch").strip()

    # The stream: one message every STEP to "live" from the emitter, through the failover.
    sent: list[tuple[float, int, bool]] = []  # (time, seq, whether Redis took it)
    stop = asyncio.Event()

    async def stream() -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            try:
                await asyncio.wait_for(emitter.to_room("live", "tick", seq), 2)
                sent.append((time.monotonic(), seq, True))
            except Exception:
                sent.append((time.monotonic(), seq, False))
            await asyncio.sleep(STEP)

    # /health of both nodes, polled through the failover.
    polls: list[list[tuple[float, int, Any]]] = [[], []]

    async def poll_health() -> None:
        while not stop.is_set():
            for i, port in enumerate(ports):
                code, body = await asyncio.to_thread(health, port)
                polls[i].append((time.monotonic(), code, body))
            await asyncio.sleep(0.05)

    tasks = [asyncio.ensure_future(stream()), asyncio.ensure_future(poll_health())]
    try:
        await eventually(lambda: all(len(r.ticks) >= 20 for r in readers), 15, "the stream")
        assert all(p and p[-1][1:] == (200, {"status": "ok"}) for p in polls), polls
        last_before = max(n for _, n, ok in sent if ok)
        killed = time.monotonic()
        setup.master.kill()  # SIGKILL

        await eventually(
            lambda: setup.master_port() == new_master, FAILOVER_WAIT, "the replica promoted"
        )
        # Delivery resumes on both nodes: messages sent after the promotion arrive.
        promoted_seq = max(n for _, n, _ in sent)
        await eventually(
            lambda: all(r.after(promoted_seq) for r in readers),
            FAILOVER_WAIT,
            "messages after the failover on both nodes",
        )
        await eventually(
            lambda: all(p[-1][1] == 200 and p[-1][0] > killed for p in polls),
            FAILOVER_WAIT,
            "/health ok again",
        )
        through = max(n for _, n, ok in sent if ok)
        await eventually(lambda: all(r.after(through + 20) for r in readers), 15, "more")
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    degraded = {"status": "degraded", "broker": "reconnecting"}
    for p in polls:
        assert any(code == 503 and body == degraded for _, code, body in p), p
        assert all(
            (code, body) in ((200, {"status": "ok"}), (503, degraded)) for _, code, body in p
        )
    for reader in readers:
        seqs = [n for _, n in reader.ticks]
        assert seqs == sorted(set(seqs)), "each message once, in order"
        assert any(n <= last_before for n in seqs) and reader.after(through)
    assert setup.replica.cli("role").split()[0] == "master"

    # History on the new master: numbered after what was replicated, delivered to both
    # nodes, recovered by a client that joins late.
    for n in (4, 5):
        await emitter.to_room("h-chat", "note", {"n": n})
    for reader in readers:
        await eventually(lambda r=reader: r.count("note") == 2, 10, "notes after the failover")
        notes = reader.taken("note")
        assert [(m["data"]["n"], m["offset"], m["room"]) for m in notes] == [
            (4, 4, "h-chat"),
            (5, 5, "h-chat"),
        ], notes
    carol_ws = await open_client(f"ws://127.0.0.1:{ports[1]}/ws")
    await send(
        carol_ws, {"event": "authenticate", "data": {"type": "Bearer", "token": token("carol")}}
    )
    carol_id = (await recv(carol_ws))["data"]["id"]
    await send(
        carol_ws,
        {
            "event": "join",
            "data": {"rooms": ["h-chat"], "recover": {"h-chat": {"epoch": epoch, "offset": 2}}},
        },
    )
    replay = [await recv(carol_ws) for _ in range(4)]
    assert [m.get("offset") for m in replay[:3]] == [3, 4, 5], replay
    assert replay[3] == {
        "event": "joined",
        "data": {"room": "h-chat", "epoch": epoch, "offset": 5, "recovered": True},
    }

    # Presence: every member on both nodes, read from the new master.
    async def everyone_present() -> bool:
        await send(carol_ws, {"event": "presence", "data": {"room": "h-chat"}})
        reply = await recv(carol_ws)
        assert reply["event"] == "presence", reply
        return {c["clientId"] for c in reply["data"]["clients"]} == {ann.id, bob.id, carol_id}

    await eventually(everyone_present, 10, "presence of ann, bob and carol")

    # `roomcast emit` on the same URL reaches both nodes.
    done = await asyncio.to_thread(
        emit, "--redis-url", setup.url, "--room", "live", "--event", "tick", "--data", "0"
    )
    assert done.returncode == 0, done.stderr
    await eventually(lambda: all(r.ticks[-1][1] == 0 for r in readers), 10, "roomcast emit")
    await emitter.shutdown()
    await carol_ws.close()
    for reader in readers:
        await reader.ws.close()
        await reader.task

    for node in served:
        assert node.proc.poll() is None, node.stderr_text()
        assert "lost" in node.stderr_text() and "restored" in node.stderr_text()

    def degraded_for(p: list[tuple[float, int, Any]]) -> float:
        times = [t for t, code, _ in p if code == 503]
        return max(times) - min(times) if times else 0.0

    failed = [t for t, _, ok in sent if not ok]
    return {
        "step_ms": round(STEP * 1000),
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "outage_a": ann.gap_from(killed),
        "outage_b": bob.gap_from(killed),
        "emitter_outage": (max(failed) - min(failed)) if failed else 0.0,
        "degraded_a": degraded_for(polls[0]),
        "degraded_b": degraded_for(polls[1]),
    }
