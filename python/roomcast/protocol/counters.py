"""Counters of the protocol path: plain ints the helper bumps, read by `roomcast.metrics`."""

from __future__ import annotations

from typing import Any

AUTH_OUTCOMES = ("ok", "failed", "error", "timeout")
# Kinds of received messages; the label set is bounded whatever clients send.
RECEIVED_KINDS = ("heartbeat", "authenticate", "join", "leave", "encrypted", "custom", "invalid")
_KIND_OF_EVENT = {kind: kind for kind in RECEIVED_KINDS[:5]}
# Server-to-client event names a client may not send: dropped, counted as invalid.
for _name in ("connected", "error", "disconnect"):
    _KIND_OF_EVENT[_name] = "invalid"


class Counters:
    """Counters of the protocol path: plain ints, bumped without locks or label lookups."""

    __slots__ = ("auth", "closes", "connects", "received")

    def __init__(self) -> None:
        self.connects = 0
        self.auth = dict.fromkeys(AUTH_OUTCOMES, 0)
        self.received = dict.fromkeys(RECEIVED_KINDS, 0)
        self.closes: dict[int, int] = {}

    def close(self, code: int) -> None:
        """The server sent a close frame with `code`."""
        self.closes[code] = self.closes.get(code, 0) + 1

    def count_received(self, event: Any) -> None:
        """One decoded message whose `event` field is `event`."""
        if type(event) is str and event:
            self.received[_KIND_OF_EVENT.get(event, "custom")] += 1
        else:
            self.received["invalid"] += 1
