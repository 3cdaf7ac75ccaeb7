"""An echo application on roomcast's own connection layer, for the Autobahn|Testsuite.

It is the server's code path with the session left out: `roomcast.transport.http.WebServer` (upgrade
checks, permessage-deflate negotiation), `roomcast.transport.connection.Client` (reserved bits,
fragments, inflation, size limits, close handling) and the Rust hub's frames (text echoes
go out through `Hub.send`, compressed once when the client negotiated it). Text messages
are checked for UTF-8 with `roomcast.protocol.messages.decode`, as the server checks them.

Run: python3 tests/autobahn/echo.py PORT [--max-payload-length N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import uuid
from typing import Any

import uvloop
from picows import WSListener, WSMsgType, WSTransport
from roomcast import _core
from roomcast.config import resolve_server_options
from roomcast.protocol.constants import CloseCode
from roomcast.protocol.counters import Counters
from roomcast.protocol.messages import InvalidText, decode
from roomcast.transport.connection import Client, Links
from roomcast.transport.http import WebServer


class Echo:
    """A `roomcast.ports.Route` whose connections echo every message back."""

    def __init__(self, max_payload_length: int) -> None:
        loop = asyncio.get_running_loop()
        self.server_options = resolve_server_options(
            {"per_message_deflate": True, "max_payload_length": max_payload_length}
        )
        self.hub = _core.Hub(
            loop.call_soon,
            backpressure_limit=1 << 30,
            deflate_threshold=int(self.server_options["deflate_threshold"]),
        )
        self.links = Links(
            self.hub,
            Counters(),
            max_payload_length,
            self._on_connect,
            self._on_message,
            self._on_disconnect,
            lambda client: None,
        )
        self.links.loop = loop

    def get_path(self) -> str:
        return "/"

    def accept(self, deflate_window: int = 0) -> WSListener:
        client = Client(self.links, str(uuid.uuid4()))
        client.deflate_window = deflate_window
        return client

    def _on_connect(self, client: Client, transport: WSTransport) -> None:
        client.handle = self.hub.add(client.id, transport.underlying_transport.write, client)
        if client.deflate_window:
            self.hub.set_deflate(client.handle, client.deflate_window)

    def _on_message(self, client: Client, payload: Any, is_text: bool) -> None:
        if is_text:
            try:
                decode(payload, True)
            except InvalidText:
                client.close(CloseCode.INVALID_TEXT, CloseCode.REASONS[CloseCode.INVALID_TEXT])
                return
            except Exception:
                pass  # not JSON: fine for an echo
            self.hub.send(client.handle, bytes(payload))
        else:
            self.hub.flush_one(client.handle)  # keep the order with queued text echoes
            assert client.transport is not None
            client.transport.send(WSMsgType.BINARY, bytes(payload))

    def _on_disconnect(self, client: Client) -> None:
        self.hub.remove(client.handle)


async def main(port: int, max_payload_length: int) -> None:
    server = WebServer("127.0.0.1", port)
    server.route(Echo(max_payload_length))
    await server.start()
    print(f"echo listening on 127.0.0.1:{server.bound_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("--max-payload-length", type=int, default=16 << 20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    uvloop.run(main(args.port, args.max_payload_length))
