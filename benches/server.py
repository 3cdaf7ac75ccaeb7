"""Bench server: roomcast with the bench protocol and an HTTP control surface.

`python -m benches.server PORT [--fanout rust|python] [--heartbeat-timeout S]
[--redis-url URL] [--encryption] [--write-delay S] [--history-rooms GLOB]
[--history-size N] [--default-gc]`. The server tunes the garbage collector once listening, as
`roomcast serve` does (`roomcast.runner.tune_gc`), unless `--default-gc`.
A custom `publish` event from a client is delivered as `bench` to `data.room`, or to
everyone. `--fanout rust` (default) uses roomcast's fan-out; `--fanout python` is baseline (a):
the same server delivering with a plain Python loop calling picows' `transport.send` per client.

Control endpoints (GET):
- `/broadcast?size=N&mode=rust|python&burst=B`: B broadcasts (default 1) of an N-byte
  payload to every authenticated client, back to back, timed inside the server.
- `/publish?room=R&count=N&size=S[&rate=RPS]`: starts sending N messages to room R with
  `helper.send()` (local delivery plus a broker publish), each carrying its send time
  (`perf_counter`) in `data.t`. Without `rate`, as fast as the broker takes them (the
  publish buffer is kept short, so nothing is dropped); with `rate`, evenly paced. Returns
  at once; `/stats` tells when it is done (`bench_publishing` 0).
- `/stats`: the hub's and the broker's counters, and the garbage collector's since start-up
  (`gc_collections` per generation, `gc_pause_ms` in all, `gc_pause_max_ms`: the longest
  stall one collection caused); `/gc-reset` starts those afresh.
- `/encrypted?mode=rust|python|inline&size=N&count=K` (with `--encryption`): K room messages
  to every encrypted client, in the background; `/result` answers `{"pending": true}` until
  they are all sealed and written to the sockets, then the timing. `rust` and `python` are
  roomcast's encrypted delivery with the built-in scheme sealing in the Rust core or in
  Python (both give the loop back every 32 recipients); `inline` is the naive baseline: the
  scheme's `outbound_transformer` called for every client of a message in one go. Meanwhile
  a 1 ms timer measures how late the event loop runs it (the stall other clients would see).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from typing import Any
from urllib.parse import parse_qs

import uvloop
from picows import WSMsgType
from roomcast import HttpRequest, HttpResponse, WebSocketClientStates, WebSocketServerHelper, _core
from roomcast.crypto import EcdhScheme
from roomcast.protocol import encode
from roomcast.serving.runner import tune_gc

from .loadgen import records

AUTHENTICATED = WebSocketClientStates.AUTHENTICATED
PROBE_INTERVAL = 0.001


def accept_any(data: dict) -> dict:
    return {"user_id": str(data.get("token", "anon"))}


def python_loop(clients: Any, event: str, data: Any) -> int:
    """Baseline (a): one transport.send per recipient, from Python."""
    frame = encode(event, data)
    count = 0
    for client in clients:
        if client.state is AUTHENTICATED:
            client.transport.send(WSMsgType.TEXT, frame)
            count += 1
    return count


class GcPauses:
    """Collections and the time each took (the loop stalls for as long), from `gc.callbacks`."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.total = 0.0
        self.longest = 0.0
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.collections[info["generation"]] += 1
        self.total += pause
        self.longest = max(self.longest, pause)

    def reset(self) -> dict[str, Any]:
        self.collections = [0, 0, 0]
        self.total = self.longest = 0.0
        return self.stats()

    def stats(self) -> dict[str, Any]:
        return {
            "gc_collections": list(self.collections),
            "gc_pause_ms": self.total * 1000,
            "gc_pause_max_ms": self.longest * 1000,
        }


GC_PAUSES = GcPauses()


def make_message_handler(helper: WebSocketServerHelper, fanout: str):
    def on_message(client_id: str, user_id: str | None, message: dict) -> None:
        if message.get("event") != "publish":
            return
        data = message.get("data")
        room = data.get("room") if isinstance(data, dict) else None
        if fanout == "rust":
            if room:
                helper.send_to_room(room, "bench", data)
            else:
                helper.broadcast("bench", data)
        elif room:
            python_loop(helper.get_clients_by_room(room), "bench", data)
        else:
            python_loop(helper.get_clients().values(), "bench", data)

    return on_message


async def publish(
    helper: WebSocketServerHelper, room: str, count: int, size: int, rate: float, state: dict
) -> None:
    pad = "x" * size
    perf = time.perf_counter
    batch = 256
    state["publishing"] = 1
    try:
        if rate > 0:
            start = perf()
            for i in range(count):
                delay = start + i / rate - perf()
                if delay > 0:
                    await asyncio.sleep(delay)
                helper.send(room, {"topic": "bench", "data": {"i": i, "t": perf(), "pad": pad}})
            return
        for first in range(0, count, batch):
            for i in range(first, min(count, first + batch)):
                helper.send(room, {"topic": "bench", "data": {"i": i, "t": perf(), "pad": pad}})
            # Measure throughput, not drops: wait while the publish buffer is long.
            while helper.stats().get("broker_queued", 0) > 8 * batch:
                await asyncio.sleep(0.0005)
            await asyncio.sleep(0)
    finally:
        state["publishing"] = 0


def traced_growth(state: dict[str, Any], by: str = "filename") -> dict[str, Any]:
    """Bytes the Python allocator gained since the last call, by file that allocated them
    (with PYTHONTRACEMALLOC=1; C extensions' PyMem/PyObject allocations are included and
    attributed to the Python frame that was running, `<unknown>` from a loop callback)."""
    import gc
    import tracemalloc

    if not tracemalloc.is_tracing():
        return {"error": "start the server with PYTHONTRACEMALLOC=1"}
    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    previous, state["snapshot"] = state.get("snapshot"), snapshot
    if previous is None:
        return {"total": sum(s.size for s in snapshot.statistics("filename"))}
    growth = snapshot.compare_to(previous, by)

    def where(d: Any) -> str:
        if by == "traceback":  # innermost frame first (PYTHONTRACEMALLOC=N keeps N frames)
            frames = reversed(d.traceback)
            return " < ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in frames)
        if by == "lineno":
            return f"{d.traceback[0].filename}:{d.traceback[0].lineno}"
        return str(d.traceback[0].filename)

    return {
        "total": sum(d.size_diff for d in growth),
        "by_file": {where(d): d.size_diff for d in growth[:16]},
    }


def make_http_handler(helper: WebSocketServerHelper):
    state: dict[str, Any] = {"publishing": 0, "tasks": set()}

    def handler(request: HttpRequest) -> HttpResponse | None:
        query = {k: v[0] for k, v in parse_qs(request.query).items()}
        if request.path == "/broadcast":
            size = int(query.get("size", "100"))
            burst = int(query.get("burst", "1"))
            # json=1: varied JSON records (what compression meets), one board per broadcast.
            boards = [{"board": records(size, i)} for i in range(burst)] if "json" in query else []
            data = {"pad": "x" * size}
            count = 0
            wall0, cpu0 = time.perf_counter(), time.process_time()
            if query.get("mode", "rust") == "rust":
                for i in range(burst):
                    count += helper.broadcast("bench", boards[i] if boards else data)
                helper.flush()
            else:
                for _ in range(burst):
                    count += python_loop(helper.get_clients().values(), "bench", data)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            return HttpResponse.json({"count": count, "wall": wall, "cpu": cpu})
        if request.path == "/publish":
            task = asyncio.get_running_loop().create_task(
                publish(
                    helper,
                    query.get("room", "bench"),
                    int(query.get("count", "1000")),
                    int(query.get("size", "100")),
                    float(query.get("rate", "0")),
                    state,
                )
            )
            state["publishing"] = 1
            state["tasks"].add(task)
            task.add_done_callback(state["tasks"].discard)
            return HttpResponse.json({"started": True})
        if request.path == "/stats":
            return HttpResponse.json(
                {**helper.stats(), **GC_PAUSES.stats(), "bench_publishing": state["publishing"]}
            )
        if request.path == "/gc-reset":
            return HttpResponse.json(GC_PAUSES.reset())
        if request.path == "/encrypted":
            results.clear()
            task = asyncio.ensure_future(
                encrypted_fanout(
                    helper,
                    query.get("mode", "rust"),
                    int(query.get("size", "100")),
                    int(query.get("count", "10")),
                )
            )
            task.add_done_callback(lambda t: results.append(t.result()))
            return HttpResponse.json({"started": True})
        if request.path == "/stall":
            results.clear()
            task = asyncio.ensure_future(
                stall_probe(
                    helper,
                    query.get("mode", "parts"),
                    int(query.get("count", "20")),
                    float(query.get("gap", "0.05")),
                )
            )
            task.add_done_callback(lambda t: results.append(t.result()))
            return HttpResponse.json({"started": True})
        if request.path == "/result":
            return HttpResponse.json(results[0] if results else {"pending": True})
        if request.path == "/tracemalloc":
            return HttpResponse.json(traced_growth(state, query.get("by", "filename")))
        return None

    results: list[dict] = []
    return handler


async def stall_probe(helper: WebSocketServerHelper, mode: str, count: int, gap: float) -> dict:
    """`count` broadcasts `gap` seconds apart to every client, with a 1 ms probe timer: how
    long the loop stalls (what any other message waits) while they are written. `parts`: the
    scheduled flush, in passes bounded by `pass_sockets` / `pass_bytes`; `whole`: each
    broadcast written to every client at once in the same callback (one pass, unbounded)."""
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    running = [True]

    def probe(due: float) -> None:
        now = time.perf_counter()
        lags.append(max(0.0, now - due))
        if running[0]:
            loop.call_later(PROBE_INTERVAL, probe, now + PROBE_INTERVAL)

    loop.call_later(PROBE_INTERVAL, probe, time.perf_counter() + PROBE_INTERVAL)
    await asyncio.sleep(0.01)
    before = helper.stats()
    recipients = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(count):
        recipients += helper.broadcast("stall", {"i": i})
        if mode == "whole":
            helper.flush()
        await asyncio.sleep(gap)
    while helper.stats()["pending_bytes"]:
        await asyncio.sleep(0.001)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    running[0] = False
    after = helper.stats()
    lags.sort()
    return {
        "mode": mode,
        "count": count,
        "recipients": recipients,
        "wall": wall,
        "cpu": cpu,
        "passes_split": after["passes_split"] - before["passes_split"],
        "max_lag": lags[-1] if lags else 0.0,
        "p99_lag": lags[int(len(lags) * 0.99)] if lags else 0.0,
        "p90_lag": lags[int(len(lags) * 0.9)] if lags else 0.0,
        # A message arriving at a random moment waits for the rest of the callback running
        # then: its mean wait is the sum of lag^2 / 2 over the wall time (the probe samples
        # above count each stall once, however long it is).
        "random_wait": sum(lag * lag for lag in lags) / 2 / wall,
        "blocked_share": sum(lags) / wall,
    }


async def encrypted_fanout(helper: WebSocketServerHelper, mode: str, size: int, count: int) -> dict:
    """`count` messages to the room every client is in, timed until all are sealed and
    written; the probe's worst lateness is the loop stall (uvloop timers have 1 ms steps)."""
    scheme = helper.encryption
    assert isinstance(scheme, EcdhScheme)
    scheme.native = mode == "rust"
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    running = [True]

    # perf_counter, not loop.time(): uvloop's clock has 1 ms steps and is cached per iteration.
    def probe(due: float) -> None:
        now = time.perf_counter()
        lags.append(max(0.0, now - due))
        if running[0]:
            loop.call_later(PROBE_INTERVAL, probe, now + PROBE_INTERVAL)

    loop.call_later(PROBE_INTERVAL, probe, time.perf_counter() + PROBE_INTERVAL)

    await asyncio.sleep(0.01)
    recipients = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(count):
        data = {"i": i, "pad": "x" * size}
        if mode == "inline":
            owners = [c for c in helper.get_clients_by_room("ws-default") if c.encrypted]
            for client in owners:
                sealed = scheme.outbound_transformer(client, "bench", data)
                client.transport.send(WSMsgType.TEXT, encode(sealed["event"], sealed["data"]))
            recipients += len(owners)
            await asyncio.sleep(0)  # one fan-out per loop iteration, flushed after it
        else:
            recipients += helper.send_to_room("ws-default", "bench", data)
    while not helper.sealing_idle:
        await asyncio.sleep(0)
    helper.flush()  # the writes belong to the delivery
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    await asyncio.sleep(0.01)
    running[0] = False
    lags.sort()
    return {
        "mode": mode,
        "count": count,
        "recipients": recipients,
        "wall": wall,
        "cpu": cpu,
        "max_lag": lags[-1] if lags else 0.0,
        "p99_lag": lags[int(len(lags) * 0.99)] if lags else 0.0,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--fanout", choices=("rust", "python"), default="rust")
    parser.add_argument("--heartbeat-timeout", type=float, default=90.0)
    parser.add_argument("--encryption", action="store_true", help="bind the built-in scheme")
    parser.add_argument("--redis-url", default="memory://")
    parser.add_argument("--write-delay", type=float, default=0.0, help="server_options write_delay")
    parser.add_argument("--history-rooms", default=None, help="server_options history_rooms")
    parser.add_argument(
        "--pass-sockets", type=int, default=None, help="server_options pass_sockets"
    )
    parser.add_argument("--pass-bytes", type=int, default=None, help="server_options pass_bytes")
    parser.add_argument("--history-size", type=int, default=100)
    parser.add_argument(
        "--per-message-deflate", action="store_true", help="server_options per_message_deflate"
    )
    parser.add_argument("--deflate-level", type=int, default=_core.DEFAULT_DEFLATE_LEVEL)
    parser.add_argument(
        "--default-gc", action="store_true", help="keep CPython's GC settings (no tune_gc)"
    )
    args = parser.parse_args()
    options: dict[str, Any] = {
        "idle_timeout": 0,
        "write_delay": args.write_delay,
        "per_message_deflate": args.per_message_deflate,
        "deflate_level": args.deflate_level,
    }
    for name in ("pass_sockets", "pass_bytes"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.history_rooms:
        options.update(history_rooms=args.history_rooms, history_size=args.history_size)
    helper = WebSocketServerHelper(
        "bench",
        "/ws",
        args.redis_url,
        accept_any,
        validate_room_fn=lambda client_id, user_id, rooms: rooms,
        heartbeat_timeout=args.heartbeat_timeout,
        encryption=EcdhScheme() if args.encryption else None,
        server_options=options,
    )
    helper.message_handler = make_message_handler(helper, args.fanout)
    await helper.serve("127.0.0.1", args.port, make_http_handler(helper))
    if not args.default_gc:
        tune_gc()  # as `roomcast serve` and `helper.run` do once listening
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())
