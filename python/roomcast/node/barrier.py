"""Interest sync and the join barrier.

A broker that subscribes by interest learns when local rooms, users and clients appear and
disappear: the hub records those changes and `sync_interest` forwards them once per loop
iteration. A broker that subscribes per channel also tells when Redis has confirmed a
subscription; a login or a join that needs a new channel then takes effect only once it is
confirmed (at most `subscribe_timeout` later), and meanwhile the client's inbound messages
wait in `held` (id -> [barriers pending, messages, last `then`]). Channels subscribed ahead of
the hub (before the join takes effect) are counted in `ahead`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from .. import _core
from ..broker.protocol import Broker
from ..protocol.constants import WebSocketChannels, WebSocketEvents
from ..protocol.messages import InvalidMessage, InvalidText, decode
from ..protocol.session import State
from ..transport.connection import Client, Pause

logger = logging.getLogger("roomcast")

# Messages a client may queue behind a join barrier before its socket stops being read
# (and `join_queue_limit`, their bytes).
HELD_LIMIT = 256

_ROOM_PREFIX = WebSocketChannels.ROOM_PREFIX
_USER_PREFIX = WebSocketChannels.USER_PREFIX
_CLIENT_PREFIX = WebSocketChannels.CLIENT_PREFIX
_JOIN = WebSocketEvents.JOIN
_AUTHENTICATED = State.AUTHENTICATED
_DISCONNECTED = State.DISCONNECTED

Confirmation = Callable[[list[str]], "asyncio.Future[Any] | None"]
SubscribeNew = Callable[[list[str], list[str] | None], "asyncio.Future[Any] | None"]
InterestMany = Callable[[list[str], list[str]], None]
Handler = Callable[[Client, Any, bool], None]


def reading(client: Client, on: bool) -> None:
    """Resume or pause reading from a client's socket for its join-barrier queue."""
    if on:
        client.resume_reading(Pause.JOIN_QUEUE)
    else:
        client.pause_reading(Pause.JOIN_QUEUE)


def is_join(payload: Any, is_text: bool) -> bool:
    try:
        return decode(payload, is_text).get("event") == _JOIN
    except (InvalidMessage, InvalidText):
        return False


class JoinBarrier:
    """Interest sync and the join barrier of one helper. `handle` handles one inbound message
    (for the messages held behind a barrier); `hub` is set once the hub exists and `loop`
    when the helper is configured."""

    def __init__(
        self,
        broker: Broker,
        clients: dict[str, Client],
        handle: Handler,
        subscribe_timeout: float,
        queue_limit: int = 1024 * 1024,
    ) -> None:
        # A broker that subscribes by interest hears of local rooms/users/clients coming and
        # going; one that also confirms subscriptions makes joins wait for the confirmation.
        self.interest: Callable[[str, bool], Any] | None = (
            broker.interest if broker.wants_interest else None
        )
        self.confirmation: Confirmation | None = (
            broker.confirmation
            if self.interest is not None and broker.confirms_subscriptions
            else None  # patterns (or no Redis): every channel is always live
        )
        # Channels gained then channels lost, in one call per drain.
        self.interest_many: InterestMany | None = (
            broker.interest_many if self.interest is not None else None
        )
        self.subscribe_new: SubscribeNew = broker.subscribe_new
        self._broker = broker
        self.hub: _core.Hub  # set by the helper once the hub exists (it needs `interest`)
        self._clients = clients
        self._handle = handle
        self.subscribe_timeout = subscribe_timeout
        self.queue_limit = queue_limit
        self.loop: asyncio.AbstractEventLoop | None = None
        self.held: dict[str, list[Any]] = {}
        self._lifts: dict[asyncio.Future[Any], asyncio.Future[bool]] = {}
        self._then: dict[asyncio.Future[bool], Callable[[asyncio.Future[bool]], None]] = {}
        self.ahead: dict[str, int] = {}
        self.waits = 0
        self.unconfirmed = 0
        self._confirm_late = False

    # -- interest ------------------------------------------------------------------------

    def sync_interest(self) -> None:
        """Forward the interest changes the hub recorded since the last drain."""
        interest_many = self.interest_many
        if interest_many is None:
            return
        adds, removes = self.hub.drain_interest_channels(_ROOM_PREFIX, _USER_PREFIX, _CLIENT_PREFIX)
        ahead = self.ahead
        if removes and ahead:
            # A pending join still needs those (released by `release_early`).
            removes = [channel for channel in removes if channel not in ahead]
        if adds or removes:
            interest_many(adds, removes)

    def subscribe_early(self, channels: list[str]) -> None:
        """Subscribe `channels` ahead of the hub, for a join that takes effect once Redis
        confirms them; each is held until `release_early`."""
        interest = self.interest
        assert interest is not None
        ahead = self.ahead
        for channel in channels:
            count = ahead.get(channel, 0)
            ahead[channel] = count + 1
            if not count:
                interest(channel, True)

    def hold_early(self, channels: list[str]) -> None:
        """`subscribe_early` for channels the broker wants already (`subscribe_new` with
        `shared`): only held until `release_early`."""
        ahead = self.ahead
        for channel in channels:
            ahead[channel] = ahead.get(channel, 0) + 1

    def release_early(self, channels: list[str], joined: bool) -> None:
        """The join that subscribed `channels` early took effect (`joined`: the hub holds
        them now) or never will: give back what neither the hub nor another join holds."""
        interest = self.interest
        assert interest is not None
        ahead = self.ahead
        for channel in channels:
            count = ahead.pop(channel, 1) - 1
            if count:
                ahead[channel] = count
            elif not joined and not self._hub_holds(channel):
                interest(channel, False)

    def _hub_holds(self, channel: str) -> bool:
        """Whether the hub has a local member of `channel` (it reports the channel itself)."""
        hub = self.hub
        if channel.startswith(_ROOM_PREFIX):
            return hub.has_room(channel[len(_ROOM_PREFIX) :])
        if channel.startswith(_USER_PREFIX):
            return bool(hub.user_members(channel[len(_USER_PREFIX) :]))
        client = self._clients.get(channel[len(_CLIENT_PREFIX) :])
        return client is not None and client.state is _AUTHENTICATED

    # -- the barrier ---------------------------------------------------------------------

    def wait(
        self,
        waiter: asyncio.Future[Any],
        then: Callable[[asyncio.Future[bool]], None] | None = None,
    ) -> asyncio.Future[bool]:
        """A future resolved True once `waiter` (a broker confirmation) is, or False after
        `subscribe_timeout` or at once while Redis is unreachable: no one waits longer.
        Everyone waiting for one confirmation shares it (and its timer); do not cancel it.
        `then(lifted)` runs as soon as it is resolved, before its done-callbacks (a loop
        iteration later): once per future however many callers pass it (the logins of a
        flush), and not at all for a future returned done."""
        lifted = self._lifts.get(waiter)
        if lifted is not None:
            self.waits += 1
            if then is not None and lifted not in self._then:
                self._then[lifted] = then
            return lifted
        loop = self.loop
        assert loop is not None
        lifted = loop.create_future()
        if not self._broker.connected:
            self._unconfirmed_join("redis is unreachable")
            lifted.set_result(False)
            return lifted
        self.waits += 1
        self._lifts[waiter] = lifted
        if then is not None:
            self._then[lifted] = then

        def confirmed(_: Any) -> None:
            self._lifts.pop(waiter, None)
            if lifted.done():
                return
            timer.cancel()
            if self._confirm_late:
                self._confirm_late = False
                logger.warning("redis confirms subscriptions again")
            lifted.set_result(True)
            self._run_then(lifted)

        def late() -> None:
            self._lifts.pop(waiter, None)
            if not lifted.done():
                self._unconfirmed_join(f"no confirmation within {self.subscribe_timeout:g} s")
                lifted.set_result(False)
                self._run_then(lifted)

        timer = loop.call_later(self.subscribe_timeout, late)
        waiter.add_done_callback(confirmed)
        return lifted

    def _run_then(self, lifted: asyncio.Future[bool]) -> None:
        then = self._then.pop(lifted, None)
        if then is not None:
            try:
                then(lifted)
            except Exception:
                logger.exception("a barrier's follow-up raised")

    def done(self) -> asyncio.Future[bool]:
        """A barrier already lifted."""
        assert self.loop is not None
        lifted: asyncio.Future[bool] = self.loop.create_future()
        lifted.set_result(True)
        return lifted

    def count_unconfirmed(self, lifted: asyncio.Future[bool]) -> None:
        if lifted.cancelled() or not lifted.result():
            self.unconfirmed += 1

    def _unconfirmed_join(self, reason: str) -> None:
        """Logins and joins go ahead unconfirmed: logged once per outage."""
        if not self._confirm_late:
            self._confirm_late = True
            logger.warning(
                "redis subscriptions unconfirmed (%s): logins and joins go ahead without "
                "waiting; messages from other nodes reach them once redis answers",
                reason,
            )

    def queue_if_held(self, client: Client, payload: Any, is_text: bool) -> bool:
        """Queue a message of a client behind a join barrier (True), to be handled in order
        once it lifts; past HELD_LIMIT messages or `queue_limit` bytes, the client's socket
        is not read meanwhile. Joins right behind joins go ahead (False): each takes effect
        once confirmed, so a burst of them costs one Redis round trip, not one each."""
        held = self.held.get(client.id)
        if held is None or (not held[1] and is_join(payload, is_text)):
            return False
        queued = held[1]
        queued.append((bytes(payload), is_text))  # the payload is only valid during the call
        held[3] += len(payload)
        if len(queued) >= HELD_LIMIT or held[3] >= self.queue_limit:
            reading(client, False)  # TCP pushes back on the client meanwhile
        return True

    def hold(self, client: Client, lifted: asyncio.Future[bool], then: Callable[[], Any]) -> None:
        """Queue the client's inbound messages until `lifted`; then run `then` (after the
        `then` of the client's earlier barriers: joins take effect in order) and handle the
        queued messages in order, once no barrier of the client is pending."""
        held = self.held.get(client.id)
        if held is None:
            # pending, queued, last `then`, bytes queued
            held = self.held[client.id] = [0, deque(), None, 0]
        held[0] += 1
        earlier: asyncio.Future[None] | None = held[2]
        ran: asyncio.Future[None] = lifted.get_loop().create_future()
        held[2] = ran

        def run(_: Any = None) -> None:
            try:
                then()
            finally:
                ran.set_result(None)
                self._lift(client, held)

        def done(_: Any) -> None:
            self.count_unconfirmed(lifted)
            if earlier is None or earlier.done():
                run()
            else:
                earlier.add_done_callback(run)

        lifted.add_done_callback(done)

    def _lift(self, client: Client, held: list[Any]) -> None:
        held[0] -= 1
        if held[0] > 0 or self.held.get(client.id) is not held:
            return  # another barrier pending, or the client is gone
        del self.held[client.id]
        messages: deque[tuple[bytes, bool]] = held[1]
        reading(client, True)
        handle = self._handle
        while messages:
            if client.state is _DISCONNECTED or client.closing:
                return
            payload, is_text = messages.popleft()
            handle(client, payload, is_text)
            again = self.held.get(client.id)
            if again is not None:
                # That message started a new barrier: the rest waits behind it too, but
                # for the joins right behind it (as in the helper's `_on_message`).
                while messages and is_join(*messages[0]):
                    handle(client, *messages.popleft())
                again[1].extendleft(reversed(messages))
                again[3] += sum(len(payload) for payload, _ in messages)
                if len(again[1]) >= HELD_LIMIT or again[3] >= self.queue_limit:
                    reading(client, False)
                return
