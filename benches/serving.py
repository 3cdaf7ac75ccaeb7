"""Production-serving scenarios of `python -m benches`, run on `roomcast serve` itself.

- `workers`: connect and fan-out with `--workers 1` and `--workers 2` on one Redis: connects/s
  and delivered/s (a `publish` goes to `helper.send()`: local delivery plus an envelope the
  other workers deliver), server CPU summed over every worker, and who saturated.
- `scrape`: the cost of one `/metrics` scrape with 10,000 connections (server CPU per scrape,
  idle CPU subtracted), and fan-out CPU per delivery with and without a scraper polling
  `/metrics` 10 times a second (150 times Prometheus' default rate of once per 15 s).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .harness import (
    HERE,
    Row,
    clients,
    cpu_seconds,
    emit,
    free_port,
    received,
    redis_server,
    saturated_side,
    wait_received,
)
from .registry import Context, scenario

APP = "benches.serving_app:app"


@contextmanager
def roomcast_serve(
    workers: int, redis_url: str, *extra: str, heartbeat_timeout_ms: int = 600_000
) -> Iterator[tuple[int, list[int]]]:
    """`roomcast serve --workers N` on a free port; yields (port, pids of the serving
    processes: the workers, or the one process)."""
    port = free_port()
    command = [sys.executable, "-m", "roomcast", "serve", "--port", str(port)]
    command += ["--workers", str(workers), "--redis-url", redis_url, "--app", APP]
    command += ["--log-level", "error", "--heartbeat-timeout-ms", str(heartbeat_timeout_ms)]
    command += extra
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=HERE.parent
    )
    try:
        assert proc.stdout is not None
        pids: list[int] = []
        for line in proc.stdout:
            if "started (pid " in line:
                pids.append(int(line.rsplit("pid ", 1)[1].rstrip(")\n")))
            if line.startswith("roomcast: listening on"):
                break
        else:
            raise RuntimeError("roomcast serve did not start")
        # Keep reading, so the pipe never fills.
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield port, pids or [proc.pid]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def split_clients(port: int, count: int, generators: int) -> Any:
    """`count` authenticated clients spread over `generators` load-generator processes."""
    return clients(port, count, generators=generators, token_prefix="g")


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def workers(counts: list[int], rounds: int, quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with redis_server() as url:
        redis_pid = _redis_pid(url)
        for count in counts:
            messages = 20 if quick else max(20, 4_000_000 // count)
            for n in (1, 2):
                rows.append(_workers_once(url, redis_pid, n, count, messages, rounds))
    for count in counts:
        one, two = (
            next(r for r in rows if r["clients"] == count and r["workers"] == n) for n in (1, 2)
        )
        rows.append(
            emit(
                {
                    "scenario": "workers-ratio",
                    "clients": count,
                    "delivered_ratio": two["delivered_per_s"] / one["delivered_per_s"],
                    "connect_ratio": two["connects_per_s"] / one["connects_per_s"],
                }
            )
        )
    return rows


def _redis_pid(url: str) -> int | None:
    port = url.rsplit(":", 1)[1]
    out = subprocess.run(["pgrep", "-f", f"redis-server.*:{port}"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    return pids[0] if pids else None


def _workers_once(
    url: str, redis_pid: int | None, n: int, count: int, messages: int, rounds: int
) -> dict[str, Any]:
    connect_rates, connect_costs, samples = [], [], []
    for _ in range(rounds):
        with roomcast_serve(n, url) as (port, pids):
            cpu0 = _cpu(pids)
            with split_clients(port, count, 2) as gens:
                connect_costs.append((_cpu(pids) - cpu0) / count)
                connect_rates.append(count / max(gen.connect_seconds for gen in gens))
                time.sleep(0.5)  # subscriptions settle
                expected = received(gens) + messages * count
                cpu0 = _cpu(pids)
                per0 = [cpu_seconds(p) for p in pids]
                lg0 = [cpu_seconds(g.proc.pid) for g in gens]
                redis0 = cpu_seconds(redis_pid) if redis_pid else 0.0
                wall0 = time.perf_counter()
                gens[0].ask(f"publish {messages} 0 100 -")
                got = wait_received(gens, expected, timeout=120)
                wall = time.perf_counter() - wall0
                if got != expected:
                    raise RuntimeError(f"workers {n}: expected {expected}, got {got}")
                per = [(cpu_seconds(p) - c) / wall for p, c in zip(pids, per0, strict=True)]
                lg = [(cpu_seconds(g.proc.pid) - c) / wall for g, c in zip(gens, lg0, strict=True)]
                redis_util = (cpu_seconds(redis_pid) - redis0) / wall if redis_pid else 0.0
                delivered = messages * count
                samples.append(
                    (delivered / wall, (_cpu(pids) - cpu0) / delivered, max(per), lg, redis_util)
                )
                time.sleep(0.2)
                if received(gens) != expected:
                    raise RuntimeError(f"workers {n}: duplicates ({received(gens)} > {expected})")
    lg_util = [statistics.median(s[3][i] for s in samples) for i in range(2)]
    worker_util = statistics.median(s[2] for s in samples)
    redis_util = statistics.median(s[4] for s in samples)
    saturated = saturated_side(worker_util, lg_util)
    if saturated == "neither" and redis_util >= 0.85:
        saturated = "redis"
    return emit(
        {
            "scenario": "workers",
            "workers": n,
            "clients": count,
            "messages": messages,
            "rounds": rounds,
            "connects_per_s": statistics.median(connect_rates),
            "cpu_us_per_connect": statistics.median(connect_costs) * 1e6,
            "delivered_per_s": statistics.median(s[0] for s in samples),
            "cpu_ns_per_delivery": statistics.median(s[1] for s in samples) * 1e9,
            "busiest_worker_util": worker_util,
            "loadgen_util": lg_util,
            "redis_util": redis_util,
            "saturated": saturated,
            "lost": 0,
        }
    )


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def scrape(count: int, scrapes: int, rounds: int, quick: bool) -> list[dict[str, Any]]:
    messages = 20 if quick else 200
    rows: list[dict[str, Any]] = []
    with (
        redis_server() as url,
        roomcast_serve(1, url) as (port, pids),
        split_clients(port, count, 2) as gens,
    ):
        metrics = f"http://127.0.0.1:{port}/metrics"
        [pid] = pids
        page = _get(metrics)
        # Idle CPU (sweeps, the lag timer) over a while, subtracted from the scrape figure.
        cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
        time.sleep(1.0 if quick else 3.0)
        idle_rate = (cpu_seconds(pid) - cpu0) / (time.perf_counter() - wall0)
        costs = []
        for _ in range(rounds):
            cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
            for _ in range(scrapes):
                _get(metrics)
            wall = time.perf_counter() - wall0
            costs.append((cpu_seconds(pid) - cpu0 - idle_rate * wall) / scrapes)
        rows.append(
            emit(
                {
                    "scenario": "scrape",
                    "clients": count,
                    "scrapes": scrapes,
                    "rounds": rounds,
                    "page_bytes": len(page),
                    "server_us_per_scrape": statistics.median(costs) * 1e6,
                }
            )
        )
        # Fan-out CPU per delivery, rounds alternating without and with a busy scraper.
        per: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(rounds):
            for scraping in (False, True):
                stop = threading.Event()
                scraper = threading.Thread(target=_scrape_until, args=(metrics, stop, 0.1))
                if scraping:
                    scraper.start()
                expected = received(gens) + messages * count
                cpu0 = cpu_seconds(pid)
                gens[0].ask(f"publish {messages} 0 100 -")
                got = wait_received(gens, expected, timeout=120)
                cpu = cpu_seconds(pid) - cpu0
                stop.set()
                if scraping:
                    scraper.join()
                if got != expected:
                    raise RuntimeError(f"scrape: expected {expected}, got {got}")
                per[scraping].append(cpu / (messages * count))
        off, on = statistics.median(per[False]), statistics.median(per[True])
        rows.append(
            emit(
                {
                    "scenario": "scrape-fanout",
                    "clients": count,
                    "rounds": rounds,
                    "cpu_ns_per_delivery_no_scrape": off * 1e9,
                    "cpu_ns_per_delivery_scraped_10_per_s": on * 1e9,
                    "change_percent": (on - off) / off * 100,
                }
            )
        )
    return rows


def _scrape_until(url: str, stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        _get(url)


# -- registrations -------------------------------------------------------------------------


def summary(row: Row) -> str | None:
    if row["scenario"] == "workers":
        return (
            f"workers   C={row['clients']:>6}  --workers {row['workers']}  "
            f"{row['connects_per_s']:>8,.0f} connects/s  "
            f"{row['delivered_per_s']:>10,.0f} delivered/s  "
            f"{row['cpu_ns_per_delivery']:>6,.0f} ns CPU/delivery  "
            f"busiest worker {row['busiest_worker_util']:.0%}, loadgens "
            f"{'/'.join(f'{u:.0%}' for u in row['loadgen_util'])}, "
            f"redis {row['redis_util']:.0%}; saturated: {row['saturated']}"
        )
    if row["scenario"] == "workers-ratio":
        return (
            f"workers   C={row['clients']:>6}  2 vs 1: "
            f"delivered/s x{row['delivered_ratio']:.2f}, "
            f"connects/s x{row['connect_ratio']:.2f}"
        )
    if row["scenario"] == "scrape":
        return (
            f"scrape    C={row['clients']:>6}  "
            f"{row['server_us_per_scrape']:,.0f} us server CPU per /metrics scrape "
            f"({row['page_bytes']:,} B page)"
        )
    if row["scenario"] == "scrape-fanout":
        return (
            f"scrape    C={row['clients']:>6}  fan-out "
            f"{row['cpu_ns_per_delivery_no_scrape']:,.0f} ns/delivery unscraped, "
            f"{row['cpu_ns_per_delivery_scraped_10_per_s']:,.0f} scraped 10/s "
            f"({row['change_percent']:+.1f} %)"
        )
    return None


@scenario(
    "workers",
    about="`roomcast serve --workers 1` vs `2` on one Redis: connects/s and fan-out",
    summary=summary,
)
def run_workers(ctx: Context, _: None) -> list[Row]:
    opts = ctx.options
    return workers([50] if opts.quick else [4000], opts.rounds, opts.quick)


@scenario(
    "scrape",
    about="a /metrics scrape at 10,000 connections; fan-out CPU with and without scraping",
    summary=summary,
)
def run_scrape(ctx: Context, _: None) -> list[Row]:
    opts = ctx.options
    return scrape(50 if opts.quick else 10_000, 100, opts.rounds, opts.quick)
