"""Connections and what idle ones cost.

- `connect`: 5,000 clients connect + authenticate (200 in flight per load generator): rate
  and server CPU per connection, per server;
- `redisconnect`: the same on a node with its own Redis, the server pinned to one core:
  roomcast subscribing by interest and by pattern, and the original; p99 time to
  `connected`, and roomcast's garbage-collector share;
- `heartbeat` and `memory` (one run gives both): server CPU per heartbeat with 5,000 clients
  heartbeating once a second, and RSS per idle authenticated connection;
- `sweep`: one deadline sweep of the Rust hub with 10,000 / 50,000 idle connections, in process;
- `deadline`: how late a silent client's 4002 close comes with 10,000 heartbeating clients.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from contextlib import ExitStack
from typing import Any

from .harness import (
    Row,
    clients,
    cpu_seconds,
    emit,
    http_json,
    redis_server,
    rss_bytes,
    server,
)
from .registry import Context, scenario


def connect(kind: str, count: int, rounds: int) -> dict[str, Any]:
    """Connect + authenticate: rate (load generators connect in parallel, 200 in flight
    each) and server CPU per connection."""
    rates, costs = [], []
    for _ in range(rounds):
        with server(kind) as (port, pid):
            cpu0 = cpu_seconds(pid)
            with clients(port, count) as gens:
                costs.append((cpu_seconds(pid) - cpu0) / count)
                rates.append(count / max(gen.connect_seconds for gen in gens))
    return emit(
        {
            "scenario": "connect",
            "server": kind,
            "clients": count,
            "rounds": rounds,
            "connects_per_s": statistics.median(rates),
            "cpu_us_per_connect": statistics.median(costs) * 1e6,
        }
    )


def redis_connect(
    variants: list[tuple[str, str]], count: int, rounds: int, default_gc: bool = False
) -> list[dict[str, Any]]:
    """Connect + authenticate `count` clients (200 in flight) on a server using its own
    redis-server, pinned to the last core: rate, p99 time to `connected`, server CPU per
    connect, and for roomcast the garbage collector's share (its time per connect and its
    longest stall). `variants` are (server, mode) pairs, mode being roomcast's subscription
    mode (interest or pattern); rounds alternate between them, so a change in the machine's
    background load hits every variant alike. `default_gc`: roomcast keeps CPython's GC
    settings instead of tuning them as `roomcast serve` does."""
    cpu = (os.cpu_count() or 1) - 1
    samples: dict[tuple[str, str], list[tuple[float, ...]]] = {v: [] for v in variants}
    extra = ("--default-gc",) if default_gc else ()
    for _ in range(rounds):
        for kind, mode in variants:
            with ExitStack() as stack:
                url = stack.enter_context(redis_server())
                if kind == "roomcast":
                    url += f"?subscribe={mode}"
                port, pid = stack.enter_context(
                    server(kind, 90.0, *extra, redis_url=url, cpus=str(cpu))
                )
                gc_ms = gc_max_ms = float("nan")
                if kind == "roomcast":
                    http_json(port, "/gc-reset")
                cpu0 = cpu_seconds(pid)
                with clients(port, count) as gens:
                    cost = (cpu_seconds(pid) - cpu0) / count
                    rate = count / max(gen.connect_seconds for gen in gens)
                    p99 = max(gen.connect_p99 for gen in gens)
                    if kind == "roomcast":
                        stats = http_json(port, "/stats")
                        gc_ms, gc_max_ms = stats["gc_pause_ms"], stats["gc_pause_max_ms"]
            samples[(kind, mode)].append((cost, rate, p99, gc_ms / count, gc_max_ms))
    rows = []
    for (kind, mode), runs in samples.items():
        row = {
            "scenario": "redisconnect",
            "server": kind if kind != "roomcast" else mode,
            "clients": count,
            "rounds": rounds,
            "connects_per_s": statistics.median(r[1] for r in runs),
            "cpu_us_per_connect": statistics.median(r[0] for r in runs) * 1e6,
            "p99_connect_ms": statistics.median(r[2] for r in runs) * 1000,
            "cpu_us_per_round": [round(r[0] * 1e6, 1) for r in runs],
        }
        if kind == "roomcast":
            row["gc_us_per_connect"] = statistics.median(r[3] for r in runs) * 1000
            row["gc_max_pause_ms"] = statistics.median(r[4] for r in runs)
            row["gc"] = "default" if default_gc else "tuned"
        rows.append(emit(row))
    return rows


def heartbeat_and_memory(
    kind: str, count: int, seconds: float, rounds: int
) -> list[dict[str, Any]]:
    """Server CPU per heartbeat (one per client per second) and RSS per idle connection."""
    with server(kind) as (port, pid):
        time.sleep(0.5)
        rss0 = rss_bytes(pid)
        with clients(port, count, "--heartbeat", "1.0"):
            time.sleep(2.0)
            rss = rss_bytes(pid)
            costs = []
            for _ in range(rounds):
                cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
                time.sleep(seconds)
                beats = count * (time.perf_counter() - wall0)
                costs.append((cpu_seconds(pid) - cpu0) / beats)
    return [
        emit(
            {
                "scenario": "heartbeat",
                "server": kind,
                "clients": count,
                "rounds": rounds,
                "cpu_us_per_heartbeat": statistics.median(costs) * 1e6,
            }
        ),
        emit(
            {
                "scenario": "memory",
                "server": kind,
                "clients": count,
                "rss_kb_per_connection": (rss - rss0) / count / 1024,
            }
        ),
    ]


def sweep(idle_counts: list[int], rounds: int) -> list[dict[str, Any]]:
    """Cost of one deadline sweep with N idle, non-expired connections (in-process hub)."""
    from roomcast import _core

    rows = []
    for idle in idle_counts:
        hub = _core.Hub(lambda cb: None, heartbeat_timeout=3600.0)
        for i in range(idle):
            handle = hub.add(f"c{i}", len, None)
            hub.authenticate(handle, None)
        costs = []
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(1000):
                hub.sweep()
            costs.append((time.perf_counter() - started) / 1000)
        rows.append(
            emit(
                {
                    "scenario": "sweep",
                    "idle": idle,
                    "rounds": rounds,
                    "ns_per_sweep": statistics.median(costs) * 1e9,
                }
            )
        )
    return rows


def deadline(idle: int, rounds: int, timeout: float) -> dict[str, Any]:
    """How late a silent client's 4002 close comes, with `idle` heartbeating clients connected."""
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosed

    async def probe(url: str) -> float:
        ws = await ws_connect(url)
        await ws.send(json.dumps({"event": "authenticate", "data": {"token": "probe"}}))
        await ws.recv()
        connected_at = time.monotonic()
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code == 4002, exc
        return time.monotonic() - connected_at - timeout

    with (
        server("roomcast", heartbeat_timeout=timeout) as (port, _),
        clients(port, idle, "--heartbeat", str(timeout / 3)) as gens,
    ):
        lateness = [asyncio.run(probe(f"ws://127.0.0.1:{port}/ws")) for _ in range(rounds)]
        closed = sum(gen.ask("count")["closed"] for gen in gens)
    return emit(
        {
            "scenario": "deadline",
            "idle_clients": idle,
            "heartbeat_timeout_s": timeout,
            "rounds": rounds,
            "median_late_ms": statistics.median(lateness) * 1000,
            "max_late_ms": max(lateness) * 1000,
            "idle_clients_closed": closed,
        }
    )


# -- registrations -------------------------------------------------------------------------


@scenario(
    "connect",
    about="5,000 clients connect + authenticate: connects/s and server CPU per connect",
    per_server=True,
    default=True,
    compare={"connect": ("cpu_us_per_connect", "us CPU/connect")},
    detail=lambda row: f"  {row['connects_per_s']:>8,.0f} connects/s",
)
def run_connect(ctx: Context, kind: str) -> list[Row]:
    return [connect(kind, 50 if ctx.options.quick else 5000, ctx.options.rounds)]


def _redisconnect_detail(row: Row) -> str:
    extra = f"  {row['connects_per_s']:>8,.0f} connects/s  p99 {row['p99_connect_ms']:,.0f} ms"
    if "gc" in row:
        extra += (
            f"  GC ({row['gc']}) {row['gc_us_per_connect']:.1f} us/connect, "
            f"longest stall {row['gc_max_pause_ms']:.0f} ms"
        )
    return extra


@scenario(
    "redisconnect",
    about="connect + authenticate on a node with Redis (interest vs pattern), server on one core",
    compare={"redisconnect": ("cpu_us_per_connect", "us CPU/connect")},
    detail=_redisconnect_detail,
)
def run_redisconnect(ctx: Context, _: None) -> list[Row]:
    opts = ctx.options
    variants = []
    if "roomcast" in opts.servers:
        variants += [("roomcast", "interest"), ("roomcast", "pattern")]
    if "ignis" in opts.servers:
        variants.append(("ignis", "pattern"))  # the original subscribes by pattern
    count = 50 if opts.quick else 5000
    return redis_connect(variants, count, opts.rounds, opts.default_gc)


HEARTBEAT_AND_MEMORY = {
    "heartbeat": ("cpu_us_per_heartbeat", "us CPU/heartbeat"),
    "memory": ("rss_kb_per_connection", "KB RSS/connection"),
}


def run_heartbeat_and_memory(ctx: Context, kind: str) -> list[Row]:
    """`heartbeat` and `memory` come from one run: the second of the two asks for none."""
    if any(r["scenario"] == "heartbeat" and r.get("server") == kind for r in ctx.rows):
        return []
    opts = ctx.options
    count, seconds = (50, 0.2) if opts.quick else (5000, 4.0)
    return heartbeat_and_memory(kind, count, seconds, opts.rounds)


scenario(
    "heartbeat",
    about="5,000 clients heartbeating once a second: server CPU per heartbeat (and memory)",
    per_server=True,
    default=True,
    compare=HEARTBEAT_AND_MEMORY,
)(run_heartbeat_and_memory)
scenario(
    "memory",
    about="RSS per idle authenticated connection, 5,000 clients (and heartbeat)",
    per_server=True,
    compare=HEARTBEAT_AND_MEMORY,
)(run_heartbeat_and_memory)


@scenario(
    "sweep",
    about="one deadline sweep of the Rust hub with 10,000 / 50,000 idle connections",
    default=True,
    summary=lambda row: f"sweep     idle={row['idle']:>6}  {row['ns_per_sweep']:,.0f} ns per sweep",
)
def run_sweep(ctx: Context, _: None) -> list[Row]:
    return sweep([100] if ctx.options.quick else [10_000, 50_000], ctx.options.rounds)


@scenario(
    "deadline",
    about="how late a silent client's 4002 close comes with 10,000 idle clients connected",
    summary=lambda row: (
        f"deadline  idle={row['idle_clients']}  timeout={row['heartbeat_timeout_s']} s  "
        f"late median {row['median_late_ms']:.1f} ms, max {row['max_late_ms']:.1f} ms"
    ),
)
def run_deadline(ctx: Context, _: None) -> list[Row]:
    return [deadline(50 if ctx.options.quick else 10_000, ctx.options.rounds, 3.0)]
