"""A chat application wired through binding keys, the way an Ignis application wires its
WebSocketComponent.

    REDIS_URL=redis://127.0.0.1:6379 python examples/chat_app.py     # PORT=8080 by default

Clients authenticate with a token from TOKENS, may join rooms named `chat-*`, and send
`{"event": "say", "data": {"room": "chat-1", "text": "hi"}}`, which everyone in that room
(on every node sharing the Redis) receives as `{"event": "said", ...}`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from roomcast.app import Application
from roomcast.component import LazyWebSocket, WebSocketBindingKeys, WebSocketComponent
from roomcast.redis import RedisHelper

TOKENS = {"token-ann": "ann", "token-bob": "bob"}

logger = logging.getLogger("chat")


class ChatService:
    """Built before the server starts, so it reaches the helper through the lazy accessor."""

    def __init__(self, websocket: LazyWebSocket) -> None:
        self.websocket = websocket
        self.online: set[str] = set()

    async def authenticate(self, data: dict[str, Any]) -> dict[str, Any] | None:
        user = TOKENS.get(data.get("token", ""))
        return {"user_id": user, "metadata": {"name": user.title()}} if user else None

    def validate_rooms(self, client_id: str, user_id: str | None, rooms: list[str]) -> list[str]:
        return [room for room in rooms if room.startswith("chat-")]

    def connected(self, client_id: str, user_id: str | None, metadata: dict | None) -> None:
        self.online.add(client_id)
        self.websocket().send_to_client(client_id, "welcome", {"online": len(self.online)})

    def disconnected(self, client_id: str, user_id: str | None) -> None:
        self.online.discard(client_id)

    def on_message(self, client_id: str, user_id: str | None, message: dict[str, Any]) -> None:
        data = message.get("data")
        if message.get("event") != "say" or not isinstance(data, dict):
            return
        room = data.get("room")
        helper = self.websocket()
        if isinstance(room, str) and room in helper.get_clients(client_id).rooms:
            helper.send(
                room, {"topic": "said", "data": {"from": user_id, "text": data.get("text")}}
            )


def build(
    redis_url: str, host: str = "127.0.0.1", port: int = 8080
) -> tuple[Application, ChatService]:
    app = Application(host=host, port=port)
    chat = ChatService(LazyWebSocket(app))
    app.bind(WebSocketBindingKeys.REDIS_CONNECTION).to_value(RedisHelper(url=redis_url))
    app.bind(WebSocketBindingKeys.AUTHENTICATE_HANDLER).to_value(chat.authenticate)
    app.bind(WebSocketBindingKeys.VALIDATE_ROOM_HANDLER).to_value(chat.validate_rooms)
    app.bind(WebSocketBindingKeys.CLIENT_CONNECTED_HANDLER).to_value(chat.connected)
    app.bind(WebSocketBindingKeys.CLIENT_DISCONNECTED_HANDLER).to_value(chat.disconnected)
    app.bind(WebSocketBindingKeys.MESSAGE_HANDLER).to_value(chat.on_message)
    app.bind(WebSocketBindingKeys.SERVER_OPTIONS).to_value(
        {"identifier": "chat", "path": "/chat", "default_rooms": ["chat-lobby"]}
    )
    app.component(WebSocketComponent)
    return app, chat


async def main() -> None:
    logging.basicConfig(level=logging.INFO)
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
    app, _ = build(redis_url, port=int(os.environ.get("PORT", "8080")))
    await app.start()
    logger.info("chat on ws://127.0.0.1:%d/chat", app.bound_port)
    await app.run()  # until Ctrl-C or SIGTERM; then every client gets 1001


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
