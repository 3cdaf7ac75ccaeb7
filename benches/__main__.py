"""Bench runner: `python -m benches [SCENARIO ...] [--servers ...] [--rounds 5] [--quick]`.

Scenarios: fanout (C = 1,000 / 5,000 / 10,000 clients), redisfanout (the same, published into
Redis as broadcast envelopes; roomcast and the original), rooms (1,000 clients in 10 rooms),
latency (1,000 clients at 50 broadcasts/s), connect, redisconnect (connect + authenticate on
a node with Redis, roomcast by interest and by pattern, the server pinned to one core),
heartbeat, memory, sweep, burst
(one broadcast timed inside the server), deadline (4002 lateness with 10,000 idle clients),
encrypted (room messages to 1,000 encrypted clients: Rust vs Python sealing, loop stall),
crossnode (published on one node, delivered on another through Redis), redishop (the latency
the Redis hop adds), interest (4 nodes on disjoint rooms: envelopes each node receives), workers
(`roomcast serve --workers 1` vs `2`: connect and fan-out), scrape (cost of a /metrics scrape
at 10,000 connections; fan-out CPU with and without scraping); the last two in serving.py;
hundredk (100,000 idle connections on `roomcast serve --workers 6`, in hundredk.py);
steady (messages arriving one at a time, server pinned to one core; `--write-delay` adds
roomcast rows with that window) and saturate (Redis-published broadcasts at rising rates), both
with the compiled load generator, in compiled.py; historyfanout (history room vs plain room,
memory and Redis, steady and bursts), recovery (1,000 clients reconnecting at once, 100 missed
each) and historymem (Redis memory of kept messages), in history.py.

Servers, measured one after the other in the same invocation so every figure is also a ratio:
- roomcast: the server with its Rust fan-out;
- pyloop: baseline (a), the same server delivering with a plain Python loop (transport.send);
- picows: baseline (b), a hand-optimised pure-Python picows server (benches/baseline.py);
- ignis: baseline (c), the original on Bun, when `bun` and `@venizia/ignis-helpers` are
  installed in benches/original/node_modules (see benches/README.md); skipped otherwise.

Server CPU comes from /proc/<pid>/task/*/schedstat, so a figure stays honest when the load
generator is the bottleneck; each row says which side was saturated. Prints one JSON line per
measurement and a table at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CLIENTS_PER_LOADGEN = 5000
PAGE = os.sysconf("SC_PAGE_SIZE")
SATURATED = 0.85  # share of one core above which a process counts as the bottleneck


# -- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of `pid` so far, from schedstat (ns precision, unlike the
    10 ms ticks of /proc/<pid>/stat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that just ended
    return total / 1e9


def run_delay(pid: int) -> float:
    """Seconds the threads of `pid` have spent runnable but waiting for a CPU (schedstat's
    second field): how much other processes on its core held it back."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / 1e9


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def original_dir() -> Path | None:
    """benches/original, when bun and the original package are installed there."""
    root = HERE / "original"
    modules = root / "node_modules"
    if (modules / ".bin/bun").exists() and (modules / "@venizia/ignis-helpers").exists():
        return root
    return None


@contextmanager
def server(
    kind: str,
    heartbeat_timeout: float = 90.0,
    *extra: str,
    redis_url: str | None = None,
    cpus: str | None = None,
) -> Iterator[tuple[int, int]]:
    """Start a server of `kind` (extra arguments go to roomcast's bench server), on
    `redis_url` when given, pinned to `cpus` (a taskset list) when given; yield (port, pid)."""
    port = free_port()
    env = {**os.environ, "APP_ENV_LOGGER_LEVEL": "error"}
    if kind == "roomcast-send":  # roomcast with one send(2) per direct write, not io_uring
        kind, env["ROOMCAST_IO_URING"] = "roomcast", "0"
    with ExitStack() as stack:
        if kind == "roomcast" or kind == "pyloop":
            fanout = "rust" if kind == "roomcast" else "python"
            command = [sys.executable, "-m", "benches.server", str(port), "--fanout", fanout]
            command += ["--heartbeat-timeout", str(heartbeat_timeout), *extra]
            if redis_url is not None:
                command += ["--redis-url", redis_url]
        elif kind == "picows":
            command = [sys.executable, "-m", "benches.baseline", str(port)]
        elif kind == "ignis":
            root = original_dir()
            assert root is not None
            redis_port = (redis_url or stack.enter_context(redis_server())).rsplit(":", 1)[1]
            bun = str(root / "node_modules/.bin/bun")
            command = [bun, str(root / "server.ts"), str(port), str(redis_port)]
            command.append(str(int(heartbeat_timeout * 1000)))
        else:
            raise ValueError(f"unknown server: {kind}")
        if cpus is not None and shutil.which("taskset"):
            command = ["taskset", "-c", cpus, *command]  # taskset execs: same pid
        # The original writes log files into its working directory: give it a scratch one.
        workdir = (
            stack.enter_context(tempfile.TemporaryDirectory()) if kind == "ignis" else HERE.parent
        )
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=workdir,
            env=env,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            while line and line.strip() != "ready":
                line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{kind} server did not start")
            yield port, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


class LoadGen:
    """One load-generator process: benches/loadgen.py, or the compiled one (`binary`, see
    benches/compiled.py), pinned to `cpus` when given."""

    def __init__(
        self, url: str, count: int, *args: str, binary: Path | None = None, cpus: str | None = None
    ) -> None:
        if binary is None:
            command = [sys.executable, "-m", "benches.loadgen", url, str(count), *args]
        else:
            command = [str(binary), *args, url, str(count)]  # Go's flags come first
        if cpus is not None:
            command = ["taskset", "-c", cpus, *command]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=HERE.parent,
        )

    def ready(self) -> int:
        """Wait until connected; returns how many clients connected (and keeps the time)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("load generator died")
        report = json.loads(line)
        self.connect_seconds: float = report["seconds"]
        self.connect_p99: float = report.get("p99", 0.0)
        return report["ready"]

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextmanager
def clients(
    port: int,
    count: int,
    *args: str,
    generators: int | None = None,
    token_prefix: str = "user:g",
) -> Iterator[list[LoadGen]]:
    """`count` authenticated clients in processes of at most CLIENTS_PER_LOADGEN, or spread
    evenly over `generators` processes when given."""
    url = f"ws://127.0.0.1:{port}/ws"
    if generators is None:
        sizes = [
            min(CLIENTS_PER_LOADGEN, count - start)
            for start in range(0, count, CLIENTS_PER_LOADGEN)
        ]
    else:
        share = count // generators
        sizes = [share] * (generators - 1) + [count - share * (generators - 1)]
    gens = []
    try:
        for index, n in enumerate(sizes):
            gens.append(LoadGen(url, n, "--token-prefix", f"{token_prefix}{index}-", *args))
        total = sum(gen.ready() for gen in gens)
        if total != count:
            raise RuntimeError(f"only {total} of {count} clients connected")
        yield gens
    finally:
        for gen in gens:
            gen.stop()


def received(gens: list[LoadGen]) -> int:
    return sum(gen.ask("count")["received"] for gen in gens)


def wait_received(gens: list[LoadGen], expected: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    got = received(gens)
    while got < expected and time.monotonic() < deadline:
        time.sleep(0.02)
        got = received(gens)
    return got


def http_json(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as response:
        return json.loads(response.read())


def emit(row: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(row), flush=True)
    return row


def saturated_side(server_util: float, loadgen_utils: list[float]) -> str:
    if server_util >= SATURATED:
        return "server"
    if loadgen_utils and max(loadgen_utils) >= SATURATED:
        return "loadgen"
    return "neither"


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


@contextmanager
def node(redis_url: str) -> Iterator[tuple[int, int]]:
    """A roomcast bench server on `redis_url`; yields (port, pid)."""
    with server("roomcast", 90.0, "--redis-url", redis_url) as started:
        yield started


def joined(stack: ExitStack, port: int, count: int, room: str, *args: str) -> list[LoadGen]:
    """`count` clients (kept open by `stack`), every one in `room`."""
    gens = stack.enter_context(clients(port, count, *args))
    for gen in gens:
        gen.ask("join " + room)
    return gens


# -- scenarios -----------------------------------------------------------------------------


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


# -- the table -------------------------------------------------------------------------------


def print_table(rows: list[dict[str, Any]]) -> None:
    by_key: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for row in rows:
        if "server" in row:
            key = (row["scenario"], row.get("clients"))
            by_key.setdefault(key, {})[row["server"]] = row
    metric = {
        "fanout": ("cpu_ns_per_delivery", "ns CPU/delivery"),
        "rooms": ("cpu_ns_per_delivery", "ns CPU/delivery"),
        "redisfanout": ("cpu_ns_per_delivery", "ns CPU/delivery"),
        "latency": ("p99_ms", "ms p99"),
        "connect": ("cpu_us_per_connect", "us CPU/connect"),
        "redisconnect": ("cpu_us_per_connect", "us CPU/connect"),
        "heartbeat": ("cpu_us_per_heartbeat", "us CPU/heartbeat"),
        "memory": ("rss_kb_per_connection", "KB RSS/connection"),
        "steady": ("cpu_ns_per_delivery", "ns CPU/delivery"),
        "steadyrooms": ("cpu_ns_per_delivery", "ns CPU/delivery"),
        "saturate": ("sustained_per_s", "deliveries/s sustained"),
    }
    print()
    for (scenario, count), servers in by_key.items():
        name, unit = metric[scenario]
        base_b = servers.get("picows", {}).get(name)
        base_c = servers.get("ignis", {}).get(name)
        for kind, row in servers.items():
            value = row[name]
            extra = ""
            if scenario in ("fanout", "rooms", "redisfanout"):
                extra = f"  {row['delivered_per_s']:>11,.0f} msg/s  saturated: {row['saturated']}"
            if scenario == "latency":
                extra = f"  (p50 {row['p50_ms']:.2f} ms)"
            if scenario in ("steady", "steadyrooms"):
                extra = (
                    f"  {row['rate']:g} msg/s  p99 {row['p99_ms']:.1f} ms  loadgen "
                    f"{row['loadgen_ns_per_delivery']:,.0f} ns/delivery ({row['loadgen']})"
                )
            if scenario == "saturate":
                extra = (
                    f"  p99<100ms: {row['p99_under_100ms_per_s']:>11,.0f}/s  at the top: "
                    f"p99 {row['p99_ms']:.0f} ms, "
                    f"{row['cpu_ns_per_delivery']:,.0f} ns CPU/delivery, loadgen "
                    f"{row['loadgen_ns_per_delivery']:,.0f} ns/delivery ({row['loadgen']}), "
                    f"server waited {row['server_wait']:.0%} for its CPU"
                )
            if scenario == "connect":
                extra = f"  {row['connects_per_s']:>8,.0f} connects/s"
            if scenario == "redisconnect":
                extra = (
                    f"  {row['connects_per_s']:>8,.0f} connects/s  "
                    f"p99 {row['p99_connect_ms']:,.0f} ms"
                )
                if "gc" in row:
                    extra += (
                        f"  GC ({row['gc']}) {row['gc_us_per_connect']:.1f} us/connect, "
                        f"longest stall {row['gc_max_pause_ms']:.0f} ms"
                    )
            ratios = ""
            if base_b and kind != "picows":
                ratios += f"  {value / base_b:.2f}x (b)"
            if base_c and kind != "ignis":
                ratios += f"  {value / base_c:.2f}x (c)"
            base_pattern = servers.get("pattern", {}).get(name)
            if base_pattern and kind == "interest":
                ratios += f"  {value / base_pattern:.2f}x pattern"
            print(f"{scenario:<9} C={count!s:>6}  {kind:<8} {value:>12,.2f} {unit}{ratios}{extra}")
    for row in rows:
        if row["scenario"] == "sweep":
            print(f"sweep     idle={row['idle']:>6}  {row['ns_per_sweep']:,.0f} ns per sweep")
        elif row["scenario"] == "burst":
            print(
                f"burst     C={row['clients']:>6} x{row['burst']:<3} {row['mode']:<6} "
                f"{row['deliveries_per_s']:>12,.0f} deliveries/s  "
                f"{row['cpu_ns_per_delivery']:>7,.0f} ns CPU/delivery"
            )
        elif row["scenario"] == "encrypted":
            print(
                f"encrypted C={row['clients']:>6} {row['size']:>5} B {row['mode']:<6} "
                f"{row['messages_per_s']:>8,.1f} messages/s  "
                f"{row['deliveries_per_s']:>10,.0f} deliveries/s  "
                f"stall p99 {row['median_p99_stall_ms']:.1f} ms, "
                f"max {row['median_max_stall_ms']:.1f} ms (worst {row['worst_stall_ms']:.1f})"
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
        elif row["scenario"] == "redishop":
            print(
                f"redishop  {row['rate_per_s']:.0f} msgs/s  local p50 {row['local_p50_ms']:.2f} "
                f"p99 {row['local_p99_ms']:.2f} ms; remote p50 {row['remote_p50_ms']:.2f} "
                f"p99 {row['remote_p99_ms']:.2f} ms; redis hop adds p50 "
                f"{row['added_p50_ms']:.2f}, p99 {row['added_p99_ms']:.2f} ms"
            )
        elif row["scenario"] == "interest":
            print(
                f"interest  {row['mode']:<8}  {row['nodes']} nodes, {row['messages_per_room']} "
                f"per room: envelopes received per node {row['received_per_node']} "
                f"(own share {row['own_share']})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benches", description=__doc__.split("\n")[0])
    parser.add_argument(
        "scenarios",
        nargs="*",
        default=["fanout", "rooms", "latency", "connect", "heartbeat", "sweep"],
    )
    parser.add_argument("--servers", default="roomcast,pyloop,picows,ignis")
    parser.add_argument("--clients", default="1000,5000,10000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument(
        "--write-delay",
        default="",
        help="steady: also run roomcast with these write_delay values (seconds, comma-separated)",
    )
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="redisconnect: roomcast keeps CPython's GC settings (not tuned as roomcast serve)",
    )
    args = parser.parse_args()

    servers = args.servers.split(",")
    if "ignis" in servers and original_dir() is None:
        print(
            "note: skipping ignis (bun + @venizia/ignis-helpers not installed in "
            "benches/original/node_modules)",
            flush=True,
        )
        servers.remove("ignis")
    if "ignis" in servers and shutil.which("redis-server") is None:
        print("note: skipping ignis (it needs redis-server)", flush=True)
        servers.remove("ignis")
    counts = [int(c) for c in args.clients.split(",")]
    rounds = args.rounds
    if args.quick:
        counts, rounds = [50], 1

    rows: list[dict[str, Any]] = []
    for scenario in args.scenarios:
        single = ("sweep", "burst", "deadline", "encrypted", "crossnode", "redishop", "interest")
        single += ("workers", "scrape", "redisconnect", "historyfanout", "recovery", "historymem")
        single += ("hundredk", "saturate")
        for kind in servers if scenario not in single else [None]:
            if scenario == "fanout":
                for count in counts:
                    messages = max(20, 500_000 // count) if not args.quick else 20
                    rows.append(delivery(kind, "fanout", count, messages, rounds, None))
            elif scenario in ("historyfanout", "recovery", "historymem"):
                from . import history

                rows += history.run(scenario, rounds, args.quick)
            elif scenario == "steady":
                from . import compiled

                delays = tuple(float(d) for d in args.write_delay.split(",") if d)
                rows += compiled.run(scenario, kind, counts, rounds, args.quick, delays)
            elif scenario == "saturate":
                from . import compiled

                delays = tuple(float(d) for d in args.write_delay.split(",") if d)
                rows += compiled.run_saturate(servers, counts, rounds, args.quick, delays)
            elif scenario == "redisfanout":
                if kind in ("roomcast", "ignis"):  # the servers that speak the Redis envelope
                    for count in counts:
                        messages = max(20, 500_000 // count) if not args.quick else 20
                        rows.append(redis_fanout(kind, count, messages, rounds))
            elif scenario == "rooms":
                count = 1000 if not args.quick else 50
                rooms = [f"room-{i}" for i in range(10)]
                rows.append(
                    delivery(kind, "rooms", count, 2000 if not args.quick else 20, rounds, rooms)
                )
            elif scenario == "latency":
                count = 1000 if not args.quick else 50
                rows.append(latency(kind, count, 50, 2.0 if not args.quick else 0.2, rounds))
            elif scenario == "connect":
                rows.append(connect(kind, 5000 if not args.quick else 50, rounds))
            elif scenario == "redisconnect":
                variants = []
                if "roomcast" in servers:
                    variants += [("roomcast", "interest"), ("roomcast", "pattern")]
                if "ignis" in servers:
                    variants.append(("ignis", "pattern"))  # the original subscribes by pattern
                count = 5000 if not args.quick else 50
                rows += redis_connect(variants, count, rounds, args.default_gc)
            elif scenario in ("heartbeat", "memory"):
                if not any(r["scenario"] == "heartbeat" and r["server"] == kind for r in rows):
                    count = 5000 if not args.quick else 50
                    rows += heartbeat_and_memory(
                        kind, count, 4.0 if not args.quick else 0.2, rounds
                    )
            elif scenario == "sweep":
                rows += sweep([10_000, 50_000] if not args.quick else [100], rounds)
            elif scenario == "burst":
                for count in counts:
                    for n in (1, 10):
                        rows += burst(count, rounds, 100, n)
            elif scenario == "deadline":
                rows.append(deadline(10_000 if not args.quick else 50, rounds, 3.0))
            elif scenario == "encrypted":
                for size in (100, 4096):
                    rows += encrypted(1000 if not args.quick else 20, rounds, size, 20)
            elif scenario == "crossnode":
                rows.append(crossnode(20_000 if not args.quick else 200, rounds, 100))
            elif scenario == "redishop":
                rows.append(redis_hop(10, 500.0, 2.0 if not args.quick else 0.2, rounds, 100))
            elif scenario == "interest":
                rows += interest(4, 10 if not args.quick else 2, 2000 if not args.quick else 20)
            elif scenario == "workers":
                from .serving import workers

                rows += workers([4000] if not args.quick else [50], rounds, args.quick)
            elif scenario == "scrape":
                from .serving import scrape

                rows += scrape(10_000 if not args.quick else 50, 100, rounds, args.quick)
            elif scenario == "hundredk":
                from .hundredk import Plan, hundredk

                plan = Plan.quick() if args.quick else Plan(rounds=rounds)
                plan.rounds = rounds
                rows.append(hundredk(plan))
    print_table(rows)
    from .history import print_rows as print_history
    from .hundredk import print_row
    from .serving import print_rows

    print_rows(rows)
    print_history(rows)
    for row in rows:
        if row["scenario"] == "hundredk":
            print_row(row)


if __name__ == "__main__":
    main()
