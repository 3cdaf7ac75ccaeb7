"""Bench server: roomcast with an HTTP control surface for the runner.

`python -m benches.server PORT [--heartbeat-timeout S]`. Control endpoints (GET):
- `/broadcast?size=N&mode=rust|python&burst=B`: B broadcasts (default 1) of an N-byte
  payload to every authenticated client, back to back, timed inside the server. `rust` is
  roomcast's fan-out (queued, then flushed at once); `python` is the baseline: the same
  frame sent with a plain Python loop calling picows' `transport.send` per client.
- `/stats`: the hub's counters.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from urllib.parse import parse_qs

import uvloop
from picows import WSMsgType
from roomcast import HttpRequest, HttpResponse, WebSocketClientStates, WebSocketServerHelper
from roomcast.protocol import encode


def accept_any(data: dict) -> dict:
    return {"user_id": str(data.get("token", "anon"))}


def make_handler(helper: WebSocketServerHelper):
    def handler(request: HttpRequest) -> HttpResponse | None:
        query = {k: v[0] for k, v in parse_qs(request.query).items()}
        if request.path == "/broadcast":
            data = {"pad": "x" * int(query.get("size", "100"))}
            mode = query.get("mode", "rust")
            burst = int(query.get("burst", "1"))
            count = 0
            wall0, cpu0 = time.perf_counter(), time.process_time()
            if mode == "rust":
                for _ in range(burst):
                    count += helper.broadcast("bench", data)
                helper._hub.flush()
            else:
                for _ in range(burst):
                    frame = encode("bench", data)
                    for client in helper._clients.values():
                        if client.state is WebSocketClientStates.AUTHENTICATED:
                            client.transport.send(WSMsgType.TEXT, frame)
                            count += 1
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            return HttpResponse.json({"count": count, "wall": wall, "cpu": cpu})
        if request.path == "/stats":
            return HttpResponse.json(helper.stats())
        return None

    return handler


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--heartbeat-timeout", type=float, default=90.0)
    args = parser.parse_args()
    helper = WebSocketServerHelper(
        "bench",
        "/ws",
        "memory://",
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
