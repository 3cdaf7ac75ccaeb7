"""Several roomcast nodes on one Redis.

- `crossnode`: messages published on node A (`helper.send` to a room it has no members in)
  and delivered to a client of that room on node B: messages/s, lost, dropped;
- `redishop`: send-to-receive time at 500 messages/s for clients on A (local) and on B
  (through Redis): the difference is what the Redis hop adds;
- `interest`: 4 nodes with clients in disjoint rooms; the envelopes each node's broker
  receives with interest subscriptions (the default) and with the original's patterns.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from contextlib import ExitStack
from typing import Any

from .harness import (
    Row,
    emit,
    http_json,
    joined,
    node,
    redis_server,
    wait_last,
    wait_published,
    wait_subscribed,
)
from .registry import Context, scenario


def crossnode(messages: int, rounds: int, size: int) -> dict[str, Any]:
    """Messages per second published on node A (`helper.send` to a room it has no members
    in) and delivered to a client of that room on node B, through one Redis."""
    with ExitStack() as stack:
        url = stack.enter_context(redis_server())
        port_a, _ = stack.enter_context(node(url))
        port_b, _ = stack.enter_context(node(url))
        gens = joined(stack, port_b, 1, "bench")
        wait_subscribed(url, {"ws:room:bench": 1})
        rates, lost = [], 0
        expected = 0
        for _ in range(rounds):
            expected += messages
            started = time.perf_counter()
            http_json(port_a, f"/publish?room=bench&count={messages}&size={size}")
            got, last = wait_last(gens, expected)
            lost += expected - got
            expected = got
            rates.append(messages / (last - started))
        dropped = http_json(port_a, "/stats")["broker_dropped"]
    row = {
        "scenario": "crossnode",
        "messages": messages,
        "size": size,
        "rounds": rounds,
        "median_msgs_per_s": statistics.median(rates),
        "min_msgs_per_s": min(rates),
        "max_msgs_per_s": max(rates),
        "lost": lost,
        "dropped": dropped,
    }
    emit(row)
    return row


def redis_hop(clients: int, rate: float, seconds: float, rounds: int, size: int) -> dict[str, Any]:
    """Send-to-receive time of messages published on node A at a steady rate, for clients
    on A (local delivery) and on B (through Redis): the difference is the Redis hop."""
    count = int(rate * seconds)
    with ExitStack() as stack:
        url = stack.enter_context(redis_server())
        port_a, _ = stack.enter_context(node(url))
        port_b, _ = stack.enter_context(node(url))
        local = joined(stack, port_a, clients, "bench", "--latency")
        remote = joined(stack, port_b, clients, "bench", "--latency")
        wait_subscribed(url, {"ws:room:bench": 2})
        samples: dict[str, dict[str, list[float]]] = {
            "local": {"p50": [], "p99": []},
            "remote": {"p50": [], "p99": []},
        }
        expected = 0
        for gen in local + remote:
            gen.ask("latency")  # clears the latencies
        for _ in range(rounds):
            expected += count * clients
            http_json(port_a, f"/publish?room=bench&count={count}&size={size}&rate={rate}")
            wait_published(port_a)
            for name, gens in (("local", local), ("remote", remote)):
                got, _ = wait_last(gens, expected)
                if got < expected:
                    raise RuntimeError(f"{name}: lost {expected - got} messages")
                # One load generator per side here, so its percentiles are the side's.
                [report] = [gen.ask("latency") for gen in gens]
                samples[name]["p50"].append(report["p50"])
                samples[name]["p99"].append(report["p99"])
    med = {
        side: {q: statistics.median(v) * 1e3 for q, v in s.items()} for side, s in samples.items()
    }
    row = {
        "scenario": "redishop",
        "clients_per_node": clients,
        "rate_per_s": rate,
        "messages_per_round": count,
        "rounds": rounds,
        "local_p50_ms": med["local"]["p50"],
        "local_p99_ms": med["local"]["p99"],
        "remote_p50_ms": med["remote"]["p50"],
        "remote_p99_ms": med["remote"]["p99"],
        "added_p50_ms": med["remote"]["p50"] - med["local"]["p50"],
        "added_p99_ms": med["remote"]["p99"] - med["local"]["p99"],
    }
    emit(row)
    return row


def interest(nodes: int, clients: int, messages: int) -> list[dict[str, Any]]:
    """`nodes` nodes with clients in disjoint rooms (room-i on node i); an emitter sends
    `messages` to every room. Counts the envelopes each node's broker received, for the
    interest subscriptions (the default) and the original's pattern subscriptions."""
    rows = []
    for mode in ("interest", "pattern"):
        with ExitStack() as stack:
            url = stack.enter_context(redis_server())
            ports = [stack.enter_context(node(f"{url}?subscribe={mode}"))[0] for _ in range(nodes)]
            gens = [joined(stack, port, clients, f"room-{i}") for i, port in enumerate(ports)]
            if mode == "interest":
                wait_subscribed(url, {f"ws:room:room-{i}": 1 for i in range(nodes)})
            else:
                time.sleep(1.0)  # the joins need no subscription; let them land
            before = [http_json(port, "/stats")["broker_received"] for port in ports]
            asyncio.run(_emit_to_rooms(url, nodes, messages))
            for node_gens in gens:
                got, _ = wait_last(node_gens, messages * clients)
                if got != messages * clients:
                    raise RuntimeError(f"lost {messages * clients - got} messages")
            received = [
                http_json(port, "/stats")["broker_received"] - b
                for port, b in zip(ports, before, strict=True)
            ]
        row = {
            "scenario": "interest",
            "mode": mode,
            "nodes": nodes,
            "clients_per_node": clients,
            "messages_per_room": messages,
            "published_total": messages * nodes,
            "received_per_node": received,
            "own_share": messages,
        }
        emit(row)
        rows.append(row)
    return rows


async def _emit_to_rooms(url: str, rooms: int, messages: int) -> None:
    from roomcast import RedisHelper, WebSocketEmitter

    emitter = WebSocketEmitter(RedisHelper(url))
    await emitter.configure()
    try:
        for first in range(0, messages, 100):
            await asyncio.gather(
                *(
                    emitter.to_room(f"room-{r}", "bench", {"i": i})
                    for i in range(first, min(messages, first + 100))
                    for r in range(rooms)
                )
            )
    finally:
        await emitter.shutdown()


# -- registrations -------------------------------------------------------------------------


@scenario(
    "crossnode",
    about="published on one node, delivered on another through Redis: messages/s, lost",
    summary=lambda row: (
        f"crossnode  {row['size']} B  {row['median_msgs_per_s']:>10,.0f} msgs/s "
        f"(median of {row['rounds']}; min {row['min_msgs_per_s']:,.0f}, "
        f"max {row['max_msgs_per_s']:,.0f}; lost {row['lost']})"
    ),
)
def run_crossnode(ctx: Context, _: None) -> list[Row]:
    return [crossnode(200 if ctx.options.quick else 20_000, ctx.options.rounds, 100)]


@scenario(
    "redishop",
    about="the latency the Redis hop adds (local vs remote clients, 500 messages/s)",
    summary=lambda row: (
        f"redishop  {row['rate_per_s']:.0f} msgs/s  local p50 {row['local_p50_ms']:.2f} "
        f"p99 {row['local_p99_ms']:.2f} ms; remote p50 {row['remote_p50_ms']:.2f} "
        f"p99 {row['remote_p99_ms']:.2f} ms; redis hop adds p50 "
        f"{row['added_p50_ms']:.2f}, p99 {row['added_p99_ms']:.2f} ms"
    ),
)
def run_redishop(ctx: Context, _: None) -> list[Row]:
    seconds = 0.2 if ctx.options.quick else 2.0
    return [redis_hop(10, 500.0, seconds, ctx.options.rounds, 100)]


@scenario(
    "interest",
    about="4 nodes on disjoint rooms: envelopes each node receives, interest vs pattern",
    summary=lambda row: (
        f"interest  {row['mode']:<8}  {row['nodes']} nodes, {row['messages_per_room']} "
        f"per room: envelopes received per node {row['received_per_node']} "
        f"(own share {row['own_share']})"
    ),
)
def run_interest(ctx: Context, _: None) -> list[Row]:
    quick = ctx.options.quick
    return interest(4, 2 if quick else 10, 20 if quick else 2000)
