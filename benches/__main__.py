"""Bench runner: `python -m benches [fanout] [deadline] [encrypted] [--clients 1000,10000]
[--rounds 5]`.

Starts the bench server and load-generator processes itself, prints a table and one JSON line
per measurement. Every figure of a scenario comes from the same run, so ratios are fair on a
noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from typing import Any

ROOT_ARGS = [sys.executable, "-m"]
CLIENTS_PER_LOADGEN = 5000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def bench_server(*extra: str):
    port = free_port()
    proc = subprocess.Popen(
        [*ROOT_ARGS, "benches.server", str(port), *extra], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("bench server did not start")
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class LoadGen:
    """One load-generator process."""

    def __init__(self, url: str, count: int, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*ROOT_ARGS, "benches.loadgen", url, str(count), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ready(self) -> int:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("load generator died")
        return json.loads(line)["ready"]

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
            self.proc.wait()


def start_clients(port: int, count: int, *args: str) -> list[LoadGen]:
    url = f"ws://127.0.0.1:{port}/ws"
    gens = []
    left = count
    index = 0
    while left > 0:
        n = min(CLIENTS_PER_LOADGEN, left)
        gens.append(LoadGen(url, n, "--token-prefix", f"user:g{index}-", *args))
        left -= n
        index += 1
    total = sum(gen.ready() for gen in gens)
    assert total == count, (total, count)
    return gens


def http_json(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as response:
        return json.loads(response.read())


def wait_received(gens: list[LoadGen], expected: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        got = sum(gen.ask("count")["received"] for gen in gens)
        if got >= expected or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def emit(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


# -- scenarios ---------------------------------------------------------------------------------


def fanout(clients: int, rounds: int, size: int) -> list[dict[str, Any]]:
    """One broadcast to every client, timed inside the server: Rust fan-out vs a Python loop."""
    rows = []
    with bench_server() as (port, _):
        gens = start_clients(port, clients)
        try:
            samples: dict[str, list[dict[str, Any]]] = {"rust": [], "python": []}
            expected = 0
            for _ in range(rounds):
                for mode in ("rust", "python"):
                    result = http_json(port, f"/broadcast?mode={mode}&size={size}")
                    assert result["count"] == clients, result
                    expected += clients
                    got = wait_received(gens, expected)
                    if got != expected:
                        raise RuntimeError(f"lost messages: {expected - got} of {clients}")
                    samples[mode].append(result)
            for mode, runs in samples.items():
                walls = [r["wall"] for r in runs]
                cpus = [r["cpu"] for r in runs]
                row = {
                    "scenario": "fanout",
                    "mode": mode,
                    "clients": clients,
                    "size": size,
                    "rounds": rounds,
                    "median_wall_s": statistics.median(walls),
                    "deliveries_per_s": clients / statistics.median(walls),
                    "cpu_ns_per_delivery": statistics.median(cpus) / clients * 1e9,
                    "lost": 0,
                }
                emit(row)
                rows.append(row)
        finally:
            for gen in gens:
                gen.stop()
    return rows


def deadline(idle: int, rounds: int, timeout: float) -> dict[str, Any]:
    """How late a silent client's 4002 close comes, with `idle` heartbeating clients connected."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async def probe(url: str) -> float:
        ws = await connect(url)
        await ws.send(json.dumps({"event": "authenticate", "data": {"token": "probe"}}))
        await ws.recv()
        connected_at = time.monotonic()
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code == 4002, exc
        return time.monotonic() - connected_at - timeout

    with bench_server("--heartbeat-timeout", str(timeout)) as (port, _):
        gens = start_clients(port, idle, "--heartbeat", str(timeout / 3))
        try:
            url = f"ws://127.0.0.1:{port}/ws"
            lateness = [asyncio.run(probe(url)) for _ in range(rounds)]
            closed = sum(gen.ask("count")["closed"] for gen in gens)
        finally:
            for gen in gens:
                gen.stop()
    row = {
        "scenario": "deadline",
        "idle_clients": idle,
        "heartbeat_timeout_s": timeout,
        "rounds": rounds,
        "median_late_ms": statistics.median(lateness) * 1000,
        "max_late_ms": max(lateness) * 1000,
        "idle_clients_closed": closed,
    }
    emit(row)
    return row


def encrypted(clients: int, rounds: int, size: int, count: int) -> list[dict[str, Any]]:
    """`count` room messages to `clients` encrypted clients: throughput and event-loop stall,
    for the built-in scheme sealing in the Rust core, in Python, and the naive inline loop."""
    modes = ("rust", "python", "inline")
    rows = []
    with bench_server("--encryption") as (port, _):
        gens = start_clients(port, clients, "--encrypted")
        try:
            samples: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
            expected = 0
            for _ in range(rounds):
                for mode in modes:
                    http_json(port, f"/encrypted?mode={mode}&size={size}&count={count}")
                    while "pending" in (result := http_json(port, "/result")):
                        time.sleep(0.02)
                    assert result["recipients"] == clients * count, result
                    expected += clients * count
                    got = wait_received(gens, expected, timeout=120)
                    if got != expected:
                        raise RuntimeError(f"lost messages: {expected - got} in {mode}")
                    samples[mode].append(result)
            bad = sum(gen.ask("count")["bad"] for gen in gens)
            if bad:
                raise RuntimeError(f"{bad} messages did not decrypt")
            for mode, runs in samples.items():
                wall = statistics.median(r["wall"] for r in runs)
                row = {
                    "scenario": "encrypted",
                    "mode": mode,
                    "clients": clients,
                    "size": size,
                    "messages": count,
                    "rounds": rounds,
                    "median_wall_s": wall,
                    "messages_per_s": count / wall,
                    "deliveries_per_s": clients * count / wall,
                    "cpu_us_per_delivery": statistics.median(r["cpu"] for r in runs)
                    / (clients * count)
                    * 1e6,
                    "median_p99_stall_ms": statistics.median(r["p99_lag"] for r in runs) * 1000,
                    "median_max_stall_ms": statistics.median(r["max_lag"] for r in runs) * 1000,
                    "worst_stall_ms": max(r["max_lag"] for r in runs) * 1000,
                }
                emit(row)
                rows.append(row)
        finally:
            for gen in gens:
                gen.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benches")
    parser.add_argument("scenarios", nargs="*", default=["fanout", "deadline"])
    parser.add_argument("--clients", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument("--heartbeat-timeout", type=float, default=3.0)
    parser.add_argument("--messages", type=int, default=20, help="per round (encrypted)")
    args = parser.parse_args()

    table = []
    if "fanout" in args.scenarios:
        for clients in (int(c) for c in args.clients.split(",")):
            table += fanout(clients, args.rounds, args.size)
    if "deadline" in args.scenarios:
        table.append(deadline(args.idle, args.rounds, args.heartbeat_timeout))
    if "encrypted" in args.scenarios:
        for clients in (int(c) for c in args.clients.split(",")):
            table += encrypted(clients, args.rounds, args.size, args.messages)

    print()
    for row in table:
        if row["scenario"] == "fanout":
            print(
                f"fanout  C={row['clients']:>6}  {row['mode']:<6}  "
                f"{row['deliveries_per_s']:>12,.0f} deliveries/s  "
                f"{row['cpu_ns_per_delivery']:>7,.0f} ns CPU/delivery"
            )
        elif row["scenario"] == "encrypted":
            print(
                f"encrypted C={row['clients']:>6}  {row['mode']:<6}  "
                f"{row['messages_per_s']:>8,.0f} messages/s  "
                f"{row['deliveries_per_s']:>10,.0f} deliveries/s  "
                f"stall p99 {row['median_p99_stall_ms']:.1f} ms, "
                f"max {row['median_max_stall_ms']:.1f} ms (worst {row['worst_stall_ms']:.1f})"
            )
        else:
            print(
                f"deadline  idle={row['idle_clients']}  timeout={row['heartbeat_timeout_s']} s  "
                f"late median {row['median_late_ms']:.1f} ms, max {row['max_late_ms']:.1f} ms"
            )


if __name__ == "__main__":
    main()
