"""What the listener and the metrics need of a helper, as protocols.

`roomcast.transport.http` routes upgrade requests to a `Route`; `roomcast.serving.metrics` and
`roomcast.serving.endpoints` read a `Node`. `WebSocketServerHelper` is both; naming them here
keeps those modules from importing `roomcast.node.server` (which imports them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ..protocol.counters import Counters
from .connection import Client


class Route(Protocol):
    """An endpoint on one path: `accept(deflate_window)` gives the `Client` of a new
    connection (that negotiated permessage-deflate with that server window, 0: it did not)
    or raises `roomcast.http.UpgradeRefused`. `server_options` are the resolved options
    (`roomcast.config`): the listener takes its frame size, upgrade timeout, backlog and
    whether to negotiate permessage-deflate from them."""

    @property
    def server_options(self) -> Mapping[str, Any]: ...
    def get_path(self) -> str: ...
    def accept(self, deflate_window: int = 0) -> Client: ...


class Node(Protocol):
    """The figures and the health of one helper."""

    counters: Counters

    @property
    def identifier(self) -> str: ...
    def stats(self) -> dict[str, int]: ...
    def health(self) -> tuple[bool, dict[str, Any]]: ...
    @property
    def encrypted_connections(self) -> int: ...
    @property
    def broker_state(self) -> str: ...
    @property
    def shut_down(self) -> bool: ...
