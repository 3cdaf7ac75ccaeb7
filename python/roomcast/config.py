"""One configuration for a helper: `ServerConfig`, which the helper, the component layer and
the CLI all build and read, and its `server_options` (defaults, the original's camelCase
aliases, validation), with the defaults (`roomcast.protocol.constants`) and the aliases in one
table each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import _core
from .protocol.constants import LISTEN_BACKLOG, SUBSCRIBE_TIMEOUT, WebSocketDefaults
from .protocol.messages import sanitize_rooms

# server_options keys and their defaults.
OPTION_DEFAULTS: dict[str, Any] = {
    "max_payload_length": WebSocketDefaults.MAX_PAYLOAD_LENGTH,
    "idle_timeout": WebSocketDefaults.IDLE_TIMEOUT,
    "backpressure_limit": WebSocketDefaults.BACKPRESSURE_LIMIT,
    "close_on_backpressure_limit": False,
    "send_pings": WebSocketDefaults.SEND_PINGS,
    "max_connections": None,
    "publish_to_self": WebSocketDefaults.PUBLISH_TO_SELF,
    # permessage-deflate (RFC 7692, `roomcast.transport.deflate`): negotiated when a client
    # offers it; messages shorter than deflate_threshold bytes go uncompressed; zlib's level.
    "per_message_deflate": False,
    "deflate_threshold": _core.DEFAULT_DEFLATE_THRESHOLD,
    "deflate_level": _core.DEFAULT_DEFLATE_LEVEL,
    # Seconds a new connection has to complete its upgrade request.
    "handshake_timeout": 5.0,
    "backlog": LISTEN_BACKLOG,
    # Seconds queued deliveries wait before they are written, so that messages arriving
    # within the window share one write per client (0: written at the end of the loop
    # iteration that queued them).
    "write_delay": 0.0,
    # A flush writes at most this many clients, or bytes, before it lets the loop run
    # (reads, timers, other rooms) and goes on with the rest: one pass over a very large
    # room does not hold up everything behind it.
    "pass_sockets": 256,
    "pass_bytes": 4 << 20,
    # History and presence (SPEC §10): globs of room names (None: no room), the messages a
    # history room keeps and for how many seconds, how long a dead node's members linger.
    "history_rooms": None,
    "history_size": 100,
    "history_ttl": 300.0,
    # Seconds any Redis call of the history may take (past it: delivered without an offset,
    # recovered: false), the bytes waiting for the history writer, the seconds a recovery's
    # replay may wait for the client's socket to drain.
    "history_timeout": 1.0,
    "history_queue_limit": 8 * 1024 * 1024,
    "recovery_timeout": 10.0,
    "presence_rooms": None,
    "presence_ttl": 30.0,
    # presence-join / presence-leave events to the members of presence rooms.
    "presence_events": False,
    # The most members a `presence` answer (and `presence()`) lists; past it, `truncated`.
    "presence_limit": 1000,
    # Limits one client meets (SPEC §12; the README's "Limits" table). Frames one message
    # may span; rooms a client may be in (a join past it is refused whole); room names
    # joined or left per second (past it, reading pauses until the churn is paid back);
    # bytes of messages queued behind a join barrier (past it, reading pauses); seconds an
    # async validate_room_fn may take (past it, the join is refused); message_handler
    # tasks in flight (past it, the client's messages wait and reading pauses).
    "max_fragments": 1024,
    "max_rooms_per_client": 10_000,
    "room_changes_per_second": 1000.0,
    "join_queue_limit": 1024 * 1024,
    "validate_room_timeout": 5.0,
    "max_handler_tasks_per_client": 16,
    # The optional inbound rate limit per connection (None: off): messages and bytes per
    # second, each allowing `rate_limit_burst` seconds' worth at once.
    "rate_limit_messages": None,
    "rate_limit_bytes": None,
    "rate_limit_burst": 2.0,
    # A client may join a room named like another client's id (its own-id room) only
    # when this is off.
    "private_client_rooms": True,
}
# The original's camelCase names, accepted as aliases (`backlog` has none: it is ours).
OPTION_ALIASES = {
    "maxPayloadLength": "max_payload_length",
    "idleTimeout": "idle_timeout",
    "backpressureLimit": "backpressure_limit",
    "closeOnBackpressureLimit": "close_on_backpressure_limit",
    "sendPings": "send_pings",
    "maxConnections": "max_connections",
    "publishToSelf": "publish_to_self",
    "perMessageDeflate": "per_message_deflate",
    "deflateThreshold": "deflate_threshold",
    "deflateLevel": "deflate_level",
    "handshakeTimeout": "handshake_timeout",
    "writeDelay": "write_delay",
    "historyRooms": "history_rooms",
    "historySize": "history_size",
    "historyTtl": "history_ttl",
    "historyTimeout": "history_timeout",
    "historyQueueLimit": "history_queue_limit",
    "recoveryTimeout": "recovery_timeout",
    "presenceRooms": "presence_rooms",
    "presenceTtl": "presence_ttl",
    "presenceEvents": "presence_events",
    "presenceLimit": "presence_limit",
    "maxFragments": "max_fragments",
    "maxRoomsPerClient": "max_rooms_per_client",
    "roomChangesPerSecond": "room_changes_per_second",
    "joinQueueLimit": "join_queue_limit",
    "validateRoomTimeout": "validate_room_timeout",
    "maxHandlerTasksPerClient": "max_handler_tasks_per_client",
    "rateLimitMessages": "rate_limit_messages",
    "rateLimitBytes": "rate_limit_bytes",
    "rateLimitBurst": "rate_limit_burst",
    "privateClientRooms": "private_client_rooms",
}


def resolve_server_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults merged with `options`; unknown keys are an error, not a silent no-op."""
    resolved = dict(OPTION_DEFAULTS)
    for key, value in (options or {}).items():
        name = OPTION_ALIASES.get(key, key)
        if name not in resolved:
            raise ValueError(f"unknown server option: {key}")
        resolved[name] = value
    if type(resolved["per_message_deflate"]) is not bool:
        raise ValueError(
            f"per_message_deflate must be true or false: {resolved['per_message_deflate']!r}"
        )
    threshold = resolved["deflate_threshold"]
    if type(threshold) is not int or threshold < 0:
        raise ValueError(f"deflate_threshold must be a non-negative integer: {threshold!r}")
    level = resolved["deflate_level"]
    if type(level) is not int or not 0 <= level <= 9:
        raise ValueError(f"deflate_level must be an integer from 0 to 9: {level!r}")
    if int(resolved["max_payload_length"]) <= 0:
        raise ValueError(f"max_payload_length must be positive: {resolved['max_payload_length']}")
    if int(resolved["backpressure_limit"]) <= 0:
        raise ValueError(f"backpressure_limit must be positive: {resolved['backpressure_limit']}")
    if float(resolved["handshake_timeout"]) <= 0:
        raise ValueError(f"handshake_timeout must be positive: {resolved['handshake_timeout']}")
    if int(resolved["backlog"]) <= 0:
        raise ValueError(f"backlog must be positive: {resolved['backlog']}")
    if float(resolved["idle_timeout"]) < 0:
        raise ValueError(f"idle_timeout must not be negative: {resolved['idle_timeout']}")
    for name in ("pass_sockets", "pass_bytes"):
        if type(resolved[name]) is not int or resolved[name] < 1:
            raise ValueError(f"{name} must be a positive integer: {resolved[name]!r}")
    if not float(resolved["write_delay"]) >= 0:
        raise ValueError(f"write_delay must not be negative: {resolved['write_delay']}")
    _check_history(resolved)
    _check_limits(resolved)
    return resolved


def _check_limits(resolved: dict[str, Any]) -> None:
    """The per-client limits: whole numbers and seconds, normalised in place."""
    for name in (
        "presence_limit",
        "max_fragments",
        "max_rooms_per_client",
        "join_queue_limit",
        "max_handler_tasks_per_client",
    ):
        value = resolved[name]
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be a positive integer: {value!r}")
    for name in ("room_changes_per_second", "validate_room_timeout", "rate_limit_burst"):
        resolved[name] = _positive_float(name, resolved[name])
    for name in ("rate_limit_messages", "rate_limit_bytes"):
        if resolved[name] is not None:
            resolved[name] = _positive_float(name, resolved[name])
    if type(resolved["private_client_rooms"]) is not bool:
        raise ValueError(
            f"private_client_rooms must be true or false: {resolved['private_client_rooms']!r}"
        )


def _positive_float(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number: {value!r}") from None
    if not 0 < number < float("inf"):
        raise ValueError(f"{name} must be a positive number: {value!r}")
    return number


def _check_history(resolved: dict[str, Any]) -> None:
    for name in ("history_rooms", "presence_rooms"):
        glob = resolved[name]
        if glob is not None and (type(glob) is not str or not glob):
            raise ValueError(f"{name} must be a non-empty glob string: {glob!r}")
    if type(resolved["history_size"]) is not int or resolved["history_size"] < 1:
        raise ValueError(f"history_size must be a positive integer: {resolved['history_size']}")
    if type(resolved["presence_events"]) is not bool:
        raise ValueError(f"presence_events must be true or false: {resolved['presence_events']!r}")
    if resolved["presence_events"] and resolved["presence_rooms"] is None:
        raise ValueError("presence_events needs presence_rooms (the rooms that have presence)")
    limit = resolved["history_queue_limit"]
    if type(limit) is not int or limit < 1:
        raise ValueError(f"history_queue_limit must be a positive integer: {limit!r}")
    for name in ("history_ttl", "presence_ttl", "history_timeout", "recovery_timeout"):
        if not float(resolved[name]) > 0:
            raise ValueError(f"{name} must be positive: {resolved[name]}")
        resolved[name] = float(resolved[name])


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
    (`options`: resolved by `resolve_server_options`)."""

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
