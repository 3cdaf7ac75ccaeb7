"""Load generator: many picows WebSocket clients in one process, driven over stdin/stdout.

`python -m benches.loadgen URL COUNT [--heartbeat S] [--token-prefix P] [--latency]`
connects COUNT clients, authenticates each, prints one JSON line `{"ready": COUNT}`, then
answers each stdin line: `count` -> `{"received", "min", "max", "closed", "bad", "last"}`
(`last`: perf_counter of the latest message); `join R1,R2`
puts client i in room R[i % n]; `publish N RATE SIZE ROOMS` makes the first client send N
`publish` events (see `publish`); `latency` -> p50/p99 of the messages timed since the last
`latency` (with --latency, messages whose data carries `t`, the sender's perf_counter on the
same host, are timed); `quit` exits. With --encrypted every client offers a public key (the
built-in scheme) and client 0 decrypts what it receives (`count` reports failures as `bad`).
With --deflate every client offers permessage-deflate and client 0 inflates what arrives
compressed (failures are `bad`); `count` also reports `bytes`, the wire bytes received.
`publish N RATE SIZE ROOMS json` sends about SIZE bytes of varied JSON records instead of
SIZE bytes of padding (what compression meets in practice).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import zlib

import orjson
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from roomcast.crypto import EcdhClient

# perf_counter of the latest message any client received (comparable across processes).
last_received = [0.0]


class BenchClient(WSListener):
    def __init__(self, index: int, crypto: EcdhClient | None = None, inflate: bool = False) -> None:
        self.index = index
        self.crypto = crypto
        self.inflate = inflate
        self.bad = 0
        self.received = 0
        self.bytes = 0
        self.transport: WSTransport | None = None
        self.connected: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
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
        size = frame.payload_size
        self.bytes += size + (2 if size < 126 else 4 if size < 65536 else 10)
        if frame.rsv1:
            self.received += 1
            last_received[0] = time.perf_counter()
            if self.inflate:  # only client 0 pays for checking compressed messages
                try:
                    payload = zlib.decompressobj(wbits=-15).decompress(
                        frame.get_payload_as_bytes() + b"\x00\x00\xff\xff"
                    )
                    orjson.loads(payload)
                except Exception:
                    self.bad += 1
            return
        if not self.connected.done():
            message = orjson.loads(frame.get_payload_as_memoryview())
            if message.get("event") == "connected":
                if self.crypto is not None:
                    self.crypto.complete(message["data"])
                self.connected.set_result(message["data"])
            return
        self.received += 1
        last_received[0] = time.perf_counter()
        if self.crypto is not None:
            try:
                self.crypto.decrypt(orjson.loads(frame.get_payload_as_memoryview()))
            except Exception:
                self.bad += 1
        if self.latencies is not None:
            data = orjson.loads(frame.get_payload_as_memoryview()).get("data")
            if isinstance(data, dict) and "t" in data:
                self.latencies.append(time.perf_counter() - data["t"])


async def connect_many(
    url: str,
    count: int,
    token_prefix: str,
    clients: list[BenchClient],
    concurrency: int = 200,
    encrypted: bool = False,
    times: list[float] | None = None,
    deflate: bool = False,
) -> None:
    """Connect and authenticate `count` clients, appending each to `clients` once connected
    (and to `times` how long each took, from opening its socket to `connected`)."""
    # One key pair for every client (the server's salt still gives each its own key);
    # only client 0 keeps the crypto to decrypt what it receives.
    shared = EcdhClient() if encrypted else None
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            started = time.perf_counter()
            crypto = None
            if shared is not None and i == 0:
                crypto = EcdhClient(private_key=shared.private_key)
            client = BenchClient(i, crypto, inflate=deflate and i == 0)
            transport, _ = await ws_connect(
                lambda: client,
                url,
                use_aiofastnet=False,
                enable_auto_pong=True,
                extra_headers={"Sec-WebSocket-Extensions": "permessage-deflate"}
                if deflate
                else None,
            )
            data: dict[str, str] = {"type": "Bearer", "token": f"{token_prefix}{i}"}
            if shared is not None:
                data["publicKey"] = shared.public_key
            auth = {"event": "authenticate", "data": data}
            transport.send(WSMsgType.TEXT, orjson.dumps(auth))
            await asyncio.wait_for(client.connected, 30)
            clients.append(client)
            if times is not None:
                times.append(time.perf_counter() - started)

    await asyncio.gather(*(one(i) for i in range(count)))


async def heartbeats(clients: list[BenchClient], interval: float) -> None:
    """Every connected client sends a heartbeat every `interval`, from its connection on."""
    message = orjson.dumps({"event": "heartbeat"})
    while True:
        started = time.monotonic()
        for client in list(clients):
            if client.transport is not None and client.closed is None:
                client.transport.send(WSMsgType.TEXT, message)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


def records(size: int, seed: int) -> list[dict[str, object]]:
    """About `size` bytes of JSON records, different for each `seed` (a scoreboard)."""
    out: list[dict[str, object]] = []
    length = 2
    i = 0
    while length < size:
        record = {
            "id": seed * 1000 + i,
            "name": f"player-{(seed * 7 + i * 13) % 997}",
            "score": (seed * 7919 + i * 104729) % 100000,
            "online": (seed + i) % 3 != 0,
        }
        out.append(record)
        length += len(orjson.dumps(record)) + 1
        i += 1
    return out


async def publish(
    client: BenchClient, count: str, rate: str, size: str, rooms: str, kind: str = "pad"
) -> int:
    """Send `count` publish events (rate per second, 0 = as fast as possible), each carrying
    its send time for latency, to the rooms round-robin (`-` = broadcast); `kind` "json":
    varied JSON records of about `size` bytes instead of padding."""
    assert client.transport is not None
    send, pad = client.transport.send, "x" * int(size)
    boards = [records(int(size), seed) for seed in range(16)] if kind == "json" else None
    targets = rooms.split(",") if rooms != "-" else [None]
    interval = 1 / float(rate) if float(rate) > 0 else 0.0
    next_at = time.perf_counter()
    for i in range(int(count)):
        data: dict[str, object] = {"t": time.perf_counter()}
        if boards is not None:
            data["board"] = boards[i % len(boards)]
        else:
            data["pad"] = pad
        room = targets[i % len(targets)]
        if room is not None:
            data["room"] = room
        send(WSMsgType.TEXT, orjson.dumps({"event": "publish", "data": data}))
        if interval:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        elif i % 64 == 63:
            await asyncio.sleep(0)
    return int(count)


def report(clients: list[BenchClient]) -> dict[str, object]:
    counts = [c.received for c in clients]
    return {
        "received": sum(counts),
        "min": min(counts, default=0),
        "max": max(counts, default=0),
        "closed": sum(1 for c in clients if c.closed is not None),
        "bad": sum(c.bad for c in clients),
        "bytes": sum(c.bytes for c in clients),
        "last": last_received[0],
    }


def latency_report(clients: list[BenchClient]) -> dict[str, object]:
    """p50/p99 of the latencies recorded since the last call, which it forgets."""
    samples = sorted(x for c in clients for x in (c.latencies or ()))
    for c in clients:
        c.latencies = []
    out: dict[str, object] = {"samples": len(samples)}
    if samples:
        out["p50"] = samples[len(samples) // 2]
        out["p99"] = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("count", type=int)
    parser.add_argument("--heartbeat", type=float, default=0.0)
    parser.add_argument("--token-prefix", default="user:u")
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--encrypted", action="store_true")
    parser.add_argument("--deflate", action="store_true", help="offer permessage-deflate")
    args = parser.parse_args()

    loop = asyncio.get_running_loop()
    clients: list[BenchClient] = []
    beat = loop.create_task(heartbeats(clients, args.heartbeat)) if args.heartbeat > 0 else None
    started = time.perf_counter()
    times: list[float] = []
    await connect_many(
        args.url,
        args.count,
        args.token_prefix,
        clients,
        encrypted=args.encrypted,
        times=times,
        deflate=args.deflate,
    )
    connect_seconds = time.perf_counter() - started
    times.sort()
    if args.latency:
        for client in clients:
            client.latencies = []

    ready = {
        "ready": len(clients),
        "seconds": connect_seconds,
        "p50": times[len(times) // 2] if times else 0.0,
        "p99": times[min(len(times) - 1, len(times) * 99 // 100)] if times else 0.0,
    }
    print(orjson.dumps(ready).decode(), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            break
        command, *params = line.split()
        if command == "count":
            print(orjson.dumps(report(clients)).decode(), flush=True)
        elif command == "latency":
            print(orjson.dumps(latency_report(clients)).decode(), flush=True)
        elif command == "join":
            rooms = params[0].split(",")
            for client in clients:
                join = {"event": "join", "data": {"rooms": [rooms[client.index % len(rooms)]]}}
                assert client.transport is not None
                client.transport.send(WSMsgType.TEXT, orjson.dumps(join))
            print(orjson.dumps({"joined": len(clients)}).decode(), flush=True)
        elif command == "publish":
            sent = await publish(clients[0], *params)
            print(orjson.dumps({"sent": sent}).decode(), flush=True)
    if beat is not None:
        beat.cancel()
    for client in clients:
        if client.transport is not None:
            client.transport.disconnect()


if __name__ == "__main__":
    uvloop.run(main())
