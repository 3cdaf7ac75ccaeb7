"""`api`: the server HTTP API on `roomcast serve --api-key` with Redis: how many messages
per second one process takes through `POST /api/publish` (one message a request) and through
`POST /api/batch` (B messages a request), and the server's CPU per request and per message,
every message delivered to the subscribers of one room (counted, none lost).

The load generator (`benches/apiload.py`) keeps W requests in flight on each of K keep-alive
connections. Server CPU is the serving process's (user + system) over the run; the rows also
give the load generator's CPU and who saturated.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .harness import (
    HERE,
    Row,
    cpu_seconds,
    emit,
    joined,
    received,
    redis_server,
    saturated_side,
    wait_received,
    wait_subscribed,
)
from .registry import Context, scenario
from .serving import roomcast_serve

KEY = "bench-api-key"
ROOM = "api-bench"
BATCH = 100
CONNECTIONS = 4
WINDOW = 16


def load(port: int, path: str, body: dict[str, Any], requests: int) -> dict[str, Any]:
    """Run the HTTP load generator to its end; its report."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
        json.dump(body, file)
    try:
        sizes = [str(requests), str(CONNECTIONS), str(WINDOW)]
        done = subprocess.run(
            [sys.executable, "-m", "benches.apiload", str(port), KEY, path, file.name, *sizes],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
    finally:
        Path(file.name).unlink()
    return dict(json.loads(done.stdout.splitlines()[-1]))


def _summary(row: Row) -> str | None:
    if row["scenario"] == "api":
        return (
            f"api {row['mode']}: {row['messages_per_s']:,.0f} messages/s "
            f"({row['requests_per_s']:,.0f} requests/s), server CPU "
            f"{row['cpu_us_per_request']:.1f} us/request, {row['cpu_us_per_message']:.2f} "
            f"us/message, lost {row['lost']}, saturated: {row['saturated']}"
        )
    if row["scenario"] == "api-ratio":
        return (
            f"api batch/single: CPU per message {row['cpu_per_message']:.3f}x, "
            f"messages/s {row['messages_per_s']:.2f}x"
        )
    return None


@scenario(
    "api",
    about="publishing through the HTTP API (one message a request vs /api/batch of 100): "
    "messages/s and server CPU per request and per message",
    summary=_summary,
)
def run_api(ctx: Context, _server: None) -> list[Row]:
    quick = ctx.options.quick
    messages = 2_000 if quick else 40_000
    subscribers = 1  # the API path itself, not the fan-out behind it
    rows: list[Row] = []
    with redis_server() as redis_url, ExitStack() as stack:
        port, pids = stack.enter_context(roomcast_serve(1, redis_url, "--api-key", KEY))
        (pid,) = pids
        gens = joined(stack, port, subscribers, ROOM)
        wait_subscribed(redis_url, {f"ws:room:{ROOM}": 1})
        message = {"room": ROOM, "event": "bench", "data": {"n": 1, "text": "x" * 64}}
        for mode in ("single", "batch"):
            if mode == "single":
                path, body, requests = "/api/publish", message, messages
            else:
                commands = [{"publish": message}] * BATCH
                path, body, requests = "/api/batch", {"commands": commands}, messages // BATCH
            before = received(gens)
            cpu0, wall0 = cpu_seconds(pid), time.monotonic()
            report = load(port, path, body, requests)
            expected = before + messages * subscribers
            got = wait_received(gens, expected)
            cpu = cpu_seconds(pid) - cpu0
            wall = time.monotonic() - wall0
            seconds = report["seconds"]
            row = {
                "scenario": "api",
                "mode": mode,
                "messages": messages,
                "requests": requests,
                "subscribers": subscribers,
                "connections": CONNECTIONS,
                "window": WINDOW,
                "seconds": round(seconds, 3),
                "requests_per_s": requests / seconds,
                "messages_per_s": messages / seconds,
                "cpu_us_per_request": cpu / requests * 1e6,
                "cpu_us_per_message": cpu / messages * 1e6,
                "loadgen_cpu_s": round(report["cpu"], 3),
                "failed": report["failed"],
                "lost": expected - got,
                "saturated": saturated_side(cpu / wall, [report["cpu"] / seconds]),
            }
            if report["failed"] or report["answered"] != requests:
                raise RuntimeError(f"api {mode}: {report}")
            rows.append(emit(row))
    single, batch = rows
    ratio = {
        "scenario": "api-ratio",
        "cpu_per_message": batch["cpu_us_per_message"] / single["cpu_us_per_message"],
        "messages_per_s": batch["messages_per_s"] / single["messages_per_s"],
    }
    return [*rows, emit(ratio)]
