"""The bench harness: servers, load generators, result rows and the shared command line.

Every scenario module builds on this one (and on nothing in `benches/__main__.py`):

- processes: `server()` starts one of the compared servers (roomcast, pyloop, picows, ignis)
  and yields (port, pid); `redis_server()` a throw-away redis-server; `node()` a roomcast
  bench server on a given Redis;
- load: `LoadGen` is one load-generator process (benches/loadgen.py, or the compiled one,
  see benches/compiled.py) driven line by line over its stdin/stdout; `clients()` opens
  `count` authenticated clients over as many of them as it takes; `received()`,
  `wait_received()`, `wait_last()` poll their counts;
- measurement: `cpu_seconds()` and `run_delay()` (schedstat, per thread), `rss_bytes()`,
  `saturated_side()`;
- results: `emit()` prints one row as a JSON line (the figures a scenario returns);
- the command line every scenario shares: `add_options()` and `Options`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CLIENTS_PER_LOADGEN = 5000
PAGE = os.sysconf("SC_PAGE_SIZE")
SATURATED = 0.85  # share of one core above which a process counts as the bottleneck

Row = dict[str, Any]


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
    if kind == "roomcast-whole":  # roomcast writing every client in one pass per flush
        kind, extra = (
            "roomcast",
            (*extra, "--pass-sockets", str(1 << 40), "--pass-bytes", str(1 << 60)),
        )
    # permessage-deflate on: "roomcast-deflate" (or "roomcast-deflate@LEVEL"), "ignis-deflate".
    kind, level = kind.partition("@")[::2]
    deflate = kind.endswith("-deflate")
    if deflate:
        kind = kind.removesuffix("-deflate")
        if kind == "roomcast":
            extra = (*extra, "--per-message-deflate")
            if level:
                extra = (*extra, "--deflate-level", level)
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
            if deflate:
                command.append("deflate")
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


# -- the shared command line ------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """What every scenario is run with (from the command line)."""

    servers: list[str]  # the compared servers, those not installed removed
    counts: list[int]  # client counts for the scenarios that take --clients
    rounds: int
    quick: bool  # tiny sizes: a smoke run
    write_delays: tuple[float, ...] = ()  # steady, saturate: extra roomcast write_delay rows
    default_gc: bool = False  # redisconnect: CPython's GC settings, not roomcast serve's
    deflate_levels: tuple[int, ...] = ()  # deflate: extra roomcast rows at these zlib levels


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options every scenario shares."""
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
        "--deflate-levels",
        default="",
        help="deflate: also run roomcast at these zlib levels (comma-separated)",
    )
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="redisconnect: roomcast keeps CPython's GC settings (not tuned as roomcast serve)",
    )


def options(args: argparse.Namespace) -> Options:
    """Options from parsed arguments; says which servers are skipped, and why."""
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
    return Options(
        servers=servers,
        counts=counts,
        rounds=rounds,
        quick=args.quick,
        write_delays=tuple(float(d) for d in args.write_delay.split(",") if d),
        default_gc=args.default_gc,
        deflate_levels=tuple(int(level) for level in args.deflate_levels.split(",") if level),
    )
