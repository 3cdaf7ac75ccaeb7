"""Chaos for the client libraries: two `roomcast serve` nodes on one real redis-server, an
emitter numbering messages into a history room, nodes SIGKILLed and restarted and Redis
restarted meanwhile; and the check of what each client saw."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis_support import RedisServer, free_port
from roomcast import BrokerUnavailable, WebSocketEmitter
from serving_support import Served

ROOM = "chaos"
# Any non-empty token is its user id; every room may be joined.
CHAOS_APP = """
class App:
    def authenticate_fn(self, data):
        token = data.get("token")
        if token == "expired":
            return None
        return {"user_id": token} if isinstance(token, str) and token else None

    def validate_room_fn(self, client_id, user_id, rooms):
        return rooms

app = App()
"""
HISTORY_SIZE = 10_000  # longer than the whole run: a node's clients always recover


class Nodes:
    """Two nodes on fixed ports (so clients keep their URLs), each killable and restartable."""

    def __init__(self, workdir: Path, redis: RedisServer, *extra: str) -> None:
        self.workdir = workdir
        self.redis = redis
        self.extra = extra
        self.ports = [free_port(), free_port()]
        self.served: list[Served | None] = [None, None]
        self.generation = 0
        (workdir / "chaos_app.py").write_text(CHAOS_APP)

    @property
    def urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{port}/ws" for port in self.ports]

    def start(self, index: int) -> None:
        self.generation += 1
        served = Served(
            [
                "--port",
                str(self.ports[index]),
                "--redis-url",
                self.redis.url,
                "--app",
                "chaos_app:app",
                "--history-rooms",
                "chaos*",
                "--history-size",
                str(HISTORY_SIZE),
                "--history-ttl-ms",
                "600000",
                "--log-level",
                "warning",
                *self.extra,
            ],
            self.workdir,
            self.workdir / f"node{index}-{self.generation}.err",
        )
        self.served[index] = served
        served.listening_port()

    def kill(self, index: int) -> None:
        served = self.served[index]
        assert served is not None
        served.proc.kill()  # SIGKILL: no close frame, no cleanup
        served.close()
        self.served[index] = None

    def close(self) -> None:
        for index, served in enumerate(self.served):
            if served is not None:
                served.close()
                self.served[index] = None


@dataclass
class Chaos:
    """What the emitter and the faults did."""

    published: list[int] = field(default_factory=list)  # numbers Redis acknowledged
    failed: list[int] = field(default_factory=list)  # numbers whose publish raised
    faults: list[tuple[float, str]] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0


async def emit_with_faults(
    nodes: Nodes,
    redis: RedisServer,
    count: int = 2000,
    rate: float = 200.0,
    faults: list[tuple[int, str]] | None = None,
) -> Chaos:
    """Publish `count` numbered messages (`{"n": i}`, event `n`) to ROOM at about `rate`/s;
    after the k-th message, run each fault: `kill:<node>` (SIGKILL and restart) or
    `redis` (kill redis-server and start it again, losing every stream)."""
    chaos = Chaos()
    plan = sorted(
        faults
        if faults is not None
        else [(200, "kill:0"), (600, "kill:1"), (1000, "redis"), (1400, "kill:0")]
    )
    emitter = WebSocketEmitter(
        redis.url, history_rooms="chaos*", history_size=HISTORY_SIZE, history_ttl=600.0
    )
    await emitter.configure()
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Future[Any]] = set()
    try:
        chaos.started = time.monotonic()
        for n in range(1, count + 1):
            while plan and plan[0][0] < n:
                _, fault = plan.pop(0)
                chaos.faults.append((time.monotonic() - chaos.started, fault))
                if fault == "redis":
                    redis.kill()
                    redis.start()
                else:
                    index = int(fault.split(":")[1])
                    nodes.kill(index)
                    # Restarting takes a second or two: the emitter goes on meanwhile.
                    pending.add(loop.run_in_executor(None, nodes.start, index))
            due = chaos.started + (n - 1) / rate
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await asyncio.wait_for(emitter.to_room(ROOM, "n", {"n": n}), 10.0)
            except (BrokerUnavailable, TimeoutError):
                chaos.failed.append(n)
            else:
                chaos.published.append(n)
        chaos.finished = time.monotonic()
        if pending:
            await asyncio.wait_for(asyncio.gather(*pending), 60.0)
    finally:
        await emitter.shutdown()
    return chaos


@dataclass
class Seen:
    """One client's log: numbers delivered and gaps reported, in the order they happened."""

    log: list[tuple[str, int]] = field(default_factory=list)  # ("n", n) or ("gap", 0)
    disconnects: list[float] = field(default_factory=list)
    reconnects: list[float] = field(default_factory=list)  # seconds from drop to connected
    reasons: list[str] = field(default_factory=list)  # why each connection ended or failed

    def numbers(self) -> list[int]:
        return [n for kind, n in self.log if kind == "n"]


def problems(seen: Seen, chaos: Chaos) -> list[str]:
    """What is wrong with a client's log: a duplicate, a number out of order, or a
    published number missing without a gap reported where it is missing."""
    out: list[str] = []
    numbers = seen.numbers()
    if len(set(numbers)) != len(numbers):
        dupes = sorted({n for n in numbers if numbers.count(n) > 1})
        out.append(f"duplicates: {dupes[:10]}")
    if any(b <= a for a, b in itertools.pairwise(numbers)):
        out.append("out of order")
    if not numbers or numbers[-1] != chaos.published[-1]:
        out.append(f"last message {numbers[-1] if numbers else None} != {chaos.published[-1]}")
    # Each gap covers the numbers between the last one delivered before it and the first
    # one delivered after it.
    covered: set[int] = set()
    last = 0
    pending_gap = False
    for kind, n in seen.log:
        if kind == "gap":
            pending_gap = True
            continue
        if pending_gap:
            covered.update(range(last + 1, n))
            pending_gap = False
        last = max(last, n)
    have = set(numbers)
    missing = [n for n in chaos.published if n not in have and n not in covered]
    if missing:
        out.append(f"{len(missing)} missing without a gap: {missing[:10]}")
    return out


async def wait_all(check: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what()}")
        await asyncio.sleep(0.1)


def summary(seens: list[Seen], chaos: Chaos) -> dict[str, Any]:
    """Figures for the report: reconnect times after a drop, gaps, messages missing where a
    gap was reported."""
    reconnects = sorted(t for s in seens for t in s.reconnects)
    gaps = sum(1 for s in seens for kind, _ in s.log if kind == "gap")

    def pct(p: float) -> float | None:
        return round(reconnects[int(p * (len(reconnects) - 1))], 3) if reconnects else None

    return {
        "published": len(chaos.published),
        "failed_publishes": len(chaos.failed),
        "faults": [(round(t, 2), f) for t, f in chaos.faults],
        "reconnects": len(reconnects),
        "reconnect_p50_s": pct(0.5),
        "reconnect_p95_s": pct(0.95),
        "reconnect_max_s": pct(1.0),
        "gaps_reported": gaps,
        "clients_with_gap": sum(1 for s in seens if any(k == "gap" for k, _ in s.log)),
        "missing_in_gaps": sum(len(set(chaos.published) - set(s.numbers())) for s in seens),
        "emit_seconds": round(chaos.finished - chaos.started, 2),
    }
