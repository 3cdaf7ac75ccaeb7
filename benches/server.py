"""Bench server: roomcast with an HTTP control surface for the runner.

`python -m benches.server PORT [--heartbeat-timeout S] [--redis-url URL]`. Control endpoints
(GET):
- `/broadcast?size=N&mode=rust|python`: one broadcast of an N-byte payload to every
  authenticated client, timed inside the server. `rust` is roomcast's fan-out (queued, then
  flushed at once); `python` is the baseline: the same frame sent with a plain Python loop
  calling picows' `transport.send` per client.
- `/publish?room=R&count=N&size=S[&rate=RPS]`: starts sending N messages to room R with
  `helper.send()` (local delivery plus a Redis publish), each carrying its send time
  (`perf_counter`) in `data.t`. Without `rate`, as fast as the broker takes them (the
  publish buffer is kept short, so nothing is dropped); with `rate`, evenly paced. Returns
  at once; `/stats` tells when it is done (`bench_publishing` 0).
- `/stats`: the hub's and the broker's counters.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any
from urllib.parse import parse_qs

import uvloop
from picows import WSMsgType
from roomcast import HttpRequest, HttpResponse, WebSocketClientStates, WebSocketServerHelper
from roomcast.protocol import encode


def accept_any(data: dict) -> dict:
    return {"user_id": str(data.get("token", "anon"))}


async def publish(
    helper: WebSocketServerHelper, room: str, count: int, size: int, rate: float, state: dict
) -> None:
    broker: Any = helper._broker
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
        stats = getattr(broker, "stats", None)
        for first in range(0, count, batch):
            for i in range(first, min(count, first + batch)):
                helper.send(room, {"topic": "bench", "data": {"i": i, "t": perf(), "pad": pad}})
            # Measure throughput, not drops: wait while the publish buffer is long.
            while stats is not None and stats()["queued"] > 8 * batch:
                await asyncio.sleep(0.0005)
            await asyncio.sleep(0)
    finally:
        state["publishing"] = 0


def make_handler(helper: WebSocketServerHelper):
    state: dict[str, Any] = {"publishing": 0, "tasks": set()}

    def handler(request: HttpRequest) -> HttpResponse | None:
        query = {k: v[0] for k, v in parse_qs(request.query).items()}
        if request.path == "/broadcast":
            data = {"pad": "x" * int(query.get("size", "100"))}
            mode = query.get("mode", "rust")
            wall0, cpu0 = time.perf_counter(), time.process_time()
            if mode == "rust":
                count = helper.broadcast("bench", data)
                helper._hub.flush()
            else:
                frame = encode("bench", data)
                count = 0
                for client in helper._clients.values():
                    if client.state is WebSocketClientStates.AUTHENTICATED:
                        client.transport.send(WSMsgType.TEXT, frame)
                        count += 1
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
            return HttpResponse.json({**helper.stats(), "bench_publishing": state["publishing"]})
        return None

    return handler


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--heartbeat-timeout", type=float, default=90.0)
    parser.add_argument("--redis-url", default="memory://")
    args = parser.parse_args()
    helper = WebSocketServerHelper(
        "bench",
        "/ws",
        args.redis_url,
        accept_any,
        validate_room_fn=lambda client_id, user_id, rooms: rooms,
        heartbeat_timeout=args.heartbeat_timeout,
        server_options={"idle_timeout": 0},
    )
    await helper.serve("127.0.0.1", args.port, make_handler(helper))
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())
