"""Interest sync and the join barrier.

A broker that subscribes by interest learns when local rooms, users and clients appear and
disappear: the hub records those changes and `sync_interest` forwards them once per loop
iteration. A broker that subscribes per channel also tells when Redis has confirmed a
subscription; a login or a join that needs a new channel then takes effect only once it is
confirmed (at most `subscribe_timeout` later), and meanwhile the client's inbound messages
wait behind it (`queue_if_held`), to be handled in order once it lifts.

The one API of the barrier: `login` and `join` (a client's), `join_by_server` (`join_room`),
`pause` (while an asynchronous validate_room_fn runs), `queue_if_held` (each inbound message),
`forget` (at disconnect) and `live` (whether channels are confirmed). Channels subscribed ahead
of the hub (before a join takes effect) are counted in `_ahead`; no other module touches the
barrier's state.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from .._core import Hub
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
# A login's follow-up: puts the client in the hub; False when it left meanwhile.
Login = Callable[[Client], bool]


def reading(client: Client, on: bool) -> None:
    """Resume or pause reading from a client's socket for its join-barrier queue (other
    reasons may keep it paused: `Pause`)."""
    if on:
        client.resume_reading(Pause.JOIN_QUEUE)
    else:
        client.pause_reading(Pause.JOIN_QUEUE)


def is_join(payload: Any, is_text: bool) -> bool:
    try:
        return decode(payload, is_text).get("event") == _JOIN
    except (InvalidMessage, InvalidText):
        return False


class Held:
    """One client behind a barrier: how many of its barriers are pending, its inbound messages
    queued meanwhile (and their bytes), and the follow-up of its latest barrier (the next one
    runs after it)."""

    __slots__ = ("last", "pending", "queued", "size")

    def __init__(self) -> None:
        self.pending = 0
        self.queued: deque[tuple[bytes, bool]] = deque()
        self.size = 0
        self.last: asyncio.Future[None] | None = None


def _nothing() -> None:
    pass


class JoinBarrier:
    """Interest sync and the join barrier of one helper. `attach` gives it the hub and the
    handler of one inbound message (for the messages held behind a barrier) once they exist;
    `start` the loop, when the helper is configured."""

    def __init__(
        self,
        broker: Broker,
        clients: Mapping[str, Client],
        subscribe_timeout: float,
        queue_limit: int = 1024 * 1024,
    ):
        # A broker that subscribes by interest hears of local rooms/users/clients coming and
        # going; one that also confirms subscriptions makes joins wait for the confirmation.
        self.interest: Callable[[str, bool], Any] | None = (
            broker.interest if broker.wants_interest else None
        )
        self._confirmation: Confirmation | None = (
            broker.confirmation
            if self.interest is not None and broker.confirms_subscriptions
            else None  # patterns (or no Redis): every channel is always live
        )
        # Channels gained then channels lost, in one call per drain.
        self._interest_many: InterestMany | None = (
            broker.interest_many if self.interest is not None else None
        )
        self._subscribe_new: SubscribeNew = broker.subscribe_new
        self._broker = broker
        self._hub: Hub | None = None
        self._handle: Handler | None = None
        self._clients = clients
        self.subscribe_timeout = subscribe_timeout
        self.queue_limit = queue_limit  # bytes a held client may queue before reading pauses
        self._loop: asyncio.AbstractEventLoop | None = None
        self._held: dict[str, Held] = {}
        # Who is held now (read by the inbound path, which tests it before each message).
        self.held: Mapping[str, Held] = self._held
        self._lifts: dict[asyncio.Future[Any], asyncio.Future[bool]] = {}
        self._then: dict[asyncio.Future[bool], Callable[[asyncio.Future[bool]], None]] = {}
        # The logins waiting for one confirmation, in arrival order.
        self._logins: dict[asyncio.Future[bool], list[tuple[Client, list[str], Login]]] = {}
        self._ahead: dict[str, int] = {}
        self.waits = 0
        self.unconfirmed = 0
        self._confirm_late = False

    def attach(self, hub: Hub, handle: Handler) -> None:
        self._hub = hub
        self._handle = handle

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def live(self, channels: list[str]) -> bool:
        """Whether every channel in `channels` is confirmed subscribed (always True when the
        broker does not confirm subscriptions: every channel is live)."""
        confirmation = self._confirmation
        return confirmation is None or confirmation(channels) is None

    # -- interest ------------------------------------------------------------------------

    def on_interest(self) -> None:
        """The hub recorded the first interest change since the last drain."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        loop.call_soon(self.sync_interest)

    def sync_interest(self) -> None:
        """Forward the interest changes the hub recorded since the last drain."""
        interest_many = self._interest_many
        if interest_many is None:
            return
        assert self._hub is not None
        adds, removes = self._hub.drain_interest_channels(
            _ROOM_PREFIX, _USER_PREFIX, _CLIENT_PREFIX
        )
        ahead = self._ahead
        if removes and ahead:
            # A pending join still needs those (released by `_release_early`).
            removes = [channel for channel in removes if channel not in ahead]
        if adds or removes:
            interest_many(adds, removes)

    def _subscribe_early(self, channels: list[str]) -> None:
        """Subscribe `channels` ahead of the hub, for a join that takes effect once Redis
        confirms them; each is held until `_release_early`."""
        interest = self.interest
        assert interest is not None
        ahead = self._ahead
        for channel in channels:
            count = ahead.get(channel, 0)
            ahead[channel] = count + 1
            if not count:
                interest(channel, True)

    def _hold_early(self, channels: list[str]) -> None:
        """`_subscribe_early` for channels the broker wants already (`subscribe_new` with
        `shared`): only held until `_release_early`."""
        ahead = self._ahead
        for channel in channels:
            ahead[channel] = ahead.get(channel, 0) + 1

    def _release_early(self, channels: list[str], joined: bool) -> None:
        """The join that subscribed `channels` early took effect (`joined`: the hub holds
        them now) or never will: give back what neither the hub nor another join holds."""
        interest = self.interest
        assert interest is not None
        ahead = self._ahead
        for channel in channels:
            count = ahead.pop(channel, 1) - 1
            if count:
                ahead[channel] = count
            elif not joined and not self._hub_holds(channel):
                interest(channel, False)

    def _hub_holds(self, channel: str) -> bool:
        """Whether the hub has a local member of `channel` (it reports the channel itself)."""
        hub = self._hub
        assert hub is not None
        if channel.startswith(_ROOM_PREFIX):
            return hub.has_room(channel[len(_ROOM_PREFIX) :])
        if channel.startswith(_USER_PREFIX):
            return bool(hub.user_members(channel[len(_USER_PREFIX) :]))
        client = self._clients.get(channel[len(_CLIENT_PREFIX) :])
        return client is not None and client.state is _AUTHENTICATED

    # -- logins and joins ----------------------------------------------------------------

    def login(self, client: Client, shared: list[str], then: Login) -> None:
        """A login: `then(client)` puts the client in the hub once the channels that reach it
        are confirmed subscribed (its own, new, and `shared`: its default rooms and its
        user's, held against an unsubscribe until then, even when live already), so that a
        message sent to it from another node right after `connected` is not lost. At once
        when the broker does not confirm; at most `subscribe_timeout` later otherwise. The
        logins waiting for one confirmation complete together, in arrival order."""
        if self._confirmation is None:
            then(client)
            return
        client_id = client.id
        waiter = self._subscribe_new([_CLIENT_PREFIX + client_id, _ROOM_PREFIX + client_id], shared)
        if waiter is None:  # the broker is closing
            then(client)
            return
        if shared:
            self._hold_early(shared)
        lifted = self.wait(waiter, self._login_all)
        if lifted.done():  # Redis is known to be unreachable: no wait
            self._count_unconfirmed(lifted)
            self._login(client, shared, then)
            return
        logins = self._logins.get(lifted)
        if logins is None:
            logins = self._logins[lifted] = []
        logins.append((client, shared, then))

    def _login_all(self, lifted: asyncio.Future[bool]) -> None:
        logins = self._logins.pop(lifted, ())
        if lifted.cancelled() or not lifted.result():
            self.unconfirmed += len(logins)  # as `_count_unconfirmed`, once for all
        for client, shared, then in logins:
            self._login(client, shared, then)

    def _login(self, client: Client, shared: list[str], then: Login) -> None:
        if then(client):
            if shared:
                self._release_early(shared, joined=True)
            return
        # It left while its subscriptions were confirmed: give them back.
        if shared:
            self._release_early(shared, joined=False)
        interest = self.interest
        assert interest is not None
        interest(_CLIENT_PREFIX + client.id, False)
        interest(_ROOM_PREFIX + client.id, False)

    def join(self, client: Client, rooms: list[str], then: Callable[[], bool]) -> None:
        """A client's join of `rooms` (validated): `then()` puts it in them (False when it
        cannot any more). At once when every room is live and no earlier join of the client
        is pending; else once Redis confirms the new ones, the client's later messages being
        handled after it, so every message published from then on reaches it."""
        confirmation = self._confirmation
        if confirmation is not None:
            channels = [_ROOM_PREFIX + room for room in rooms]
            waiter = confirmation(channels)
            if waiter is not None:
                self._subscribe_early(channels)
                self._hold(
                    client,
                    self.wait(waiter),
                    lambda: self._release_early(channels, then()),
                )
                return
            if client.id in self._held:
                # Live already, but an earlier join of the client is not: after it.
                self._hold(client, self._done(), then)
                return
        then()

    def join_by_server(
        self, client: Client, room: str, join: Callable[[], bool], then: Callable[[], None]
    ) -> asyncio.Future[bool] | None:
        """`join_room`: `join()` puts the client in `room` at once (False: it was a member);
        `then()` runs once the room is live (in Redis: confirmed), the client's later
        messages being handled after it. None when `join()` did nothing; else the barrier,
        resolved True when confirmed, False past `subscribe_timeout` (done when live)."""
        waiter = None
        confirmation = self._confirmation
        if confirmation is not None:
            channel = _ROOM_PREFIX + room
            assert self._hub is not None and self.interest is not None
            if not self._hub.has_room(room):
                self.interest(channel, True)
            waiter = confirmation([channel])
        if not join():
            return None
        if waiter is None:
            then()
            return self._done()
        lifted = self.wait(waiter)
        self._hold(client, lifted, then)
        return lifted

    def hold(
        self, client: Client, lifted: asyncio.Future[bool], then: Callable[[], Any] = _nothing
    ) -> None:
        """Hold the client's inbound messages until `lifted` (a future that always ends,
        e.g. a presence write bounded by a timeout); then run `then`, in order with the
        client's other barriers."""
        self._hold(client, lifted, then)

    def pause(self, client: Client) -> Callable[[], None]:
        """Hold the client's inbound messages until the returned function is called (while
        an asynchronous validate_room_fn decides on its join)."""
        assert self._loop is not None
        lifted: asyncio.Future[bool] = self._loop.create_future()
        self._hold(client, lifted, _nothing)
        return lambda: lifted.set_result(True)

    # -- inbound messages ----------------------------------------------------------------

    def queue_if_held(self, client: Client, payload: Any, is_text: bool) -> bool:
        """Queue one inbound message of a client behind a barrier (handled in order once it
        lifts; the payload is copied, being valid only during the call) and return True;
        False when the client is not held, or for a join right behind joins, which goes
        ahead (each takes effect once confirmed, so a burst of them costs one Redis round
        trip, not one each)."""
        held = self._held.get(client.id)
        if held is None:
            return False
        queued = held.queued
        if not queued and is_join(payload, is_text):
            return False
        queued.append((bytes(payload), is_text))
        held.size += len(payload)
        if len(queued) >= HELD_LIMIT or held.size >= self.queue_limit:
            reading(client, False)  # TCP pushes back on the client meanwhile
        return True

    def forget(self, client: Client) -> None:
        """The client is gone: drop what it had queued."""
        self._held.pop(client.id, None)

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
        loop = self._loop
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

    def _done(self) -> asyncio.Future[bool]:
        """A barrier already lifted."""
        assert self._loop is not None
        lifted: asyncio.Future[bool] = self._loop.create_future()
        lifted.set_result(True)
        return lifted

    def _count_unconfirmed(self, lifted: asyncio.Future[bool]) -> None:
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

    def _hold(self, client: Client, lifted: asyncio.Future[bool], then: Callable[[], Any]) -> None:
        """Queue the client's inbound messages until `lifted`; then run `then` (after the
        `then` of the client's earlier barriers: joins take effect in order) and handle the
        queued messages in order, once no barrier of the client is pending."""
        held = self._held.get(client.id)
        if held is None:
            held = self._held[client.id] = Held()
        held.pending += 1
        earlier = held.last
        ran: asyncio.Future[None] = lifted.get_loop().create_future()
        held.last = ran

        def run(_: Any = None) -> None:
            try:
                then()
            finally:
                ran.set_result(None)
                self._lift(client, held)

        def done(_: Any) -> None:
            self._count_unconfirmed(lifted)
            if earlier is None or earlier.done():
                run()
            else:
                earlier.add_done_callback(run)

        lifted.add_done_callback(done)

    def _lift(self, client: Client, held: Held) -> None:
        held.pending -= 1
        if held.pending > 0 or self._held.get(client.id) is not held:
            return  # another barrier pending, or the client is gone
        del self._held[client.id]
        messages = held.queued
        reading(client, True)
        handle = self._handle
        assert handle is not None
        while messages:
            if client.state is _DISCONNECTED or client.closing:
                return
            payload, is_text = messages.popleft()
            handle(client, payload, is_text)
            again = self._held.get(client.id)
            if again is not None:
                # That message started a new barrier: the rest waits behind it too, but
                # for the joins right behind it (as in `queue_if_held`).
                while messages and is_join(*messages[0]):
                    handle(client, *messages.popleft())
                again.queued.extendleft(reversed(messages))
                again.size += sum(len(payload) for payload, _ in messages)
                if len(again.queued) >= HELD_LIMIT or again.size >= self.queue_limit:
                    reading(client, False)
                return
