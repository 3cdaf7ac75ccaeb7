"""An encrypted chat room: roomcast's built-in ECDH scheme and a browser page that speaks it.

Run `python examples/encrypted_chat.py [PORT]`, then open http://127.0.0.1:8080/?token=alice
(and another tab with ?token=bob). Every client must complete the handshake
(`require_encryption`); what a client sends as an encrypted `chat` event is decrypted by the
server and sent to the room `ws-default`, sealed again for each member with its own key.
Any non-empty token is accepted as the user id: a demo, not an authenticator.
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvloop
from roomcast import HttpRequest, HttpResponse, WebServer, WebSocketServerHelper
from roomcast.crypto import EcdhScheme

PAGE = Path(__file__).with_name("encrypted_client.html")
CLIENT = Path(__file__).resolve().parents[1] / "clients" / "js" / "src" / "roomcast.js"


def page_handler(request: HttpRequest) -> HttpResponse | None:
    """Serves the client page at `/` and the JavaScript client it imports at `/roomcast.js`;
    anything else is a 404."""
    if request.method != "GET":
        return None
    if request.path in ("/", "/index.html"):
        return HttpResponse(200, PAGE.read_bytes(), {"Content-Type": "text/html; charset=utf-8"})
    if request.path == "/roomcast.js":
        return HttpResponse(200, CLIENT.read_bytes(), {"Content-Type": "text/javascript"})
    return None


def build_helper() -> WebSocketServerHelper:
    helper: WebSocketServerHelper

    def authenticate(data: dict) -> dict | None:
        token = data.get("token")
        return {"user_id": token} if isinstance(token, str) and token else None

    def on_message(client_id: str, user_id: str | None, message: dict) -> None:
        if message.get("event") == "chat" and isinstance(message.get("data"), dict):
            text = str(message["data"].get("text", ""))[:1000]
            helper.send_to_room("ws-default", "chat", {"from": user_id, "text": text})

    helper = WebSocketServerHelper(
        "encrypted-chat",
        "/ws",
        "memory://",
        authenticate,
        encryption=EcdhScheme(),
        require_encryption=True,
        message_handler=on_message,
    )
    return helper


async def main(port: int) -> None:
    def listening(server: WebServer) -> None:
        print(f"open http://127.0.0.1:{server.bound_port}/?token=alice", flush=True)

    # Until Ctrl-C or SIGTERM; then every client gets 1001 and this returns.
    await build_helper().run("127.0.0.1", port, page_handler, on_listening=listening)


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8080))
