"""Per-client limits (SPEC §12; the README's "Limits" table).

`Limits` is the part that owns each client's limit state (its rate limit, its room churn,
its message_handler tasks in flight) and is told when a client goes. Under it, plain objects
that take the time as an argument (token buckets, the rate limit's verdicts, the handler
gate), and `Serial`, one request in flight per client, which presence keeps for its own.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .. import _core
from ..log import client_extra, fault
from ..protocol.constants import CloseCode, ErrorMessages
from ..transport.connection import Client, Pause

logger = logging.getLogger("roomcast")

# A client id (uuid4): its own-id room, on this node or any other, carries its messages.
CLIENT_ID_SHAPE = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE
)
# Presence requests for other rooms that may wait behind a client's one in flight before
# its socket stops being read.
PRESENCE_WAITING = 16


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


class Serial:
    """One job in flight per client: a later one waits its turn, and one with the key of a
    job already waiting is that job (coalesced: one answer serves both). Past `waiting`
    jobs waiting, the client's socket is not read until they drain."""

    def __init__(self, spawn: Callable[[Awaitable[Any]], None], waiting: int) -> None:
        self._spawn = spawn
        self._limit = waiting
        # client id -> the jobs waiting (key -> job); present while one is in flight
        self._queues: dict[str, dict[Any, Callable[[], Awaitable[Any]]]] = {}
        self.coalesced = 0

    def submit(self, client: Client, key: Any, job: Callable[[], Awaitable[Any]]) -> None:
        queue = self._queues.get(client.id)
        if queue is None:
            self._queues[client.id] = {}
            self._spawn(self._run(client, job))
            return
        if key in queue:
            self.coalesced += 1
            return
        queue[key] = job
        if len(queue) >= self._limit:
            client.pause_reading(Pause.PRESENCE)

    async def _run(self, client: Client, job: Callable[[], Awaitable[Any]]) -> None:
        try:
            while True:
                try:
                    await job()
                except Exception:
                    logger.exception("a request of %s failed", client.id)
                queue = self._queues.get(client.id)
                if not queue:
                    self._queues.pop(client.id, None)
                    return
                key = next(iter(queue))
                job = queue.pop(key)
                if len(queue) < self._limit:
                    client.resume_reading(Pause.PRESENCE)
        except BaseException:
            self._queues.pop(client.id, None)
            raise

    def forget(self, client: Client) -> None:
        queue = self._queues.get(client.id)
        if queue:
            queue.clear()

    @property
    def in_flight(self) -> int:
        """Clients with a job in flight."""
        return len(self._queues)


class Limits:
    """The per-client limits of one helper. `send_error(client, message)` sends an error
    event; `spawn(awaitable)` runs a task of the helper's."""

    def __init__(
        self,
        options: Mapping[str, Any],
        hub: _core.Hub,
        send_error: Callable[[Client, str], None],
        spawn: Callable[[Awaitable[Any]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hub = hub
        self._send_error = send_error
        self._spawn = spawn
        self._clock = clock
        self.max_rooms = int(options["max_rooms_per_client"])
        self.private_client_rooms = bool(options["private_client_rooms"])
        self.validate_room_timeout = float(options["validate_room_timeout"])
        self._churn_rate = float(options["room_changes_per_second"])
        self._churn: dict[str, TokenBucket] = {}
        self._handler_tasks = int(options["max_handler_tasks_per_client"])
        self._gates: dict[str, HandlerGate] = {}
        messages, size = options["rate_limit_messages"], options["rate_limit_bytes"]
        # (messages/s, bytes/s, burst), or None: no rate limit (and no cost per message)
        self.rate: tuple[float | None, float | None, float] | None = (
            None
            if messages is None and size is None
            else (messages, size, float(options["rate_limit_burst"]))
        )
        self._rates: dict[str, RateLimit] = {}
        self.refused_rooms = 0  # joins refused by max_rooms_per_client
        self.rate_limited = 0  # messages dropped by the rate limit

    def stats(self) -> dict[str, int]:
        return {"room_limit_refused": self.refused_rooms, "rate_limited": self.rate_limited}

    def forget(self, client: Client) -> None:
        """The client is gone."""
        client_id = client.id
        self._churn.pop(client_id, None)
        self._rates.pop(client_id, None)
        gate = self._gates.pop(client_id, None)
        if gate is not None:
            gate.waiting.clear()

    # -- the inbound rate limit -----------------------------------------------------------

    def over_rate(self, client: Client, size: int) -> bool:
        """Count one inbound message of `size` bytes (only while `rate` is set); True when
        it is to be dropped (the client was told, or is being closed)."""
        limit = self._rates.get(client.id)
        now = self._clock()
        if limit is None:
            assert self.rate is not None
            limit = self._rates[client.id] = RateLimit(*self.rate, now)
        verdict = limit.check(size, now)
        if verdict is Verdict.PASS:
            return False
        self.rate_limited += 1
        if verdict is Verdict.WARN:
            fault(
                "rate limited",
                "messages from %s dropped: inbound rate limit exceeded",
                client.id,
                extra=client_extra(client),
            )
            self._send_error(client, ErrorMessages.RATE_LIMIT)
        elif verdict is Verdict.CLOSE:
            fault(
                "rate limited",
                "closing %s: inbound rate limit still exceeded",
                client.id,
                extra=client_extra(client),
            )
            client.close(CloseCode.POLICY_VIOLATION, CloseCode.RATE_LIMIT_REASON)
        return True

    # -- joins and leaves -------------------------------------------------------------------

    def joinable(self, client: Client, rooms: list[str]) -> list[str]:
        """`rooms` but those named like another client's id (unless that is allowed)."""
        if not self.private_client_rooms:
            return rooms
        own = client.id
        return [room for room in rooms if room == own or not CLIENT_ID_SHAPE.fullmatch(room)]

    def within_room_limit(self, client: Client, rooms: list[str]) -> bool:
        """Whether `client` may be in `rooms` too; if not, it gets `Room limit reached`."""
        hub, handle = self._hub, client.handle
        count = hub.room_count(handle)
        if count + len(rooms) > self.max_rooms:
            # Rooms it is in already do not count twice (checked only near the limit).
            new = sum(1 for room in set(rooms) if not hub.in_room(handle, room))
            if count + new > self.max_rooms:
                self.refused_rooms += 1
                fault(
                    "room limit",
                    "join refused for %s: %d rooms and %d more is over max_rooms_per_client %d",
                    client.id,
                    count,
                    new,
                    self.max_rooms,
                    extra=client_extra(client),
                )
                self._send_error(client, ErrorMessages.ROOM_LIMIT)
                return False
        return True

    def room_changes(self, client: Client, count: int) -> None:
        """`client` joined or left `count` rooms: past `room_changes_per_second`,
        its socket is not read until the churn is paid back (what it asked is done)."""
        rate = self._churn_rate
        bucket = self._churn.get(client.id)
        now = self._clock()
        if bucket is None:
            bucket = self._churn[client.id] = TokenBucket(rate, rate, now)
        if bucket.take(count, now) >= 0 or client.paused_for(Pause.ROOM_CHANGES):
            return  # within the rate, or paused already (its timer resumes it)
        client.pause_reading(Pause.ROOM_CHANGES)
        asyncio.get_running_loop().call_later(bucket.debt_time(), self._churn_paid, client)

    def _churn_paid(self, client: Client) -> None:
        bucket = self._churn.get(client.id)
        if bucket is None:
            return  # gone
        if bucket.take(0, self._clock()) < 0:  # more churn came in (what was read already)
            asyncio.get_running_loop().call_later(bucket.debt_time(), self._churn_paid, client)
            return
        client.resume_reading(Pause.ROOM_CHANGES)

    # -- message_handler tasks ------------------------------------------------------------

    def run_handler(self, client: Client, handler: Callable[..., Any], message: Any) -> None:
        """`handler(client_id=, user_id=, message=)`: what it raises is logged; an awaitable
        it returns runs as a task, at most `max_handler_tasks_per_client` of them at once
        per client (the next messages wait here, in order, and reading pauses)."""
        gate = self._gates.get(client.id)
        if gate is not None and gate.full:
            gate.waiting.append((handler, message))
            client.pause_reading(Pause.HANDLERS)
            return
        self._call(client, handler, message, gate)

    def _call(
        self, client: Client, handler: Callable[..., Any], message: Any, gate: HandlerGate | None
    ) -> None:
        try:
            result = handler(client_id=client.id, user_id=client.user_id, message=message)
        except Exception:
            logger.exception("message_handler raised", extra=client_extra(client))
            return
        if not inspect.isawaitable(result):
            return
        if gate is None:
            gate = self._gates[client.id] = HandlerGate(self._handler_tasks)
        gate.started()
        self._spawn(self._await(client, gate, result))

    async def _await(self, client: Client, gate: HandlerGate, result: Awaitable[Any]) -> None:
        try:
            await result
        except Exception:
            logger.exception("message_handler raised", extra=client_extra(client))
        finally:
            self._finished(client, gate)

    def _finished(self, client: Client, gate: HandlerGate) -> None:
        if self._gates.get(client.id) is not gate:
            return  # the client is gone

        def run(waiting: tuple[Callable[..., Any], Any]) -> None:
            self._call(client, waiting[0], waiting[1], gate)

        if gate.finished(run):
            client.resume_reading(Pause.HANDLERS)
            if gate.idle:
                del self._gates[client.id]


__all__ = [
    "CLIENT_ID_SHAPE",
    "HandlerGate",
    "Limits",
    "RateLimit",
    "Serial",
    "TokenBucket",
    "Verdict",
]
