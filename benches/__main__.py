"""Bench runner: `python -m benches [fanout] [deadline] [crossnode] [latency] [interest]
[--clients 1000,10000] [--rounds 5]`.

Starts the bench server and load-generator processes itself (and, for the Redis scenarios, a
`redis-server` on a free port), prints a table and one JSON line per measurement. Every
figure of a scenario comes from the same run, so ratios are fair on a noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack, contextmanager
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


@contextmanager
def redis_server():
    """A throw-away redis-server on a free port; yields its redis:// URL."""
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                *("--port", str(port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--dir", workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while not _redis_answers(port):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.01)
            yield f"redis://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def wait_subscribed(url: str, channels: dict[str, int], timeout: float = 30.0) -> None:
    """Wait until each channel has the given number of Redis subscribers."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            counts = dict(client.pubsub_numsub(*channels))
            if all(counts.get(c.encode()) == n for c, n in channels.items()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"subscriptions not in place: {counts}")
            time.sleep(0.02)
    finally:
        client.close()


def wait_last(gens: list[LoadGen], expected: int, timeout: float = 60.0) -> tuple[int, float]:
    """Poll until `expected` messages arrived in total; (received, time of the last one)."""
    deadline = time.monotonic() + timeout
    while True:
        reports = [gen.ask("count") for gen in gens]
        got = sum(r["received"] for r in reports)
        if got >= expected or time.monotonic() > deadline:
            return got, max(r["last"] for r in reports)
        time.sleep(0.01)


def wait_published(port: int, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stats = http_json(port, "/stats")
        if not stats["bench_publishing"] or time.monotonic() > deadline:
            return stats
        time.sleep(0.01)


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


def crossnode(messages: int, rounds: int, size: int) -> dict[str, Any]:
    """Messages per second published on node A (`helper.send` to a room it has no members
    in) and delivered to a client of that room on node B, through one Redis."""
    with ExitStack() as stack:
        url = stack.enter_context(redis_server())
        port_a, _ = stack.enter_context(bench_server("--redis-url", url))
        port_b, _ = stack.enter_context(bench_server("--redis-url", url))
        gens = start_clients(port_b, 1, "--rooms", "bench")
        try:
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
        finally:
            for gen in gens:
                gen.stop()
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


def latency(clients: int, rate: float, seconds: float, rounds: int, size: int) -> dict[str, Any]:
    """Send-to-receive time of messages published on node A at a steady rate, for clients
    on A (local delivery) and on B (through Redis): the difference is the Redis hop."""
    count = int(rate * seconds)
    with ExitStack() as stack:
        url = stack.enter_context(redis_server())
        port_a, _ = stack.enter_context(bench_server("--redis-url", url))
        port_b, _ = stack.enter_context(bench_server("--redis-url", url))
        local = start_clients(port_a, clients, "--rooms", "bench", "--latency")
        remote = start_clients(port_b, clients, "--rooms", "bench", "--latency")
        try:
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
        finally:
            for gen in local + remote:
                gen.stop()
    med = {
        side: {q: statistics.median(v) * 1e3 for q, v in s.items()} for side, s in samples.items()
    }
    row = {
        "scenario": "latency",
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
            ports = [
                stack.enter_context(bench_server("--redis-url", f"{url}?subscribe={mode}"))[0]
                for _ in range(nodes)
            ]
            gens = [
                start_clients(port, clients, "--rooms", f"room-{i}") for i, port in enumerate(ports)
            ]
            try:
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
            finally:
                for node_gens in gens:
                    for gen in node_gens:
                        gen.stop()
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benches")
    parser.add_argument("scenarios", nargs="*", default=["fanout", "deadline"])
    parser.add_argument("--clients", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument("--heartbeat-timeout", type=float, default=3.0)
    parser.add_argument("--messages", type=int, default=20000, help="crossnode: per round")
    parser.add_argument("--rate", type=float, default=500.0, help="latency: messages/s")
    parser.add_argument("--seconds", type=float, default=2.0, help="latency: per round")
    parser.add_argument("--latency-clients", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=4, help="interest: nodes")
    parser.add_argument("--node-clients", type=int, default=10, help="interest: per node")
    parser.add_argument("--room-messages", type=int, default=2000, help="interest: per room")
    args = parser.parse_args()

    table = []
    if "fanout" in args.scenarios:
        for clients in (int(c) for c in args.clients.split(",")):
            table += fanout(clients, args.rounds, args.size)
    if "deadline" in args.scenarios:
        table.append(deadline(args.idle, args.rounds, args.heartbeat_timeout))
    if "crossnode" in args.scenarios:
        table.append(crossnode(args.messages, args.rounds, args.size))
    if "latency" in args.scenarios:
        table.append(latency(args.latency_clients, args.rate, args.seconds, args.rounds, args.size))
    if "interest" in args.scenarios:
        table += interest(args.nodes, args.node_clients, args.room_messages)

    print()
    for row in table:
        if row["scenario"] == "fanout":
            print(
                f"fanout  C={row['clients']:>6}  {row['mode']:<6}  "
                f"{row['deliveries_per_s']:>12,.0f} deliveries/s  "
                f"{row['cpu_ns_per_delivery']:>7,.0f} ns CPU/delivery"
            )
        elif row["scenario"] == "deadline":
            print(
                f"deadline  idle={row['idle_clients']}  timeout={row['heartbeat_timeout_s']} s  "
                f"late median {row['median_late_ms']:.1f} ms, max {row['max_late_ms']:.1f} ms"
            )
        elif row["scenario"] == "crossnode":
            print(
                f"crossnode  {row['size']} B  {row['median_msgs_per_s']:>10,.0f} msgs/s "
                f"(median of {row['rounds']}; min {row['min_msgs_per_s']:,.0f}, "
                f"max {row['max_msgs_per_s']:,.0f}; lost {row['lost']})"
            )
        elif row["scenario"] == "latency":
            print(
                f"latency  {row['rate_per_s']:.0f} msgs/s  local p50 {row['local_p50_ms']:.2f} "
                f"p99 {row['local_p99_ms']:.2f} ms; remote p50 {row['remote_p50_ms']:.2f} "
                f"p99 {row['remote_p99_ms']:.2f} ms; redis hop adds p50 "
                f"{row['added_p50_ms']:.2f}, p99 {row['added_p99_ms']:.2f} ms"
            )
        else:
            print(
                f"interest  {row['mode']:<8}  {row['nodes']} nodes, {row['messages_per_room']} "
                f"per room: envelopes received per node {row['received_per_node']} "
                f"(own share {row['own_share']})"
            )


if __name__ == "__main__":
    main()
