"""Scenarios driven by the compiled load generator (benches/loadgen-go), server on one core.

- `steady`: messages arrive one at a time (a publisher client sends `publish` events at a
  fixed low rate), to 1,000 and 5,000 clients and to rooms (1,000 clients in 10 rooms):
  server CPU per delivery with the server alone on CPU 0 (`taskset`), the load generator on
  CPU 1, idle CPU subtracted.
- `saturate`: broadcast envelopes PUBLISHed into Redis at rising rates (x1.5 per step, 2 s
  each) until a step is not kept up with (not all delivered within 1.25 x the step + 0.5 s,
  twice in a row: one retry); reports per server at 1,000 / 5,000 / 10,000 clients the
  highest rate kept up with, the highest kept up with at p99 < 100 ms, and at the former
  the server's and the load generator's CPU per delivery (Redis and the load generator share
  CPU 1). The servers take turns sweep by sweep, each sweep on a fresh redis-server, server
  and load generators; every step records how long server, load generator and Redis waited
  for their CPU (schedstat's run delay: other jobs on this shared machine).

The load generator is built on demand with `go build` into a cache directory
(`$XDG_CACHE_HOME/roomcast-benches`, keyed by a hash of its source); without `go`, these
`steady` falls back to the Python load generator (benches/loadgen.py), which is far more
expensive per delivery and says so in each row (`loadgen`); `saturate` is skipped.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from .harness import (
    CLIENTS_PER_LOADGEN,
    HERE,
    SATURATED,
    LoadGen,
    Row,
    cpu_seconds,
    emit,
    http_json,
    redis_server,
    run_delay,
    server,
    wait_subscribed,
)
from .registry import Context, scenario

SOURCE = HERE / "loadgen-go"
# One compiled process holds this many clients (this machine allows 20,000 open files).
COMPILED_PER_PROCESS = 15_000
SERVER_CPU = "0"
LOADGEN_CPU = "1"
P99_LIMIT = 0.100
# READS_PER_S: at saturation the load generator's main loop reads its clients at most this
# often in all (every `poll_ms(count)`), so each read syscall takes many frames. Reading at
# once costs it a read per frame per client, as much as the server's send: with 10,000
# clients and a 10 ms interval it needed a whole core from 0.2 M deliveries/s on, and its
# sampled reader (whose timings are the latencies) then waited for the CPU too. The latency
# is timed only on the sampled clients, which have a reader of their own that reads at once.
READS_PER_S = 100_000


def poll_ms(count: int) -> float:
    """The main loop's read interval for `count` clients: 10 ms up to 1,000 clients, longer
    above, so that it stays under READS_PER_S reads per second."""
    return max(10.0, count / READS_PER_S * 1000.0)


START_PER_S = 100_000.0  # deliveries/s of a sweep's first step (x1.5 per step)
SATURATE_HEARTBEAT_TIMEOUT = 3600.0  # s: longer than any sweep


@functools.cache
def softirq_thread(cpu: str) -> int | None:
    """The pid of `ksoftirqd/<cpu>`."""
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == f"ksoftirqd/{cpu}":
                return int(comm.parent.name)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return None


def server_cpu(pid: int) -> tuple[float, float]:
    """(CPU seconds of the server so far, of which ksoftirqd's on the server's core).

    On loopback a `send` also runs the receiving socket's network stack, in softirq context
    in the sender's system call; when a burst of sends raises more of that work than the
    kernel does inline, the rest goes to `ksoftirqd/<cpu>` on the sender's core, whose time
    is not charged to the server's process. With the server pinned alone to SERVER_CPU that
    time is the server's too, so it is counted: without it a server that sends in larger
    bursts (roomcast's one io_uring submission per flush: 16 % of CPU 0 in ksoftirqd at
    10,000 clients, against 6-10 % for the original) would look cheaper than it is.
    """
    own = cpu_seconds(pid)
    if not pinnable():
        return own, 0.0
    softirq = softirq_thread(SERVER_CPU)
    extra = cpu_seconds(softirq) if softirq else 0.0
    return own + extra, extra


def server_cpu_since(pid: int, before: tuple[float, float]) -> tuple[float, float]:
    """`server_cpu` now minus `before` (an earlier `server_cpu`)."""
    total, softirq = server_cpu(pid)
    return total - before[0], softirq - before[1]


def compiled_loadgen() -> Path | None:
    """The compiled load generator, built if needed; None when `go` is missing (or
    ROOMCAST_BENCH_PYTHON_LOADGEN is set, to exercise the fallback)."""
    go = shutil.which("go")
    if go is None or os.environ.get("ROOMCAST_BENCH_PYTHON_LOADGEN"):
        return None
    digest = hashlib.sha256()
    for path in sorted(SOURCE.glob("*")):
        digest.update(path.name.encode() + path.read_bytes())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "roomcast-benches"
    binary = cache / f"loadgen-{digest.hexdigest()[:16]}"
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = binary.with_suffix(".partial")
        subprocess.run([go, "build", "-o", str(partial), "."], cwd=SOURCE, check=True)
        partial.replace(binary)
    return binary


def pinnable() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


@contextmanager
def fast_clients(
    port: int, count: int, binary: Path | None, poll_ms: float = 0.0
) -> Iterator[list[LoadGen]]:
    """`count` authenticated clients: compiled load generators on LOADGEN_CPU when `binary`
    (reading every `poll_ms` when given), else Python ones."""
    url = f"ws://127.0.0.1:{port}/ws"
    per = COMPILED_PER_PROCESS if binary is not None else CLIENTS_PER_LOADGEN
    cpus = LOADGEN_CPU if pinnable() else None
    gens: list[LoadGen] = []
    try:
        for index, start in enumerate(range(0, count, per)):
            n = min(per, count - start)
            args = ["--token-prefix", f"user:g{index}-"]
            if binary is not None:
                args += ["--sources", str(max(1, n // 5000)), "--poll-ms", str(poll_ms)]
            gens.append(LoadGen(url, n, *args, binary=binary, cpus=cpus))
        total = sum(gen.ready() for gen in gens)
        if total != count:
            raise RuntimeError(f"only {total} of {count} clients connected")
        yield gens
    finally:
        for gen in gens:
            gen.stop()


def counts(gens: list[LoadGen]) -> dict[str, Any]:
    reports = [gen.ask("count") for gen in gens]
    return {
        "received": sum(r["received"] for r in reports),
        "min": min(r["min"] for r in reports),
        "max": max(r["max"] for r in reports),
        "bad": sum(r.get("bad", 0) for r in reports),
        "closed": sum(r["closed"] for r in reports),
        "last": max(r["last"] for r in reports),
    }


def wait_count(gens: list[LoadGen], expected: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got = counts(gens)
        if got["received"] >= expected or time.monotonic() > deadline:
            return got
        time.sleep(0.01)


def wait_quiet(gens: list[LoadGen], quiet: float = 1.0, timeout: float = 60.0) -> int:
    """Wait until nothing more arrives for `quiet` seconds; the total received."""
    deadline = time.monotonic() + timeout
    got = counts(gens)["received"]
    still_since = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - still_since < quiet:
        time.sleep(0.05)
        now = counts(gens)["received"]
        if now != got:
            got, still_since = now, time.monotonic()
    return got


def latency(gens: list[LoadGen]) -> tuple[float, float, int]:
    reports = [gen.ask("latency") for gen in gens]
    with_samples = [r for r in reports if r["samples"]]
    if not with_samples:
        return float("nan"), float("nan"), 0
    return (
        statistics.median(r["p50"] for r in with_samples),
        max(r["p99"] for r in with_samples),
        sum(r["samples"] for r in with_samples),
    )


def steady(
    kind: str,
    count: int,
    rate: float,
    seconds: float,
    rounds: int,
    rooms: list[str] | None,
    binary: Path | None,
    write_delay: float = 0.0,
) -> dict[str, Any]:
    """`rate` messages/s for `seconds`, one at a time, from a publisher client to every
    client (or to `rooms` round-robin, client i in room i % len(rooms)); roomcast with
    `write_delay` when given."""
    room_arg = ",".join(rooms) if rooms else "-"
    per_message = count // len(rooms) if rooms else count
    messages = int(rate * seconds)
    if rooms:
        messages -= messages % len(rooms)
    per_client = messages // len(rooms) if rooms else messages
    cpus = SERVER_CPU if pinnable() else None
    samples = []
    with ExitStack() as stack:
        extra = ("--write-delay", str(write_delay)) if write_delay else ()
        port, pid = stack.enter_context(server(kind, 90.0, *extra, cpus=cpus))
        gens = stack.enter_context(fast_clients(port, count, binary))
        if rooms:
            for gen in gens:
                gen.ask("join " + room_arg)
            time.sleep(0.5)
        base = counts(gens)
        for _ in range(rounds):
            idle0 = server_cpu(pid)[0]
            time.sleep(1.0)
            idle = server_cpu(pid)[0] - idle0
            latency(gens)  # forget earlier samples
            expected = base["received"] + messages * per_message
            (cpu0, soft0), wall0 = server_cpu(pid), time.perf_counter()
            lg0 = [cpu_seconds(g.proc.pid) for g in gens]
            gens[0].ask(f"publish {messages} {rate} 100 {room_arg}")
            got = wait_count(gens, expected, 60.0)
            wall = time.perf_counter() - wall0
            cpu, soft = server_cpu_since(pid, (cpu0, soft0))
            lg = sum(cpu_seconds(g.proc.pid) - c for g, c in zip(gens, lg0, strict=True))
            time.sleep(0.2)
            final = counts(gens)
            want_min = base["min"] + per_client
            if (
                got["received"] != expected
                or final["received"] != expected
                or final["bad"]
                or final["min"] != want_min
                or final["max"] != base["max"] + per_client
            ):
                raise RuntimeError(f"{kind}: expected {expected} ({want_min} each), got {final}")
            base = final
            p50, p99, _ = latency(gens)
            delivered = messages * per_message
            samples.append(
                {
                    "cpu": cpu / delivered,
                    "busy": (cpu - idle * wall) / delivered,
                    "softirq": soft / delivered,
                    "util": cpu / wall,
                    "lg": lg / delivered,
                    "lg_util": lg / wall,
                    "p50": p50,
                    "p99": p99,
                }
            )

    def med(key: str) -> float:
        return statistics.median(s[key] for s in samples)

    return emit(
        {
            "scenario": "steady" if not rooms else "steadyrooms",
            "server": kind if not write_delay else f"{kind} write_delay={write_delay * 1000:g}ms",
            "clients": count,
            "rate": rate,
            "messages": messages,
            "rounds": rounds,
            "cpu_ns_per_delivery": med("busy") * 1e9,
            "cpu_ns_per_delivery_with_idle": med("cpu") * 1e9,
            "cpu_ns_per_delivery_rounds": [round(s["busy"] * 1e9) for s in samples],
            "softirq_ns_per_delivery": med("softirq") * 1e9,
            "server_util": med("util"),
            "loadgen": "compiled" if binary is not None else "python",
            "loadgen_ns_per_delivery": med("lg") * 1e9,
            "loadgen_util": med("lg_util"),
            "p50_ms": med("p50") * 1000,
            "p99_ms": med("p99") * 1000,
            "pinned": cpus is not None,
            "lost": 0,
        }
    )


def _pin_redis(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        # A subscriber that falls behind must not be cut off: that would be loss, not lag.
        client.config_set("client-output-buffer-limit", "pubsub 0 0 0")
        redis_pid = client.info("server")["process_id"]
    finally:
        client.close()
    if pinnable():
        subprocess.run(
            ["taskset", "-cp", LOADGEN_CPU, str(redis_pid)], check=True, capture_output=True
        )
    return int(redis_pid)


@contextmanager
def _saturate_setup(
    kind: str, count: int, binary: Path, write_delay: float
) -> Iterator[tuple[str, int, int, int, list[LoadGen]]]:
    """A fresh redis-server, server and load generators for one sweep; yields (redis URL,
    redis pid, server port, server pid, load generators)."""
    cpus = SERVER_CPU if pinnable() else None
    with ExitStack() as stack:
        url = stack.enter_context(redis_server())
        redis_pid = _pin_redis(url)
        extra = ("--write-delay", str(write_delay)) if write_delay else ()
        # The load generator sends no heartbeats: with the default 90 s, a setup that lives
        # longer (several sweeps) sees every client closed with 4002 (the loss one earlier
        # version of this scenario reported).
        port, pid = stack.enter_context(
            server(kind, SATURATE_HEARTBEAT_TIMEOUT, *extra, redis_url=url, cpus=cpus)
        )
        gens = stack.enter_context(fast_clients(port, count, binary, poll_ms(count)))
        wait_subscribed(url, {"ws:broadcast": 1})
        yield url, redis_pid, port, pid, gens


def _numsub(url: str, channel: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(dict(client.pubsub_numsub(channel)).get(channel.encode(), 0))
    finally:
        client.close()


def _sweep(
    kind: str, count: int, step_seconds: float, binary: Path, write_delay: float
) -> dict[str, Any]:
    """One sweep on a fresh setup: rising rates until a step is not kept up with twice in a
    row (or messages are lost)."""
    with _saturate_setup(kind, count, binary, write_delay) as setup:
        return _sweep_on(kind, count, step_seconds, *setup)


def _sweep_on(
    kind: str,
    count: int,
    step_seconds: float,
    url: str,
    redis_pid: int,
    port: int,
    pid: int,
    gens: list[LoadGen],
) -> dict[str, Any]:
    """One sweep on the setup given (see _saturate_setup)."""
    redis_addr = url.removeprefix("redis://")
    base = counts(gens)["received"]
    deliveries_per_s = START_PER_S
    best_p99: dict[str, Any] | None = None
    best_kept: dict[str, Any] | None = None
    steps = []
    retried = False
    while deliveries_per_s <= 40_000_000:
        msg_rate = deliveries_per_s / count
        messages = max(10, int(msg_rate * step_seconds))
        latency(gens)
        expected = base + messages * count
        (cpu0, soft0), t0 = server_cpu(pid), time.perf_counter()
        lg0 = [cpu_seconds(g.proc.pid) for g in gens]
        redis0 = cpu_seconds(redis_pid)
        waits0 = [run_delay(p) for p in (pid, gens[0].proc.pid, redis_pid)]
        gens[0].ask(f"rpublish {redis_addr} ws:broadcast {messages} {msg_rate} 100")
        got = wait_count(gens, expected, step_seconds * 3 + 5)
        wall = time.perf_counter() - t0
        cpu, soft = server_cpu_since(pid, (cpu0, soft0))
        lg = sum(cpu_seconds(g.proc.pid) - c for g, c in zip(gens, lg0, strict=True))
        redis_cpu = cpu_seconds(redis_pid) - redis0
        waits = [
            (run_delay(p) - w) / wall
            for p, w in zip((pid, gens[0].proc.pid, redis_pid), waits0, strict=True)
        ]
        p50, p99, _ = latency(gens)
        complete = got["received"] == expected and got["bad"] == 0
        # Kept up: everything delivered within the step plus a little (no backlog).
        kept_up = complete and wall <= step_seconds * 1.25 + 0.5
        delivered = messages * count
        step: dict[str, Any] = {
            "offered_per_s": deliveries_per_s,
            "delivered_per_s": delivered / max(wall, 1e-9),
            "cpu_ns_per_delivery": cpu / delivered * 1e9,
            "server_util": cpu / wall,
            "softirq_util": soft / wall,
            "loadgen_ns_per_delivery": lg / delivered * 1e9,
            "loadgen_util": lg / wall,
            "redis_util": redis_cpu / wall,
            # Share of the step each one spent runnable, waiting for its CPU (other
            # processes on its core: on this shared machine, other engineers' jobs).
            "server_wait": waits[0],
            "loadgen_wait": waits[1],
            "redis_wait": waits[2],
            "p50_ms": p50 * 1000,
            "p99_ms": p99 * 1000,
            "kept_up": kept_up,
        }
        steps.append(step)
        if not kept_up:
            base = wait_quiet(gens, quiet=2.0, timeout=120.0)
            final = counts(gens)
            if final["bad"]:
                raise RuntimeError(f"{kind}: duplicated or reordered at {step}")
            if final["closed"]:
                raise RuntimeError(f"{kind}: {final['closed']} clients closed at {step}")
            if base != expected:
                # Lost. Say where: every client short by the same number means envelopes
                # never reached the server (or it dropped them all); an uneven shortfall
                # means per-client drops (a client past the backpressure limit).
                step["lost"] = expected - base
                step["lost_where"] = {
                    "min_per_client": final["min"],
                    "max_per_client": final["max"],
                    "closed_clients": final["closed"],
                    "uneven_by": final["max"] - final["min"],
                    "subscribers_now": _numsub(url, "ws:broadcast"),
                }
                break
            if retried:
                break
            retried = True  # one retry: a transient stall on this shared machine
            continue
        retried = False
        base = expected
        best_kept = step
        if p99 < P99_LIMIT:
            best_p99 = step
        deliveries_per_s *= 1.5
    rebuilds = None
    if kind.startswith("roomcast"):  # its Redis session rebuilt by the watchdog in the sweep
        rebuilds = http_json(port, "/stats").get("broker_watchdog_rebuilds")
    return {
        "p99": best_p99,
        "kept": best_kept,
        "failed_at": steps[-1],
        "steps": steps,
        "watchdog_rebuilds": rebuilds,
    }


def saturate(
    kinds: list[str],
    count: int,
    rounds: int,
    step_seconds: float,
    binary: Path,
    write_delay: float = 0.0,
) -> list[dict[str, Any]]:
    """Rising rates of Redis-published broadcasts, `rounds` sweeps per server, the servers
    taking turns sweep by sweep (each sweep on a fresh redis-server, server and load
    generators), so that the load other jobs put on this shared machine falls on both alike.
    Per server: the highest step kept up with and the highest with p99 < 100 ms, medians
    over the sweeps (roomcast with `write_delay` when given)."""
    per_kind: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for _ in range(rounds):
        for kind in kinds:
            delay = write_delay if kind == "roomcast" else 0.0
            per_kind[kind].append(_sweep(kind, count, step_seconds, binary, delay))
    return [
        _saturate_row(kind, count, rounds, sweeps, write_delay if kind == "roomcast" else 0.0)
        for kind, sweeps in per_kind.items()
    ]


def _saturate_row(
    kind: str, count: int, rounds: int, sweeps: list[dict[str, Any]], write_delay: float
) -> dict[str, Any]:
    cpus = SERVER_CPU if pinnable() else None
    under_p99 = [s["p99"]["offered_per_s"] if s["p99"] else 0.0 for s in sweeps]
    kept = [s["kept"]["offered_per_s"] if s["kept"] else 0.0 for s in sweeps]
    kept_steps = [s["kept"] for s in sweeps if s["kept"]]

    def med(key: str) -> float:
        return statistics.median(b[key] for b in kept_steps) if kept_steps else float("nan")

    return emit(
        {
            "scenario": "saturate",
            "server": kind if not write_delay else f"{kind} write_delay={write_delay * 1000:g}ms",
            "clients": count,
            "rounds": rounds,
            "sustained_per_s": statistics.median(kept),
            "sustained_per_s_sweeps": kept,
            "p99_under_100ms_per_s": statistics.median(under_p99),
            "p99_under_100ms_per_s_sweeps": under_p99,
            # At the highest rate kept up:
            "cpu_ns_per_delivery": med("cpu_ns_per_delivery"),
            # What one core would sustain if the server had it to itself (1 / CPU per
            # delivery at the top step): the capacity figure other jobs cannot distort.
            "per_core_second": 1e9 / med("cpu_ns_per_delivery") if kept_steps else 0.0,
            "server_util": med("server_util"),
            "server_wait": med("server_wait"),
            "loadgen": "compiled",
            "loadgen_ns_per_delivery": med("loadgen_ns_per_delivery"),
            "loadgen_util": med("loadgen_util"),
            "loadgen_wait": med("loadgen_wait"),
            "redis_util": med("redis_util"),
            "p50_ms": med("p50_ms"),
            "p99_ms": med("p99_ms"),
            "failed_at": [s["failed_at"] for s in sweeps],
            "steps": [s["steps"] for s in sweeps],
            "watchdog_rebuilds": [s["watchdog_rebuilds"] for s in sweeps],
            "lost": [s["failed_at"].get("lost", 0) for s in sweeps],
            "saturated": "server" if med("server_util") >= SATURATED else "-",
            "pinned": cpus is not None,
        }
    )


# -- registrations -------------------------------------------------------------------------


def _steady_detail(row: Row) -> str:
    return (
        f"  {row['rate']:g} msg/s  p99 {row['p99_ms']:.1f} ms  loadgen "
        f"{row['loadgen_ns_per_delivery']:,.0f} ns/delivery ({row['loadgen']})"
    )


def _saturate_detail(row: Row) -> str:
    return (
        f"  p99<100ms: {row['p99_under_100ms_per_s']:>11,.0f}/s  at the top: "
        f"p99 {row['p99_ms']:.0f} ms, "
        f"{row['cpu_ns_per_delivery']:,.0f} ns CPU/delivery, loadgen "
        f"{row['loadgen_ns_per_delivery']:,.0f} ns/delivery ({row['loadgen']}), "
        f"server waited {row['server_wait']:.0%} for its CPU"
    )


@scenario(
    "steady",
    about="messages one at a time to 1,000 / 5,000 clients and to rooms, server on one core",
    per_server=True,
    compare={
        "steady": ("cpu_ns_per_delivery", "ns CPU/delivery"),
        "steadyrooms": ("cpu_ns_per_delivery", "ns CPU/delivery"),
    },
    detail=_steady_detail,
)
def run_steady(ctx: Context, kind: str) -> list[Row]:
    opts = ctx.options
    binary = compiled_loadgen()
    if binary is None:
        print("note: `go` not found: using the Python load generator", flush=True)
    rows = []
    seconds = 0.5 if opts.quick else 4.0
    for delay in (0.0, *opts.write_delays) if kind == "roomcast" else (0.0,):
        for count in [c for c in opts.counts if c <= 5000] or opts.counts[:1]:
            # One message at a time, ~50,000 deliveries/s: 50/s to 1,000, 10/s to 5,000.
            rate = 50.0 if count <= 1000 else 50_000 / count
            rows.append(steady(kind, count, rate, seconds, opts.rounds, None, binary, delay))
        count = 1000 if not opts.quick else opts.counts[0]
        rooms = [f"room-{i}" for i in range(10)]
        rows.append(steady(kind, count, 200.0, seconds, opts.rounds, rooms, binary, delay))
    return rows


@scenario(
    "saturate",
    about="broadcasts PUBLISHed into Redis at rising rates: the highest rate kept up with",
    compare={"saturate": ("sustained_per_s", "deliveries/s sustained")},
    detail=_saturate_detail,
)
def run_saturate(ctx: Context, _: None) -> list[Row]:
    """`saturate` for every server that speaks the Redis envelope, sweeps interleaved."""
    opts = ctx.options
    binary = compiled_loadgen()
    if binary is None:
        print("note: skipping saturate (it needs the compiled load generator)", flush=True)
        return []
    kinds = [kind for kind in opts.servers if kind in ("roomcast", "roomcast-whole", "ignis")]
    rows = []
    for delay in (0.0, *opts.write_delays):
        for count in opts.counts:
            step = 0.3 if opts.quick else 2.0
            chosen = kinds if not delay else [k for k in kinds if k == "roomcast"]
            rows += saturate(chosen, count, opts.rounds, step, binary, delay)
    return rows
