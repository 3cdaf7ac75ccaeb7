"""The server app the JavaScript client's tests run with `roomcast serve --app relay_app:app`:
any token but `expired*` is its user id, every room may be joined, and a client can make the
server publish to a room (`publish`) or drop its own connection (`drop`)."""


class App:
    def setup(self, helper):
        self.helper = helper

    def authenticate_fn(self, data):
        token = data.get("token")
        if not isinstance(token, str) or not token or token.startswith("expired"):
            return None
        return {"user_id": token}

    def validate_room_fn(self, client_id, user_id, rooms):
        return rooms

    def message_handler(self, client_id, user_id, message):
        data = message.get("data") or {}
        if message["event"] == "publish":
            self.helper.send_to_room(data["room"], data["event"], data.get("data"))
        elif message["event"] == "drop":
            client = self.helper.get_clients(client_id)
            if client is not None:
                client.close(1011, "dropped on request")


app = App()
