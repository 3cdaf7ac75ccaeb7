"""The helper's `server_options`: defaults, the original's camelCase aliases, validation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..protocol.constants import LISTEN_BACKLOG, WebSocketDefaults

# server_options keys and their defaults.
OPTION_DEFAULTS: dict[str, Any] = {
    "max_payload_length": WebSocketDefaults.MAX_PAYLOAD_LENGTH,
    "idle_timeout": WebSocketDefaults.IDLE_TIMEOUT,
    "backpressure_limit": WebSocketDefaults.BACKPRESSURE_LIMIT,
    "close_on_backpressure_limit": False,
    "send_pings": WebSocketDefaults.SEND_PINGS,
    "max_connections": None,
    "publish_to_self": WebSocketDefaults.PUBLISH_TO_SELF,
    "per_message_deflate": False,
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
    "pass_sockets": 1024,
    "pass_bytes": 4 << 20,
    # History and presence (SPEC §10): globs of room names (None: no room), the messages a
    # history room keeps and for how many seconds, how long a dead node's members linger.
    "history_rooms": None,
    "history_size": 100,
    "history_ttl": 300.0,
    "presence_rooms": None,
    "presence_ttl": 30.0,
    # presence-join / presence-leave events to the members of presence rooms.
    "presence_events": False,
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
    "handshakeTimeout": "handshake_timeout",
    "writeDelay": "write_delay",
    "historyRooms": "history_rooms",
    "historySize": "history_size",
    "historyTtl": "history_ttl",
    "presenceRooms": "presence_rooms",
    "presenceTtl": "presence_ttl",
    "presenceEvents": "presence_events",
}


def resolve_server_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults merged with `options`; unknown keys are an error, not a silent no-op."""
    resolved = dict(OPTION_DEFAULTS)
    for key, value in (options or {}).items():
        name = OPTION_ALIASES.get(key, key)
        if name not in resolved:
            raise ValueError(f"unknown server option: {key}")
        resolved[name] = value
    if resolved["per_message_deflate"]:
        raise ValueError("unsupported server option: per_message_deflate")
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
    return resolved


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
    for name in ("history_ttl", "presence_ttl"):
        if not float(resolved[name]) > 0:
            raise ValueError(f"{name} must be positive: {resolved[name]}")
        resolved[name] = float(resolved[name])
