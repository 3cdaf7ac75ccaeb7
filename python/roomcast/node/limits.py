"""Per-client limits (SPEC §12; the README's "Limits" table), as plain objects that take the
time as an argument: token buckets for the inbound rate limit and for room churn, and the
gate that bounds a client's message_handler tasks in flight.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import Any


class TokenBucket:
    """`rate` tokens a second up to `capacity`; `take` may run it into debt (negative)."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def take(self, amount: float, now: float, floor: float | None = None) -> float:
        """Refill for the time since the last call, take `amount` (never below `floor`),
        and return what is left."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.capacity:
            tokens = self.capacity
        self.stamp = now
        tokens -= amount
        if floor is not None and tokens < floor:
            tokens = floor
        self.tokens = tokens
        return tokens

    def debt_time(self) -> float:
        """Seconds until the bucket is out of debt (0 when it is not in debt)."""
        return -self.tokens / self.rate if self.tokens < 0 else 0.0


class Verdict(enum.Enum):
    PASS = "pass"
    WARN = "warn"  # dropped; the client gets the error event `Rate limit exceeded`
    DROP = "drop"  # dropped (warned already)
    CLOSE = "close"  # still going: close 1008


class RateLimit:
    """One connection's inbound rate limit: messages and/or bytes a second, each allowing
    `burst` seconds' worth at once. A message past either is dropped, the first one of a run
    with the error event; a client that goes on sending until it owes another burst's worth
    is closed. Dropped messages count: only slowing down pays the debt back."""

    __slots__ = ("_bytes", "_messages", "_warned")

    def __init__(
        self, messages: float | None, size: float | None, burst: float, now: float
    ) -> None:
        self._messages = None if messages is None else TokenBucket(messages, messages * burst, now)
        self._bytes = None if size is None else TokenBucket(size, size * burst, now)
        self._warned = False

    def check(self, size: int, now: float) -> Verdict:
        over = False
        for bucket, amount in ((self._messages, 1), (self._bytes, size)):
            if bucket is None:
                continue
            left = bucket.take(amount, now, -bucket.capacity)
            if left < 0:
                over = True
                if left <= -bucket.capacity:
                    return Verdict.CLOSE
        if not over:
            self._warned = False
            return Verdict.PASS
        if self._warned:
            return Verdict.DROP
        self._warned = True
        return Verdict.WARN


class HandlerGate:
    """At most `limit` message_handler tasks in flight for one client: past it, its next
    messages wait here in order (and the caller pauses reading) until tasks finish."""

    __slots__ = ("in_flight", "limit", "waiting")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self.waiting: deque[Any] = deque()

    @property
    def full(self) -> bool:
        return self.in_flight >= self.limit or bool(self.waiting)

    def started(self) -> None:
        self.in_flight += 1

    def finished(self, run: Callable[[Any], None]) -> bool:
        """One task done: `run` the waiting messages while there is room (a message that
        starts a task takes a place); True once nothing waits."""
        self.in_flight -= 1
        waiting = self.waiting
        while waiting and self.in_flight < self.limit:
            run(waiting.popleft())
        return not waiting

    @property
    def idle(self) -> bool:
        return not self.in_flight and not self.waiting


__all__ = ["HandlerGate", "RateLimit", "TokenBucket", "Verdict"]
