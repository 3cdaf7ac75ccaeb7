"""Where an idle authenticated connection's memory goes, layer by layer.

`python -m benches.memory [--clients 2000] [--redis] [--servers roomcast,roomcast-traced]`

Measures the server's RSS per connection (first `clients` connections, then the marginal
cost of as many more) for servers that each add one layer:

- `uvloop`: a bare uvloop `asyncio.Protocol` that upgrades by hand and answers the first
  frame with a `connected` text frame (the transport and a minimal protocol object);
- `picows`: a bare picows server doing the same, with picows' default read buffer;
- `picows-2k`: the same with the read buffer roomcast asks for (picows' 2 KB minimum);
- `roomcast`: the bench server (benches/server.py): authenticated clients, Client records,
  the hub's registry, rooms and user index;
- `roomcast-traced`: the same under tracemalloc, for the Python-level growth by file (its
  RSS includes tracemalloc's own bookkeeping, so only the by-file split is reported).

Clients are the compiled load generator's (benches/loadgen-go), in another process. With
`--redis` the roomcast servers run on a redis-server of their own (Redis interest mode: one
subscription per client's own-id channel and per user), as a production node does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from typing import Any

from .compiled import compiled_loadgen
from .harness import HERE, LoadGen, free_port, http_json, redis_server, rss_bytes

CONNECTED = b'{"event":"connected","data":{}}'
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class BareWS(asyncio.Protocol):
    """An upgrade by hand, then one `connected` frame after the first client frame."""

    __slots__ = ("state", "transport")

    def connection_made(self, transport: Any) -> None:
        self.transport = transport  # uvloop's TCPTransport (not an asyncio.Transport subclass)
        self.state = 0

    def data_received(self, data: bytes) -> None:
        if self.state == 0:
            key = next(
                line.split(b":", 1)[1].strip()
                for line in data.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.state = 1
        elif self.state == 1:
            self.transport.write(bytes([0x81, len(CONNECTED)]) + CONNECTED)
            self.state = 2


def serve_bare(kind: str, port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if kind == "uvloop":
            await loop.create_server(BareWS, "127.0.0.1", port, backlog=4096)
        else:
            from picows import WSListener, WSMsgType, ws_create_server

            class Listener(WSListener):
                __slots__ = ("done",)

                def on_ws_frame(self, transport, frame) -> None:  # type: ignore[no-untyped-def]
                    if not getattr(self, "done", False):
                        self.done = True
                        transport.send(WSMsgType.TEXT, CONNECTED)

            kwargs = {"read_buffer_init_size": 1024} if kind == "picows-2k" else {}
            await ws_create_server(lambda _r: Listener(), "127.0.0.1", port, **kwargs)
        print("ready", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def measure(
    kind: str, clients: int, redis_url: str | None = None, trace_depth: int = 1
) -> dict[str, object]:
    port = free_port()
    env = dict(os.environ)
    if kind.startswith("roomcast"):
        command = [sys.executable, "-m", "benches.server", str(port)]
        if redis_url is not None:
            command += ["--redis-url", redis_url]
        if kind == "roomcast-traced":
            env["PYTHONTRACEMALLOC"] = str(trace_depth)
    else:
        command = [sys.executable, "-m", "benches.memory", "--serve", kind, str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=HERE.parent, env=env)
    binary = compiled_loadgen()
    gens: list[LoadGen] = []
    try:
        assert proc.stdout is not None
        while proc.stdout.readline().strip() != "ready":
            pass
        url = f"ws://127.0.0.1:{port}/ws"
        if kind == "roomcast-traced":
            http_json(port, "/tracemalloc")
        rss = [rss_bytes(proc.pid)]
        traced = []
        for index in range(2):
            # Source addresses of their own (127.0.0.10.., 127.0.0.30..), 5,000 clients each:
            # 2 x 20,000 from one address would run out of ephemeral ports.
            sources = (
                ("--sources", str(-(-clients // 5000)), "--source-first", str(10 + 20 * index))
                if binary is not None
                else ()
            )
            gen = LoadGen(
                url, clients, "--token-prefix", f"user:m{index}-", *sources, binary=binary
            )
            gens.append(gen)
            if gen.ready() != clients:
                raise RuntimeError(f"{kind}: not every client connected")
            time.sleep(1.0)
            rss.append(rss_bytes(proc.pid))
            if kind == "roomcast-traced":
                by = "traceback" if trace_depth > 1 else "lineno"
                traced.append(http_json(port, f"/tracemalloc?by={by}"))
        row: dict[str, object] = {
            "server": kind,
            "clients": clients,
            "broker": "redis" if redis_url is not None and kind.startswith("roomcast") else "-",
            "rss_kb_per_connection": (rss[1] - rss[0]) / clients / 1024,
            "marginal_kb_per_connection": (rss[2] - rss[1]) / clients / 1024,
        }
        if traced:
            row["python_bytes_per_connection"] = traced[1]["total"] / clients
            row["python_by_file"] = {
                name: round(size / clients) for name, size in traced[1]["by_file"].items()
            }
        print(json.dumps(row), flush=True)
        return row
    finally:
        for gen in gens:
            gen.stop()
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--redis", action="store_true", help="roomcast on a redis-server")
    parser.add_argument(
        "--trace-depth", type=int, default=1, help="frames per allocation (>1: by traceback)"
    )
    parser.add_argument("--servers", default="uvloop,picows,picows-2k,roomcast,roomcast-traced")
    args = parser.parse_args()
    if args.serve:
        serve_bare(args.serve[0], int(args.serve[1]))
        return
    kinds = args.servers.split(",")
    rows = []
    for kind in kinds:
        if args.redis and kind.startswith("roomcast"):
            with redis_server() as url:
                rows.append(measure(kind, args.clients, url, args.trace_depth))
        else:
            rows.append(measure(kind, args.clients, trace_depth=args.trace_depth))
    print()
    for row in rows:
        print(
            f"{row['server']:<16} {row['rss_kb_per_connection']:6.2f} KB per connection, "
            f"marginal {row['marginal_kb_per_connection']:6.2f} KB"
        )
    traced = rows[-1]
    if "python_by_file" not in traced:
        return
    print(f"roomcast Python-level growth: {traced['python_bytes_per_connection']:,.0f} B/conn")
    for name, size in traced["python_by_file"].items():  # type: ignore[union-attr]
        print(f"  {size:>6,} B  {name}")


if __name__ == "__main__":
    main()
