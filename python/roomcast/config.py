"""One configuration for a helper: `ServerConfig`, which the helper, the component layer and
the CLI all build and read, with the defaults (`roomcast.constants`) and the original's
camelCase aliases in one table each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .node.options import OPTION_ALIASES, OPTION_DEFAULTS, resolve_server_options
from .protocol.constants import SUBSCRIBE_TIMEOUT, WebSocketDefaults
from .protocol.messages import sanitize_rooms

DEFAULT_ROOMS = (WebSocketDefaults.ROOM, WebSocketDefaults.NOTIFICATION_ROOM)

# The original's camelCase names of the helper's settings; with `OPTION_ALIASES` (those of
# `server_options`), every alias there is.
SETTING_ALIASES = {
    "defaultRooms": "default_rooms",
    "serverOptions": "server_options",
    "authTimeout": "auth_timeout",
    "heartbeatInterval": "heartbeat_interval",
    "heartbeatTimeout": "heartbeat_timeout",
    "requireEncryption": "require_encryption",
    "encryptedBatchLimit": "encrypted_batch_limit",
}
ALIASES = {**SETTING_ALIASES, **OPTION_ALIASES}

# What the component's SERVER_OPTIONS binding takes (as the original's component does).
COMPONENT_SETTINGS = frozenset(
    {
        "identifier",
        "path",
        "default_rooms",
        "server_options",
        "auth_timeout",
        "heartbeat_interval",
        "heartbeat_timeout",
        "require_encryption",
        "encrypted_batch_limit",
    }
)


@dataclass(frozen=True)
class ServerConfig:
    """A helper's settings (durations in seconds, sizes in bytes) and its server options
    (`options`: resolved by `roomcast.node.options.resolve_server_options`)."""

    identifier: str = "WebSocketServerHelper"
    path: str = WebSocketDefaults.PATH
    default_rooms: tuple[str, ...] = DEFAULT_ROOMS
    auth_timeout: float = WebSocketDefaults.AUTH_TIMEOUT
    heartbeat_interval: float = WebSocketDefaults.HEARTBEAT_INTERVAL
    heartbeat_timeout: float = WebSocketDefaults.HEARTBEAT_TIMEOUT
    require_encryption: bool = False
    encrypted_batch_limit: int = WebSocketDefaults.ENCRYPTED_BATCH_LIMIT
    subscribe_timeout: float = SUBSCRIBE_TIMEOUT
    options: Mapping[str, Any] = field(default_factory=lambda: dict(OPTION_DEFAULTS))

    def __post_init__(self) -> None:
        if self.auth_timeout <= 0 or self.heartbeat_timeout <= 0 or self.heartbeat_interval <= 0:
            raise ValueError(
                "auth_timeout, heartbeat_interval and heartbeat_timeout must be positive"
            )
        if self.subscribe_timeout <= 0:
            raise ValueError(f"subscribe_timeout must be positive: {self.subscribe_timeout}")
        if self.encrypted_batch_limit < 1:
            raise ValueError(
                f"encrypted_batch_limit must be at least 1: {self.encrypted_batch_limit}"
            )
        for room in self.default_rooms:
            if not sanitize_rooms([room]):  # what a client could not join either
                raise ValueError(f"invalid default room: {room!r}")
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "default_rooms", tuple(self.default_rooms))
        set_(self, "auth_timeout", float(self.auth_timeout))
        set_(self, "heartbeat_interval", float(self.heartbeat_interval))
        set_(self, "heartbeat_timeout", float(self.heartbeat_timeout))
        set_(self, "require_encryption", bool(self.require_encryption))
        set_(self, "encrypted_batch_limit", int(self.encrypted_batch_limit))
        set_(self, "subscribe_timeout", float(self.subscribe_timeout))
        set_(self, "options", resolve_server_options(self.options))

    def replace(self, **changes: Any) -> ServerConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, Any], allowed: frozenset[str] | None = None
    ) -> ServerConfig:
        """From snake_case or camelCase names (`server_options` for the options); names not
        in `allowed` (default: every field) raise KeyError with the name as given."""
        names = frozenset(f.name for f in dataclasses.fields(cls)) | {"server_options"}
        known = names if allowed is None else allowed
        values: dict[str, Any] = {}
        for key, value in settings.items():
            name = ALIASES.get(key, key)
            if name not in known:
                raise KeyError(key)
            values["options" if name == "server_options" else name] = value
        if values.get("options") is None:
            values.pop("options", None)
        return cls(**values)
