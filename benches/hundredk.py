"""`python -m benches hundredk`: 100,000 idle authenticated connections on this machine.

`roomcast serve --workers N` (SO_REUSEPORT, each worker a node on one throw-away
`redis-server`, as workers must be) takes 100,000 clients from several compiled load
generators (benches/loadgen-go), each bound to its own 127.0.0.x source address (one
address offers ~28,000 ephemeral ports; a process here may hold 20,000 open files, so
neither one server process nor one load generator can hold them all). Every client
authenticates and then sends a heartbeat every 30 s (spread evenly over the period). Reported:

- connect + authenticate: rate (all clients over the time the slowest generator took),
  errors (must be none), server CPU per connect (summed over the workers);
- RSS of the workers, summed, before and after, per connection (total and marginal);
- server CPU at rest over one full heartbeat period (all clients heartbeating), per
  heartbeat, and the pings the server sent meanwhile;
- one broadcast to every client (an envelope PUBLISHed on `ws:broadcast`, as the emitter
  sends it; every worker delivers it to its own clients), `--rounds` times: the time from
  PUBLISH until the last client has it, deliveries/s, and the p50/p99 of the sampled clients;
- then a subset of clients stops heartbeating (they still answer pings, as a browser does):
  how late the server's close 4002 comes after (last heartbeat sent + heartbeat_timeout).

Everything binds to 127.0.0.x; every process it starts is stopped on the way out.
"""

from __future__ import annotations

import os
import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from .compiled import compiled_loadgen, counts, latency, wait_count
from .harness import LoadGen, Row, cpu_seconds, emit, redis_server, rss_bytes, wait_subscribed
from .registry import Context, scenario
from .serving import roomcast_serve

FIRST_SOURCE = 100  # load generator g binds to 127.0.0.(100 + g)


@dataclass
class Plan:
    clients: int = 100_000
    workers: int = 6
    generators: int = 7
    silent: int = 1_000
    heartbeat: float = 30.0  # s between a client's heartbeats
    timeout: float = 90.0  # the server's heartbeat_timeout (its default)
    rounds: int = 5  # broadcasts

    @classmethod
    def quick(cls) -> Plan:
        return cls(clients=60, workers=2, generators=2, silent=4, heartbeat=1.0, timeout=3.0)


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def _rss(pids: list[int]) -> int:
    return sum(rss_bytes(pid) for pid in pids)


def hundredk(plan: Plan) -> dict[str, Any]:
    binary = compiled_loadgen()
    if binary is None:
        raise RuntimeError("hundredk needs the compiled load generator (`go`)")
    row: dict[str, Any] = {
        "scenario": "hundredk",
        "clients": plan.clients,
        "workers": plan.workers,
        "generators": plan.generators,
        "heartbeat_s": plan.heartbeat,
        "heartbeat_timeout_s": plan.timeout,
    }
    with ExitStack() as stack:
        url = stack.enter_context(redis_server())
        timeout_ms = int(plan.timeout * 1000)
        port, pids = stack.enter_context(
            roomcast_serve(plan.workers, url, heartbeat_timeout_ms=timeout_ms)
        )
        pids = [pid for pid in pids if pid]
        wait_subscribed(url, {"ws:broadcast": plan.workers})
        time.sleep(0.5)
        rss0 = _rss(pids)
        cpu0, wall0 = _cpu(pids), time.perf_counter()
        time.sleep(min(plan.heartbeat, 5.0))
        row["idle_server_util"] = (_cpu(pids) - cpu0) / (time.perf_counter() - wall0)
        cpu0 = _cpu(pids)
        share = plan.clients // plan.generators
        sizes = [share] * (plan.generators - 1) + [plan.clients - share * (plan.generators - 1)]
        ws = f"ws://127.0.0.1:{port}/ws"
        gens: list[LoadGen] = []
        for g, n in enumerate(sizes):
            args = ["--token-prefix", f"user:h{g}-", "--sources", "1"]
            args += ["--source-first", str(FIRST_SOURCE + g), "--heartbeat", str(plan.heartbeat)]
            gen = LoadGen(ws, n, *args, binary=binary)
            stack.callback(gen.stop)
            gens.append(gen)
        ready = sum(gen.ready() for gen in gens)
        connect_wall = max(gen.connect_seconds for gen in gens)
        row["connected"] = ready
        row["connect_errors"] = plan.clients - ready
        row["connects_per_s"] = ready / connect_wall
        row["connect_seconds"] = connect_wall
        row["cpu_us_per_connect"] = (_cpu(pids) - cpu0) / max(ready, 1) * 1e6
        if ready != plan.clients:
            emit(row)
            raise RuntimeError(f"only {ready} of {plan.clients} clients connected")
        # How SO_REUSEPORT spread them: open descriptors per worker (each holds 20,000).
        row["fds_per_worker"] = [len(os.listdir(f"/proc/{pid}/fd")) for pid in pids]
        base = counts(gens)
        # Broadcasts to everyone, through Redis.
        redis_addr = url.removeprefix("redis://")
        spans, rates, p50s, p99s, bcpu = [], [], [], [], []
        for _ in range(plan.rounds):
            latency(gens)
            expected = base["received"] + plan.clients
            cpu0 = _cpu(pids)
            t0 = time.perf_counter()
            gens[0].ask(f"rpublish {redis_addr} ws:broadcast 1 0 100")
            got = wait_count(gens, expected, 60.0)
            time.sleep(0.2)
            final = counts(gens)
            if (
                got["received"] != expected
                or final["received"] != expected
                or final["bad"]
                or final["min"] != base["min"] + 1
                or final["max"] != base["max"] + 1
            ):
                raise RuntimeError(f"broadcast: expected {expected} (one each), got {final}")
            span = final["last"] - t0
            spans.append(span)
            rates.append(plan.clients / span)
            bcpu.append((_cpu(pids) - cpu0) / plan.clients)
            p50, p99, _ = latency(gens)
            p50s.append(p50)
            p99s.append(p99)
            base = final
            time.sleep(0.5)
        row.update(
            {
                "broadcast_last_delivery_ms": statistics.median(spans) * 1000,
                "broadcast_last_delivery_ms_rounds": [round(s * 1000, 1) for s in spans],
                "broadcast_deliveries_per_s": statistics.median(rates),
                "broadcast_cpu_ns_per_delivery": statistics.median(bcpu) * 1e9,
                "broadcast_p50_ms": statistics.median(p50s) * 1000,
                "broadcast_p99_ms": statistics.median(p99s) * 1000,
            }
        )
        # At rest: one full heartbeat period, every client heartbeating once, with nothing
        # else going on (so the silent clients' last heartbeats below met an idle server:
        # one sent during a broadcast is read, and its deadline counted, only after it).
        pings0 = sum(gen.ask("count")["pings"] for gen in gens)
        cpu0, lg0, wall0 = _cpu(pids), _cpu([g.proc.pid for g in gens]), time.perf_counter()
        time.sleep(plan.heartbeat)
        wall = time.perf_counter() - wall0
        rest_cpu = _cpu(pids) - cpu0
        lg_cpu = _cpu([g.proc.pid for g in gens]) - lg0
        rss1 = _rss(pids)
        beats = plan.clients * wall / plan.heartbeat
        pongs = sum(gen.ask("count")["pings"] for gen in gens) - pings0
        row.update(
            {
                "rss_mb_before": rss0 / 2**20,
                "rss_mb": rss1 / 2**20,
                "rss_kb_per_connection": rss1 / plan.clients / 1024,
                "rss_kb_per_connection_marginal": (rss1 - rss0) / plan.clients / 1024,
                "rest_server_util": rest_cpu / wall,
                "rest_us_per_heartbeat": rest_cpu / beats * 1e6,
                "rest_loadgen_util": lg_cpu / wall,
                "rest_pings": pongs,
                "rest_us_per_inbound_frame": rest_cpu / (beats + pongs) * 1e6,
            }
        )
        # Silent clients: the close 4002 and how late it comes.
        per_gen = [plan.silent // plan.generators] * plan.generators
        per_gen[0] += plan.silent - sum(per_gen)
        marked = sum(gen.ask(f"silent {k}")["silent"] for gen, k in zip(gens, per_gen, strict=True))
        deadline = time.monotonic() + plan.timeout + plan.heartbeat + 30.0
        while True:
            reports = [gen.ask(f"closes {plan.timeout}") for gen in gens]
            closed = sum(r["closed"] for r in reports)
            if closed >= marked or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        codes: dict[str, int] = {}
        for report in reports:
            for code, n in report["codes"].items():
                codes[code] = codes.get(code, 0) + n
        with_closes = [r for r in reports if r["closed"]]
        row.update(
            {
                "silent": marked,
                "silent_closed": closed,
                "silent_close_codes": codes,
                "others_closed": sum(r["others_closed"] for r in reports),
                "late_4002_ms_min": min((r["late_min"] for r in with_closes), default=None),
                "late_4002_ms_p50": statistics.median(r["late_p50"] for r in with_closes)
                if with_closes
                else None,
                "late_4002_ms_max": max((r["late_max"] for r in with_closes), default=None),
                "late_4002_ms_p99": max((r["late_p99"] for r in with_closes), default=None),
                "late_4002_over_1s": sum(r.get("late_over_1s", 0) for r in with_closes),
            }
        )
        for key in ("late_4002_ms_min", "late_4002_ms_p50", "late_4002_ms_p99", "late_4002_ms_max"):
            if row[key] is not None:
                row[key] *= 1000
        emit(row)
        if closed != marked or codes != {"4002": marked} or row["others_closed"]:
            raise RuntimeError(f"silent clients: {codes}, others closed {row['others_closed']}")
    return row


# -- registrations -------------------------------------------------------------------------


def summary(row: Row) -> str:
    return (
        f"hundredk  C={row['clients']:,} on {row['workers']} workers: "
        f"{row['connects_per_s']:,.0f} connects/s ({row['connect_errors']} errors, "
        f"{row['cpu_us_per_connect']:.0f} us server CPU each); RSS {row['rss_mb']:,.0f} MB "
        f"({row['rss_kb_per_connection']:.2f} KB/connection, marginal "
        f"{row['rss_kb_per_connection_marginal']:.2f}); at rest {row['rest_server_util']:.1%} "
        f"of a core ({row['rest_us_per_heartbeat']:.1f} us/heartbeat); broadcast to all: last "
        f"delivery {row['broadcast_last_delivery_ms']:,.0f} ms "
        f"({row['broadcast_deliveries_per_s']:,.0f}/s); 4002 late by "
        f"{row['late_4002_ms_p50']:.0f} ms median, {row['late_4002_ms_max']:.0f} ms max"
    )


@scenario(
    "hundredk",
    about="100,000 idle connections on `roomcast serve --workers 6`: connect, RSS, 4002",
    summary=summary,
)
def run_hundredk(ctx: Context, _: None) -> list[Row]:
    opts = ctx.options
    plan = Plan.quick() if opts.quick else Plan()
    plan.rounds = opts.rounds
    return [hundredk(plan)]
