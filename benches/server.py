"""Bench server: roomcast with the bench protocol and an HTTP control surface.

`python -m benches.server PORT [--fanout rust|python] [--heartbeat-timeout S]`.
A custom `publish` event from a client is delivered as `bench` to `data.room`, or to
everyone. `--fanout rust` (default) uses roomcast's fan-out; `--fanout python` is baseline (a):
the same server delivering with a plain Python loop calling picows' `transport.send` per client.

Control endpoints (GET):
- `/broadcast?size=N&mode=rust|python&burst=B`: B broadcasts (default 1) of an N-byte
  payload to every authenticated client, back to back, timed inside the server.
- `/stats`: the hub's counters.
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

AUTHENTICATED = WebSocketClientStates.AUTHENTICATED


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
            python_loop(helper._clients.values(), "bench", data)

    return on_message


def make_http_handler(helper: WebSocketServerHelper):
    def handler(request: HttpRequest) -> HttpResponse | None:
        query = {k: v[0] for k, v in parse_qs(request.query).items()}
        if request.path == "/broadcast":
            data = {"pad": "x" * int(query.get("size", "100"))}
            burst = int(query.get("burst", "1"))
            count = 0
            wall0, cpu0 = time.perf_counter(), time.process_time()
            if query.get("mode", "rust") == "rust":
                for _ in range(burst):
                    count += helper.broadcast("bench", data)
                helper._hub.flush()
            else:
                for _ in range(burst):
                    count += python_loop(helper._clients.values(), "bench", data)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            return HttpResponse.json({"count": count, "wall": wall, "cpu": cpu})
        if request.path == "/stats":
            return HttpResponse.json(helper.stats())
        return None

    return handler


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--fanout", choices=("rust", "python"), default="rust")
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
    helper.message_handler = make_message_handler(helper, args.fanout)
    await helper.serve("127.0.0.1", args.port, make_http_handler(helper))
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())
