"""permessage-deflate: what compression costs the server and saves on the wire.

`deflate`: C clients (each of `--clients`, default 1,000 and 5,000) all receive broadcasts of
about 1.5 KB of varied JSON records; for roomcast without and with `per_message_deflate`
(every client offering it), and the original on Bun without and with `perMessageDeflate:
true` when it is installed. Regimes: `burst` (the publisher sends as fast as it can: several
messages per client per write), `paced` (a fixed rate well under saturation: one message per
write) and, for roomcast, `saturated` (bursts of 10 broadcasts timed inside the server, which
does nothing else meanwhile: process CPU, without the kernel time ksoftirqd spends on it).
Rows give server CPU per delivery, wire bytes per delivery (frame headers included, as the
clients count them) and, measured once the clients are connected and idle, the server's RSS
per connection. The ratios compressed/plain are in the `deflate-ratio` rows.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from .harness import (
    Row,
    clients,
    cpu_seconds,
    emit,
    http_json,
    rss_bytes,
    saturated_side,
    server,
    wait_received,
)
from .registry import Context, scenario

MESSAGE_SIZE = 1500  # bytes of JSON records per message (the frame is a little larger)


def _wire(gens: list[Any]) -> tuple[int, int]:
    """(messages, wire bytes) the clients received so far."""
    counts = [gen.ask("count") for gen in gens]
    return sum(c["received"] for c in counts), sum(c["bytes"] for c in counts)


def one_server(kind: str, count: int, messages: int, rate: int, rounds: int) -> list[Row]:
    deflate = "-deflate" in kind
    rows: list[Row] = []
    with server(kind) as (port, pid):
        rss_before = rss_bytes(pid)
        with clients(port, count, *(["--deflate"] if deflate else [])) as gens:
            time.sleep(1.0)  # let the server settle after the connection storm
            rss_idle = (rss_bytes(pid) - rss_before) / count
            for regime, n, per_s in (("burst", messages, 0), ("paced", rate * 2, rate)):
                samples = []
                for _ in range(rounds):
                    got0, bytes0 = _wire(gens)
                    cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
                    lg0 = [cpu_seconds(g.proc.pid) for g in gens]
                    gens[0].ask(f"publish {n} {per_s} {MESSAGE_SIZE} - json")
                    expected = got0 + n * count
                    got = wait_received(gens, expected)
                    wall = time.perf_counter() - wall0
                    cpu = cpu_seconds(pid) - cpu0
                    lg = [
                        (cpu_seconds(g.proc.pid) - c) / wall for g, c in zip(gens, lg0, strict=True)
                    ]
                    time.sleep(0.2)
                    final, bytes1 = _wire(gens)
                    if got != expected or final != expected:
                        raise RuntimeError(f"{kind}: expected {expected}, got {final}")
                    bad = sum(gen.ask("count")["bad"] for gen in gens)
                    if bad:
                        raise RuntimeError(f"{kind}: {bad} messages did not inflate to JSON")
                    delivered = n * count
                    samples.append((cpu / delivered, (bytes1 - bytes0) / delivered, cpu / wall, lg))
                util = statistics.median(s[2] for s in samples)
                lg_util = [max(s[3]) for s in samples]
                rows.append(
                    emit(
                        {
                            "scenario": "deflate",
                            "server": kind,
                            "clients": count,
                            "regime": regime,
                            "messages": n,
                            "rate": per_s,
                            "rounds": rounds,
                            "cpu_ns_per_delivery": statistics.median(s[0] for s in samples) * 1e9,
                            "wire_bytes_per_delivery": statistics.median(s[1] for s in samples),
                            "server_util": util,
                            "saturated": saturated_side(util, [statistics.median(lg_util)]),
                            "rss_bytes_per_idle_connection": rss_idle,
                            "lost": 0,
                        }
                    )
                )
            if kind.startswith("roomcast"):
                rows.append(saturated(kind, count, gens, port, rounds, rss_idle))
    return rows


def saturated(
    kind: str, count: int, gens: list[Any], port: int, rounds: int, rss_idle: float
) -> Row:
    """Bursts of 10 broadcasts timed inside the server (its `/broadcast`): the server does
    nothing else until they are handed to the sockets, so this is its cost at saturation."""
    burst = 10
    cpus, wires = [], []
    for _ in range(rounds):
        got0, bytes0 = _wire(gens)
        result = http_json(port, f"/broadcast?mode=rust&size={MESSAGE_SIZE}&burst={burst}&json=1")
        expected = got0 + burst * count
        if result["count"] != burst * count or wait_received(gens, expected) != expected:
            raise RuntimeError(f"{kind}: in-server burst lost messages")
        time.sleep(0.2)
        final, bytes1 = _wire(gens)
        if final != expected:
            raise RuntimeError(f"{kind}: expected {expected}, got {final}")
        cpus.append(result["cpu"] / (burst * count))
        wires.append((bytes1 - bytes0) / (burst * count))
    return emit(
        {
            "scenario": "deflate",
            "server": kind,
            "clients": count,
            "regime": "saturated",
            "messages": burst,
            "rate": 0,
            "rounds": rounds,
            "cpu_ns_per_delivery": statistics.median(cpus) * 1e9,
            "wire_bytes_per_delivery": statistics.median(wires),
            "server_util": 1.0,
            "saturated": "server",
            "rss_bytes_per_idle_connection": rss_idle,
            "lost": 0,
        }
    )


def ratios(rows: list[Row]) -> list[Row]:
    """compressed / plain for each server family, count and regime."""
    out = []
    by_key = {(r["server"], r["clients"], r["regime"]): r for r in rows}
    for (kind, count, regime), row in by_key.items():
        if "-deflate" not in kind:
            continue
        plain = by_key.get((kind.partition("-deflate")[0], count, regime))
        if plain is None:
            continue
        out.append(
            emit(
                {
                    "scenario": "deflate-ratio",
                    "server": kind,
                    "clients": count,
                    "regime": regime,
                    "cpu_ratio": row["cpu_ns_per_delivery"] / plain["cpu_ns_per_delivery"],
                    "wire_ratio": row["wire_bytes_per_delivery"] / plain["wire_bytes_per_delivery"],
                    "rss_per_idle_connection_delta": row["rss_bytes_per_idle_connection"]
                    - plain["rss_bytes_per_idle_connection"],
                }
            )
        )
    return out


def _summary(row: Row) -> str | None:
    if row["scenario"] == "deflate":
        return (
            f"deflate   C={row['clients']:>6}  {row['server']:<17} {row['regime']:<5} "
            f"{row['cpu_ns_per_delivery']:>8,.0f} ns/delivery  "
            f"{row['wire_bytes_per_delivery']:>6,.0f} B/delivery  "
            f"util {row['server_util']:.2f}  "
            f"rss {row['rss_bytes_per_idle_connection']:,.0f} B/conn"
        )
    return (
        f"deflate   C={row['clients']:>6}  {row['server']:<8} {row['regime']:<5} compressed/plain: "
        f"cpu {row['cpu_ratio']:.2f}x  wire {row['wire_ratio']:.2f}x  "
        f"rss {row['rss_per_idle_connection_delta']:+,.0f} B/conn"
    )


@scenario(
    "deflate",
    about="permessage-deflate vs plain, roomcast and the original: CPU and wire bytes per "
    "delivery (burst, paced), RSS per idle connection",
    summary=_summary,
)
def deflate(ctx: Context, _server: None) -> list[Row]:
    quick = ctx.options.quick
    counts = [20] if quick else [c for c in ctx.options.counts if c <= 5000] or [1000, 5000]
    levels = [f"roomcast-deflate@{level}" for level in ctx.options.deflate_levels]
    kinds = ["roomcast", "roomcast-deflate", *levels]
    if "ignis" in ctx.options.servers:
        kinds += ["ignis", "ignis-deflate"]
    rows: list[Row] = []
    for count in counts:
        messages = 5 if quick else max(20, 200_000 // count)
        rate = 5 if quick else max(5, 20_000 // count)
        for kind in kinds:
            rows += one_server(kind, count, messages, rate, 1 if quick else ctx.options.rounds)
    return rows + ratios(rows)
