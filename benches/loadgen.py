"""Load generator: many picows WebSocket clients in one process, driven over stdin/stdout.

Run as `python -m benches.loadgen URL COUNT [--heartbeat S] [--rooms a,b] [--token-prefix P]`.
It connects COUNT clients, authenticates each, prints one JSON line `{"ready": COUNT}`, then
answers each stdin line: `count` -> `{"received": n, "min": m, "max": m, "closed": n,
"last": t}` (`last`: perf_counter of the latest message, comparable across processes on one
host), `latency` -> `{"latencies": n, "p50": s, "p99": s}` of the timed messages received
since the last `latency` (with `--latency`), `quit` -> exits.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import orjson
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

# perf_counter of the latest message any client received.
last_received = [0.0]


class BenchClient(WSListener):
    __slots__ = ("closed", "connected", "index", "latencies", "received", "transport")

    def __init__(self, index: int) -> None:
        self.index = index
        self.received = 0
        self.transport: WSTransport | None = None
        self.connected = asyncio.get_running_loop().create_future()
        self.closed: int | None = None
        self.latencies: list[float] | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            self.closed = int(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type is not WSMsgType.TEXT:
            return
        if not self.connected.done():
            message = orjson.loads(frame.get_payload_as_memoryview())
            if message.get("event") == "connected":
                self.connected.set_result(message["data"])
            return
        self.received += 1
        last_received[0] = time.perf_counter()
        if self.latencies is not None:
            # Timed messages carry the send time (perf_counter on the same host) in "t".
            payload = frame.get_payload_as_memoryview()
            message = orjson.loads(payload)
            sent = (
                message.get("data", {}).get("t") if isinstance(message.get("data"), dict) else None
            )
            if sent is not None:
                self.latencies.append(time.perf_counter() - sent)


async def connect_many(
    url: str, count: int, token_prefix: str, concurrency: int = 200
) -> list[BenchClient]:
    clients: list[BenchClient] = []
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            client_holder: list[BenchClient] = []

            def factory() -> BenchClient:
                client = BenchClient(i)
                client_holder.append(client)
                return client

            transport, _ = await ws_connect(
                factory, url, use_aiofastnet=False, enable_auto_pong=True
            )
            client = client_holder[0]
            transport.send(
                WSMsgType.TEXT,
                orjson.dumps(
                    {
                        "event": "authenticate",
                        "data": {"type": "Bearer", "token": f"{token_prefix}{i}"},
                    }
                ),
            )
            await asyncio.wait_for(client.connected, 30)
            clients.append(client)

    await asyncio.gather(*(one(i) for i in range(count)))
    return clients


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("count", type=int)
    parser.add_argument("--heartbeat", type=float, default=0.0)
    parser.add_argument("--rooms", default="")
    parser.add_argument("--token-prefix", default="user:u")
    parser.add_argument("--latency", action="store_true")
    args = parser.parse_args()

    clients = await connect_many(args.url, args.count, args.token_prefix)
    if args.rooms:
        join = orjson.dumps({"event": "join", "data": {"rooms": args.rooms.split(",")}})
        for client in clients:
            assert client.transport is not None
            client.transport.send(WSMsgType.TEXT, join)
    if args.latency:
        for client in clients:
            client.latencies = []
    heartbeat = orjson.dumps({"event": "heartbeat"})

    async def heartbeats() -> None:
        # Spread heartbeats evenly over the interval.
        while True:
            step = args.heartbeat / max(len(clients), 1)
            for client in clients:
                if client.transport is not None and client.closed is None:
                    client.transport.send(WSMsgType.TEXT, heartbeat)
                await asyncio.sleep(step) if step > 0.001 else None
            if step <= 0.001:
                await asyncio.sleep(args.heartbeat)

    if args.heartbeat > 0:
        asyncio.get_running_loop().create_task(heartbeats())

    print(orjson.dumps({"ready": len(clients)}).decode(), flush=True)
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            break
        if line == "count":
            counts = [c.received for c in clients]
            report: dict[str, object] = {
                "received": sum(counts),
                "min": min(counts, default=0),
                "max": max(counts, default=0),
                "closed": sum(1 for c in clients if c.closed is not None),
                "last": last_received[0],
            }
            print(orjson.dumps(report).decode(), flush=True)
        elif line == "latency":
            lat = sorted(x for c in clients for x in (c.latencies or ()))
            report = {"latencies": len(lat)}
            if lat:
                report["p50"] = lat[len(lat) // 2]
                report["p99"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            for c in clients:
                c.latencies = [] if args.latency else None
            print(orjson.dumps(report).decode(), flush=True)
    for client in clients:
        if client.transport is not None:
            client.transport.disconnect()


if __name__ == "__main__":
    uvloop.run(main())
