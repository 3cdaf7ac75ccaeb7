"""Logging policy: what a connection may write, and in which format.

- Nothing per connection at INFO: connection life (connect, authenticate, close) is one DEBUG
  line; finer steps and picows' own per-connection chatter are TRACE (below DEBUG).
- A client's fault (oversized message, bad UTF-8, a protocol error, a malformed handshake) is
  a WARNING at most, and `fault()` writes at most one line per kind every FAULT_INTERVAL
  seconds, the next one saying how many were left out: a hostile client cannot flood the log.
- Lines about a client carry `extra=client_extra(client)` (its id and user id), which the
  JSON format writes as fields.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

# Below DEBUG: per-connection steps that DEBUG would repeat many times per client.
TRACE = 5
logging.addLevelName(TRACE, "TRACE")

# At most one line per kind of client fault in this many seconds.
FAULT_INTERVAL = 5.0

logger = logging.getLogger("roomcast")


def client_extra(client: Any) -> dict[str, Any]:
    """`extra=` for a log line about one client: its id and user id."""
    return {"client_id": client.id, "user_id": client.user_id}


class FaultLog:
    """Rate-limited WARNING lines for faults a client causes, one budget per kind."""

    def __init__(self, target: logging.Logger, interval: float = FAULT_INTERVAL) -> None:
        self._logger = target
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(
        self, kind: str, msg: str, *args: Any, extra: Mapping[str, Any] | None = None
    ) -> None:
        if not self._logger.isEnabledFor(logging.WARNING):
            return
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        left_out = self._suppressed.pop(kind, 0)
        if left_out:
            msg += " (and %d more since the last such line)"
            args = (*args, left_out)
        self._logger.warning("%s: " + msg, kind, *args, extra=extra)


fault = FaultLog(logger)


# picows lines that report a client's fault, by how they start, and the kind of fault.
_PICOWS_FAULTS = (
    ("WS parser error", "protocol error"),
    ("Handshake timeout", "handshake timeout"),
    ("Disconnect because HTTP request violated max_size", "bad handshake"),
)
_FAULT_PREFIXES = tuple(prefix for prefix, _ in _PICOWS_FAULTS)


class PicowsLog:
    """The logger handed to picows for one connection, holding what picows logs to the policy
    above: its per-connection INFO and DEBUG lines ("New connection accepted",
    "Disconnected") and write-buffer warnings become TRACE (its own debug level, 9, stays
    below DEBUG too); what reports a client's fault (a frame parser error, a handshake
    timeout, an oversized head) goes through `fault()`, with the client's id once the upgrade
    made one (`client`, set by `Client.log_to` and cleared when it disconnects); the rest
    (exceptions from our listener, which are our bugs) passes unchanged. It has the logger
    methods picows calls; one per connection."""

    __slots__ = ("client", "logger")

    def __init__(self, target: logging.Logger) -> None:
        self.logger = target
        # The client holds picows' transport, which holds this object: the client breaks
        # that cycle when it disconnects (no weak reference: 80 B less per connection).
        self.client: Any = None

    def isEnabledFor(self, level: int) -> bool:
        return self.logger.isEnabledFor(level)

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.log(logging.DEBUG, msg, *args, **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        # Twice per connection ("New connection accepted", "Disconnected"): kept short.
        if msg.startswith(_FAULT_PREFIXES):
            self._fault(msg, args)
        elif self.logger.isEnabledFor(TRACE):
            self.logger.log(TRACE, msg, *args, extra=self._extra(), **kwargs)

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.log(logging.WARNING, msg, *args, **kwargs)

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.log(logging.ERROR, msg, *args, **kwargs)

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        self.log(logging.ERROR, msg, *args, exc_info=exc_info, **kwargs)

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        text = str(msg)
        if text.startswith(_FAULT_PREFIXES) and not kwargs.get("exc_info"):
            self._fault(text, args)
            return
        if level < logging.WARNING or text.startswith("Protocol writing"):
            level = min(level, TRACE)
        if self.logger.isEnabledFor(level):
            self.logger.log(level, msg, *args, extra=self._extra(), **kwargs)

    def _extra(self) -> dict[str, Any] | None:
        client = self.client
        return client_extra(client) if client is not None else None

    def _fault(self, text: str, args: tuple[Any, ...]) -> None:
        kind = next(kind for prefix, kind in _PICOWS_FAULTS if text.startswith(prefix))
        if kind == "protocol error" and args and isinstance(args[0], tuple) and len(args[0]) == 2:
            reason = str(args[0][1])  # WSProtocolError.args: (close code, reason)
        else:
            reason = text % args if args else text
        if "exceeding max allowed size" in reason:
            kind = "oversized message"
        client = self.client
        if client is None:
            fault(kind, "%s", reason)
        else:
            fault(kind, "closing %s: %s", client.id, reason, extra=client_extra(client))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO-8601 UTC), level, logger, message, and the client
    id / user id when the line is about a client."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        client_id = getattr(record, "client_id", None)
        if client_id is not None:
            line["client_id"] = client_id
        user_id = getattr(record, "user_id", None)
        if user_id is not None:
            line["user_id"] = user_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str = "info", fmt: str = "text") -> None:
    """Root logging for the command line: `fmt` is "text" or "json", both on stderr."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
