"""Deliveries timed inside the roomcast bench server (its `/broadcast` and `/encrypted`).

- `burst`: 1 and 10 broadcasts back to back to C clients: the Rust fan-out (coalesced)
  against a plain Python loop of `transport.send` on the same transports;
- `encrypted`: 20 room messages of 100 B and 4 KiB to 1,000 encrypted clients: sealing in
  the Rust core, in Python, and the naive inline loop; throughput and event-loop stall;
- `stall`: broadcasts to C clients, 50 ms apart, with a 1 ms probe timer: the event-loop
  stall while they are written in bounded passes (`pass_sockets`, the default) against one
  unbounded pass per broadcast, rounds alternating on the same server and clients.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from .harness import (
    Row,
    clients,
    emit,
    http_json,
    received,
    server,
    wait_received,
)
from .registry import Context, scenario


def burst(clients_n: int, rounds: int, size: int, burst_n: int) -> list[dict[str, Any]]:
    """`burst_n` broadcasts timed inside the roomcast server: Rust fan-out (coalesced) vs
    a plain Python loop of transport.send on the same transports."""
    rows = []
    with server("roomcast") as (port, _), clients(port, clients_n) as gens:
        samples: dict[str, list[dict[str, Any]]] = {"rust": [], "python": []}
        expected = received(gens)
        for _ in range(rounds):
            for mode in ("rust", "python"):
                result = http_json(port, f"/broadcast?mode={mode}&size={size}&burst={burst_n}")
                expected += clients_n * burst_n
                if (
                    result["count"] != clients_n * burst_n
                    or wait_received(gens, expected) != expected
                ):
                    raise RuntimeError(f"burst {mode}: lost messages")
                samples[mode].append(result)
        for mode, runs in samples.items():
            wall = statistics.median(r["wall"] for r in runs)
            cpu = statistics.median(r["cpu"] for r in runs)
            rows.append(
                emit(
                    {
                        "scenario": "burst",
                        "mode": mode,
                        "clients": clients_n,
                        "burst": burst_n,
                        "rounds": rounds,
                        "deliveries_per_s": clients_n * burst_n / wall,
                        "cpu_ns_per_delivery": cpu / (clients_n * burst_n) * 1e9,
                        "lost": 0,
                    }
                )
            )
    return rows


def encrypted(clients_n: int, rounds: int, size: int, count: int) -> list[dict[str, Any]]:
    """`count` room messages to `clients_n` encrypted clients: throughput and event-loop stall,
    for the built-in scheme sealing in the Rust core, in Python, and the naive inline loop."""
    modes = ("rust", "python", "inline")
    rows = []
    with (
        server("roomcast", 90.0, "--encryption") as (port, _),
        clients(port, clients_n, "--encrypted") as gens,
    ):
        samples: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
        expected = received(gens)
        for _ in range(rounds):
            for mode in modes:
                http_json(port, f"/encrypted?mode={mode}&size={size}&count={count}")
                while "pending" in (result := http_json(port, "/result")):
                    time.sleep(0.02)
                assert result["recipients"] == clients_n * count, result
                expected += clients_n * count
                if wait_received(gens, expected, timeout=120) != expected:
                    raise RuntimeError(f"encrypted {mode}: lost messages")
                samples[mode].append(result)
        bad = sum(gen.ask("count")["bad"] for gen in gens)
        if bad:
            raise RuntimeError(f"{bad} messages did not decrypt")
        for mode, runs in samples.items():
            wall = statistics.median(r["wall"] for r in runs)
            cpu = statistics.median(r["cpu"] for r in runs)
            rows.append(
                emit(
                    {
                        "scenario": "encrypted",
                        "mode": mode,
                        "clients": clients_n,
                        "size": size,
                        "messages": count,
                        "rounds": rounds,
                        "messages_per_s": count / wall,
                        "deliveries_per_s": clients_n * count / wall,
                        "cpu_us_per_delivery": cpu / (clients_n * count) * 1e6,
                        "median_p99_stall_ms": statistics.median(r["p99_lag"] for r in runs) * 1000,
                        "median_max_stall_ms": statistics.median(r["max_lag"] for r in runs) * 1000,
                        "worst_stall_ms": max(r["max_lag"] for r in runs) * 1000,
                        "lost": 0,
                    }
                )
            )
    return rows


def stall(
    clients_n: int,
    rounds: int,
    count: int = 20,
    pass_sockets: int | None = None,
    gap: float = 0.05,
) -> list[dict[str, Any]]:
    """`count` broadcasts to `clients_n` clients per round, written in bounded passes
    (`parts`: `pass_sockets`, else the default) and in one pass each (`whole`), rounds
    alternating."""
    modes = ("parts", "whole")
    rows = []
    extra = ("--pass-sockets", str(pass_sockets)) if pass_sockets else ()
    with server("roomcast", 90.0, *extra) as (port, _), clients(port, clients_n) as gens:
        samples: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
        expected = received(gens)
        for _ in range(rounds):
            for mode in modes:
                http_json(port, f"/stall?mode={mode}&count={count}&gap={gap}")
                while "pending" in (result := http_json(port, "/result")):
                    time.sleep(0.02)
                assert result["recipients"] == clients_n * count, result
                expected += clients_n * count
                if wait_received(gens, expected, timeout=120) != expected:
                    raise RuntimeError(f"stall {mode}: lost messages")
                samples[mode].append(result)
        for mode, runs in samples.items():
            rows.append(
                emit(
                    {
                        "scenario": "stall",
                        "mode": mode,
                        "clients": clients_n,
                        "pass_sockets": pass_sockets or "default",
                        "messages": count,
                        "gap_s": gap,
                        "rounds": rounds,
                        "cpu_ns_per_delivery": statistics.median(r["cpu"] for r in runs)
                        / (clients_n * count)
                        * 1e9,
                        "passes_split": statistics.median(r["passes_split"] for r in runs),
                        "median_random_wait_ms": statistics.median(r["random_wait"] for r in runs)
                        * 1000,
                        "median_blocked_share": statistics.median(r["blocked_share"] for r in runs),
                        "median_p90_stall_ms": statistics.median(r["p90_lag"] for r in runs) * 1000,
                        "median_p99_stall_ms": statistics.median(r["p99_lag"] for r in runs) * 1000,
                        "median_max_stall_ms": statistics.median(r["max_lag"] for r in runs) * 1000,
                        "max_stall_ms_rounds": [r["max_lag"] * 1000 for r in runs],
                        "lost": 0,
                    }
                )
            )
    return rows


# -- registrations -------------------------------------------------------------------------


@scenario(
    "burst",
    about="1 and 10 broadcasts timed inside the server: Rust fan-out vs a Python send loop",
    summary=lambda row: (
        f"burst     C={row['clients']:>6} x{row['burst']:<3} {row['mode']:<6} "
        f"{row['deliveries_per_s']:>12,.0f} deliveries/s  "
        f"{row['cpu_ns_per_delivery']:>7,.0f} ns CPU/delivery"
    ),
)
def run_burst(ctx: Context, _: None) -> list[Row]:
    opts = ctx.options
    return [
        row for count in opts.counts for n in (1, 10) for row in burst(count, opts.rounds, 100, n)
    ]


@scenario(
    "encrypted",
    about="room messages to 1,000 encrypted clients: Rust vs Python sealing, loop stall",
    summary=lambda row: (
        f"encrypted C={row['clients']:>6} {row['size']:>5} B {row['mode']:<6} "
        f"{row['messages_per_s']:>8,.1f} messages/s  "
        f"{row['deliveries_per_s']:>10,.0f} deliveries/s  "
        f"stall p99 {row['median_p99_stall_ms']:.1f} ms, "
        f"max {row['median_max_stall_ms']:.1f} ms (worst {row['worst_stall_ms']:.1f})"
    ),
)
def run_encrypted(ctx: Context, _: None) -> list[Row]:
    count = 20 if ctx.options.quick else 1000
    return [row for size in (100, 4096) for row in encrypted(count, ctx.options.rounds, size, 20)]


@scenario(
    "stall",
    about="broadcasts to C clients: event-loop stall with bounded flush passes vs one pass",
    summary=lambda row: (
        f"stall     C={row['clients']:>6} {row['mode']:<6} max stall "
        f"{row['median_max_stall_ms']:>6.1f} ms  wait at a random moment "
        f"{row['median_random_wait_ms']:>5.1f} ms  "
        f"{row['cpu_ns_per_delivery']:>7,.0f} ns CPU/delivery"
    ),
)
def run_stall(ctx: Context, _: None) -> list[Row]:
    opts = ctx.options
    count = 3 if opts.quick else 20
    # ROOMCAST_BENCH_PASS_SOCKETS=256,1024,4096: one run per bound (to choose it).
    bounds = [int(b) for b in os.environ.get("ROOMCAST_BENCH_PASS_SOCKETS", "0").split(",")]
    # ROOMCAST_BENCH_STALL_GAP=0.1: broadcasts further apart (below saturation).
    gap = float(os.environ.get("ROOMCAST_BENCH_STALL_GAP", "0.05"))
    return [
        row
        for n in opts.counts
        for bound in bounds
        for row in stall(n, opts.rounds, count, bound or None, gap)
    ]
