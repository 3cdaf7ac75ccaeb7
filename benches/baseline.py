"""Baseline (b): the best a pure-Python picows server can do without Rust.

`python -m benches.baseline PORT`. It speaks just enough of the protocol for the benches
(authenticate -> connected, join, heartbeat, and `publish` delivered as `bench` to a room or
to everyone) and delivers the way a careful Python author would: each message is framed once,
appended to each recipient's buffer, and every buffer is written with one `write` per event
loop iteration.
"""

from __future__ import annotations

import asyncio
import struct
import sys
import time
import uuid

import orjson
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server


def frame_text(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class Hub:
    def __init__(self) -> None:
        self.clients: dict[str, Conn] = {}
        self.rooms: dict[str, set[Conn]] = {}
        self.dirty: list[Conn] = []
        self.loop = asyncio.get_running_loop()

    def queue(self, conn: Conn, frame: bytes) -> None:
        if not conn.buffer:
            if not self.dirty:
                self.loop.call_soon(self.flush)
            self.dirty.append(conn)
        conn.buffer += frame

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            conn.write(bytes(conn.buffer))
            conn.buffer.clear()

    def deliver(self, recipients: object, payload: bytes) -> None:
        frame = frame_text(payload)
        queue = self.queue
        for conn in recipients:  # type: ignore[attr-defined]
            if conn.authenticated:
                queue(conn, frame)


class Conn(WSListener):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.id = str(uuid.uuid4())
        self.buffer = bytearray()
        self.authenticated = False
        self.last_activity = time.monotonic()
        self.rooms: set[str] = set()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.write = transport.underlying_transport.write
        self.hub.clients[self.id] = self

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.hub.clients.pop(self.id, None)
        for room in self.rooms:
            self.hub.rooms.get(room, set()).discard(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type is not WSMsgType.TEXT:
            return
        self.last_activity = time.monotonic()
        message = orjson.loads(frame.get_payload_as_memoryview())
        event = message.get("event")
        if event == "heartbeat":
            return
        hub = self.hub
        if event == "authenticate":
            self.authenticated = True
            data = {"id": self.id, "userId": str(message["data"]["token"]), "time": ""}
            hub.queue(self, frame_text(orjson.dumps({"event": "connected", "data": data})))
        elif event == "join":
            for room in message["data"]["rooms"]:
                hub.rooms.setdefault(room, set()).add(self)
                self.rooms.add(room)
        elif event == "publish":
            data = message["data"]
            payload = orjson.dumps({"event": "bench", "data": data})
            room = data.get("room")
            hub.deliver(hub.rooms.get(room, ()) if room else hub.clients.values(), payload)


async def main() -> None:
    hub = Hub()

    def factory(request: WSUpgradeRequest) -> Conn:
        return Conn(hub)

    await ws_create_server(factory, "127.0.0.1", int(sys.argv[1]), use_aiofastnet=False)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())
