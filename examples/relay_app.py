"""A chat in ten lines, for `roomcast serve --app`: every custom event a client sends with
`{"room": R, ...}` goes to everyone in R (the sender too, on every node), with `from` added.

    roomcast serve --app examples.relay_app:app        # from the repository's root

Clients log in with the built-in JWT authenticator (the demo token printed at start, or one
from `roomcast token`), join rooms allowed by `--allow-rooms` (default: any), then send
`{"event": "chat", "data": {"room": "lobby", "text": "hi"}}`.
"""

from __future__ import annotations

from typing import Any


class Relay:
    def setup(self, helper: Any) -> None:
        self.helper = helper

    def message_handler(self, client_id: str, user_id: str | None, message: dict) -> None:
        data = message.get("data")
        room = data.get("room") if isinstance(data, dict) else None
        client = self.helper.get_clients(client_id)
        if isinstance(room, str) and client is not None and room in client.rooms:
            self.helper.send(room, {"topic": message["event"], "data": {**data, "from": user_id}})


app = Relay()
