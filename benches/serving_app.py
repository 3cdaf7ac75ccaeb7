"""The `--app` of the serving benches: any token is a user; a `publish` event goes to
`helper.send()` (every client on every worker, once), to `data.room` when given."""

from __future__ import annotations

from typing import Any


class App:
    def setup(self, helper: Any) -> None:
        self.helper = helper

    def authenticate_fn(self, data: dict[str, Any]) -> dict[str, Any]:
        return {"user_id": str(data.get("token", "anon"))}

    def validate_room_fn(self, client_id: str, user_id: str | None, rooms: list[str]) -> list[str]:
        return rooms

    def message_handler(self, client_id: str, user_id: str | None, message: dict[str, Any]) -> None:
        if message.get("event") != "publish":
            return
        data = message.get("data")
        room = data.get("room") if isinstance(data, dict) else None
        self.helper.send(room, {"topic": "bench", "data": data})


app = App()
