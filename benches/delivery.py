"""Broadcast delivery to connected clients, server by server (`per_server`).

- `fanout`: one client publishes as fast as it can to every client (C = each of `--clients`);
  server CPU per delivered message, delivered/s, and which side saturated;
- `rooms`: the same to 1,000 clients in 10 rooms of 100, messages round-robin over the rooms;
- `latency`: 1,000 clients at 50 broadcasts/s, p50 and p99 send-to-receive time;
- `redisfanout`: broadcast envelopes PUBLISHed straight into Redis (as the emitter writes
  them) and fanned out by the server (roomcast and the original, the two that speak it).
"""

from __future__ import annotations

import json
import statistics
import time
from contextlib import ExitStack
from typing import Any

from .harness import (
    SATURATED,
    Row,
    clients,
    cpu_seconds,
    emit,
    received,
    redis_server,
    saturated_side,
    server,
    wait_received,
    wait_subscribed,
)
from .registry import Context, scenario


def delivery(
    kind: str, scenario: str, count: int, messages: int, rounds: int, rooms: list[str] | None
) -> dict[str, Any]:
    """Publish `messages` as fast as the publisher can; measure until every copy arrived."""
    room_arg = ",".join(rooms) if rooms else "-"
    # Every client is in exactly one room and messages go to the rooms round-robin.
    per_message = count // len(rooms) if rooms else count
    samples = []
    with server(kind) as (port, pid), clients(port, count) as gens:
        if rooms:
            for gen in gens:
                gen.ask("join " + room_arg)
            time.sleep(0.5)
        baseline = received(gens)
        for _ in range(rounds):
            expected = baseline + messages * per_message
            cpu0, lg0, wall0 = (
                cpu_seconds(pid),
                [cpu_seconds(g.proc.pid) for g in gens],
                time.perf_counter(),
            )
            gens[0].ask(f"publish {messages} 0 100 {room_arg}")
            got = wait_received(gens, expected)
            wall = time.perf_counter() - wall0
            cpu = cpu_seconds(pid) - cpu0
            lg = [cpu_seconds(g.proc.pid) - c for g, c in zip(gens, lg0, strict=True)]
            time.sleep(0.2)
            final = received(gens)
            if got != expected or final != expected:
                raise RuntimeError(f"{kind}: expected {expected}, got {final} (lost or duplicated)")
            baseline = final
            delivered = messages * per_message
            samples.append((delivered / wall, cpu / delivered, cpu / wall, [x / wall for x in lg]))
    rate = statistics.median(s[0] for s in samples)
    cpu_per = statistics.median(s[1] for s in samples)
    util = statistics.median(s[2] for s in samples)
    lg_util = [statistics.median(s[3][i] for s in samples) for i in range(len(samples[0][3]))]
    return emit(
        {
            "scenario": scenario,
            "server": kind,
            "clients": count,
            "messages": messages,
            "rounds": rounds,
            "delivered_per_s": rate,
            "cpu_ns_per_delivery": cpu_per * 1e9,
            "server_util": util,
            "saturated": saturated_side(util, lg_util),
            "lost": 0,
        }
    )


def latency(kind: str, count: int, rate: int, seconds: float, rounds: int) -> dict[str, Any]:
    p50s, p99s = [], []
    with server(kind) as (port, _), clients(port, count, "--latency") as gens:
        for _ in range(rounds):
            for gen in gens:
                gen.ask("latency")  # forgets earlier samples
            messages = int(rate * seconds)
            before = received(gens)
            gens[0].ask(f"publish {messages} {rate} 100 -")
            wait_received(gens, before + messages * count)
            reports = [gen.ask("latency") for gen in gens]
            p50s.append(statistics.median(r["p50"] for r in reports))
            p99s.append(max(r["p99"] for r in reports))
    return emit(
        {
            "scenario": "latency",
            "server": kind,
            "clients": count,
            "rate": rate,
            "rounds": rounds,
            "p50_ms": statistics.median(p50s) * 1000,
            "p99_ms": statistics.median(p99s) * 1000,
        }
    )


def redis_fanout(kind: str, count: int, messages: int, rounds: int) -> dict[str, Any]:
    """Broadcast envelopes published straight into Redis (as the emitter writes them) and
    fanned out by the server to `count` clients: server CPU per delivered message."""
    import redis

    samples = []
    with ExitStack() as stack:
        url = stack.enter_context(redis_server())
        port, pid = stack.enter_context(server(kind, 90.0, redis_url=url))
        gens = stack.enter_context(clients(port, count))
        publisher = redis.Redis.from_url(url)
        stack.callback(publisher.close)
        wait_subscribed(url, {"ws:broadcast": 1})
        expected = received(gens)
        pad = "x" * 100
        for _ in range(rounds):
            cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
            pipe = publisher.pipeline(transaction=False)
            for i in range(messages):
                envelope = {
                    "serverId": "emitter",
                    "type": "broadcast",
                    "event": "bench",
                    "data": {"i": i, "pad": pad},
                }
                pipe.publish("ws:broadcast", json.dumps(envelope, separators=(",", ":")))
            pipe.execute()
            expected += messages * count
            got = wait_received(gens, expected)
            wall, cpu = time.perf_counter() - wall0, cpu_seconds(pid) - cpu0
            time.sleep(0.2)
            if got != expected or received(gens) != expected:
                raise RuntimeError(f"{kind}: expected {expected}, got {received(gens)}")
            samples.append((messages * count / wall, cpu / (messages * count), cpu / wall))
    return emit(
        {
            "scenario": "redisfanout",
            "server": kind,
            "clients": count,
            "messages": messages,
            "rounds": rounds,
            "delivered_per_s": statistics.median(s[0] for s in samples),
            "cpu_ns_per_delivery": statistics.median(s[1] for s in samples) * 1e9,
            "server_util": statistics.median(s[2] for s in samples),
            "saturated": "server" if statistics.median(s[2] for s in samples) >= SATURATED else "-",
            "lost": 0,
        }
    )


# -- registrations -------------------------------------------------------------------------

PER_DELIVERY = ("cpu_ns_per_delivery", "ns CPU/delivery")


def _throughput(row: Row) -> str:
    return f"  {row['delivered_per_s']:>11,.0f} msg/s  saturated: {row['saturated']}"


def _messages(ctx: Context, count: int) -> int:
    return 20 if ctx.options.quick else max(20, 500_000 // count)


@scenario(
    "fanout",
    about="one client publishes to C clients as fast as it can: server CPU per delivery",
    per_server=True,
    default=True,
    compare={"fanout": PER_DELIVERY},
    detail=_throughput,
)
def run_fanout(ctx: Context, kind: str) -> list[Row]:
    opts = ctx.options
    return [
        delivery(kind, "fanout", count, _messages(ctx, count), opts.rounds, None)
        for count in opts.counts
    ]


@scenario(
    "rooms",
    about="1,000 clients in 10 rooms, messages round-robin over the rooms: CPU per delivery",
    per_server=True,
    default=True,
    compare={"rooms": PER_DELIVERY},
    detail=_throughput,
)
def run_rooms(ctx: Context, kind: str) -> list[Row]:
    opts = ctx.options
    count, messages = (50, 20) if opts.quick else (1000, 2000)
    rooms = [f"room-{i}" for i in range(10)]
    return [delivery(kind, "rooms", count, messages, opts.rounds, rooms)]


@scenario(
    "latency",
    about="1,000 clients at 50 broadcasts/s: p50 and p99 send-to-receive time",
    per_server=True,
    default=True,
    compare={"latency": ("p99_ms", "ms p99")},
    detail=lambda row: f"  (p50 {row['p50_ms']:.2f} ms)",
)
def run_latency(ctx: Context, kind: str) -> list[Row]:
    opts = ctx.options
    count, seconds = (50, 0.2) if opts.quick else (1000, 2.0)
    return [latency(kind, count, 50, seconds, opts.rounds)]


@scenario(
    "redisfanout",
    about="broadcast envelopes PUBLISHed into Redis, fanned out to C clients: CPU per delivery",
    per_server=True,
    compare={"redisfanout": PER_DELIVERY},
    detail=_throughput,
)
def run_redisfanout(ctx: Context, kind: str) -> list[Row]:
    if kind not in ("roomcast", "ignis"):  # the servers that speak the Redis envelope
        return []
    opts = ctx.options
    return [redis_fanout(kind, count, _messages(ctx, count), opts.rounds) for count in opts.counts]
