"""The `Broker` protocol: what the server and the emitter may ask of any broker.

Delivery guarantee, for every implementation: at-most-once, no ordering across channels,
ordering within one channel from one publisher. A node that is not subscribed when a message
is published never sees it (nor does one whose broker is disconnected). Publishing never
blocks the caller.

This module imports nothing of roomcast's: the broker implementations and their callers
depend on it, never the other way round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol, runtime_checkable

OnMessage = Callable[[str, bytes], None]
"""Called on the event loop with (channel, raw envelope bytes)."""

BrokerState = Literal["connected", "connecting", "reconnecting", "closed"]
BROKER_STATES: tuple[BrokerState, ...] = ("connected", "connecting", "reconnecting", "closed")


class BrokerUnavailable(ConnectionError):
    """The broker's server cannot be reached (the message names the address)."""


@runtime_checkable
class Broker(Protocol):
    """A broker of envelopes between nodes; every ability is always there, so callers never
    probe. Where an ability means nothing for an implementation (one process, patterns that
    receive everything) it is a no-op or trivially true, as each member says."""

    async def start(self, on_message: OnMessage | None) -> None:
        """Connect and subscribe to every channel a node listens on; idempotent. `None`
        (the emitter) receives nothing."""

    def publish(self, channel: str, message: bytes) -> None:
        """Send without waiting; failures are logged and counted, never raised."""

    async def publish_wait(self, channel: str, message: bytes) -> int:
        """Publish and wait until the broker accepted it: how many subscribers it went to.
        Raises BrokerUnavailable while the broker's server is unreachable."""
        ...

    async def publish_many_wait(self, messages: list[tuple[str, bytes]]) -> list[int]:
        """`publish_wait` for each (channel, message), in order, sent together (one write
        where the broker can): how many subscribers each went to. Raises BrokerUnavailable
        while the broker's server is unreachable."""
        ...

    async def close(self) -> None:
        """Unsubscribe and disconnect; idempotent."""

    @property
    def wants_interest(self) -> bool:
        """Whether `interest()` changes what the node receives; when False the caller may
        skip tracking interest at all."""
        ...

    def interest(self, channel: str, on: bool) -> None:
        """A `ws:room:`, `ws:user:` or `ws:client:` channel got its first local member (on)
        or lost its last (off). A no-op for brokers that receive everything anyway."""

    def interest_many(self, adds: list[str], removes: list[str]) -> None:
        """`interest(channel, True)` for each of `adds`, then `interest(channel, False)` for
        each of `removes`, in one call (a drain of the hub's changes)."""

    @property
    def confirms_subscriptions(self) -> bool:
        """True when a channel is live only once its own subscription is confirmed (then the
        server's join barrier waits on `subscribe_new` and `confirmation`)."""
        ...

    def subscribe_new(
        self, channels: list[str], shared: list[str] | None = None
    ) -> asyncio.Future[Any] | None:
        """`interest(channel, True)` for channels nobody on this node wanted before, and the
        future of the flush that confirms them (None when there is nothing to wait for).
        `shared`: channels other clients may hold (a login's user, default rooms), wanted
        from now on too; the future then also covers their confirmation."""
        ...

    def confirmation(self, channels: Iterable[str]) -> asyncio.Future[Any] | None:
        """None when every one of `channels` is live, else a future resolved once they are;
        it never fails, and callers bound the wait themselves."""
        ...

    @property
    def connected(self) -> bool:
        """Whether the broker's server is reachable now (always True in one process)."""
        ...

    @property
    def state(self) -> BrokerState:
        """`connected`, `connecting` (never up yet), `reconnecting` (lost, retrying) or
        `closed`; health checks and metrics read it."""
        ...

    def stats(self) -> dict[str, int]:
        """The counters the broker keeps (empty when it keeps none); the server reports them
        prefixed `broker_`."""
        ...

    async def sync(self, timeout: float | None = None) -> None:
        """Return once every subscription change made so far is in effect. Raises
        BrokerUnavailable while disconnected."""


class OneProcess:
    """The abilities of a broker whose every peer receives every channel (one process, or a
    broker that offers only start/publish/close): no interest to track, every channel live
    at once, always connected, no counters. Brokers inherit these and add the rest."""

    async def publish_many_wait(self, messages: list[tuple[str, bytes]]) -> list[int]:
        """One `publish_wait` after the other: in one process there is no write to share."""
        publish_wait = self.publish_wait  # type: ignore[attr-defined]
        return [int(await publish_wait(channel, message)) for channel, message in messages]

    @property
    def wants_interest(self) -> bool:
        return False

    def interest(self, channel: str, on: bool) -> None:
        """Nothing to do: every peer receives every channel."""

    def interest_many(self, adds: list[str], removes: list[str]) -> None:
        """Nothing to do: every peer receives every channel."""

    @property
    def confirms_subscriptions(self) -> bool:
        return False

    def subscribe_new(
        self, channels: list[str], shared: list[str] | None = None
    ) -> asyncio.Future[Any] | None:
        return None

    def confirmation(self, channels: Iterable[str]) -> asyncio.Future[Any] | None:
        return None

    @property
    def connected(self) -> bool:
        return True

    @property
    def state(self) -> BrokerState:
        """Always `connected`: there is nothing to lose a connection to."""
        return "connected"

    def stats(self) -> dict[str, int]:
        """No counters (the server then reports no `broker_*` ones)."""
        return {}

    async def sync(self, timeout: float | None = None) -> None:
        """Nothing to wait for: subscriptions are in effect at once."""


__all__ = [
    "BROKER_STATES",
    "Broker",
    "BrokerState",
    "BrokerUnavailable",
    "OnMessage",
    "OneProcess",
]
