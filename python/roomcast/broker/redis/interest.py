"""Interest: which exact channels the node subscribes to, and when Redis confirmed them.

The server tells `interest(channel, on)` when a room, user or client channel gets its first
local member or loses its last. Changes are flushed at most one batch at a time: those
gathered while a batch is unconfirmed (and for at least FLUSH_SPACING) go out together,
followed by one PING per shard whose answer confirms the whole batch (`confirmation()`), so
the logins and joins of many clients cost one SUBSCRIBE and one round trip. An emptied room
or user channel stays subscribed `unsubscribe_delay` seconds, in case it comes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from ...protocol.constants import WebSocketChannels
from .session import Session, Shard

FLUSH_SPACING = 0.008
"""Least time between two flushes of subscription changes: when busy, each SUBSCRIBE (and
its confirmation) carries the changes of many clients; when idle, a change goes at once.
A flush costs ~150 us of server CPU whatever its size (mostly the write that wakes Redis,
and reading the answers back), so at 5,000 logins/s 8 ms spreads it over ~40 logins
(~4 us each) where 4 ms left ~8 us each; a busy login waits ~2 ms longer on average."""
_CLIENT_PREFIX = WebSocketChannels.CLIENT_PREFIX
_CLOCK_STEP = 0.0005
"""Waits shorter than this are not waited for (half of uvloop's 1 ms clock step)."""


class Interest:
    """The channels wanted, lingering and changed, and the confirmations of their flushes.

    The broker sets `session` while one is up (None otherwise: changes then wait for the
    next session, which subscribes to `channels()` when it opens) and `enabled` to False
    when it closes or does not subscribe by interest.
    """

    def __init__(self, enabled: bool, unsubscribe_delay: float) -> None:
        self.enabled = enabled
        self.unsubscribe_delay = unsubscribe_delay
        self.session: Session | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # Channels with local members, channels kept a while after their last member left
        # (insertion order is expiry order), and those changed since the last flush.
        self.wanted: set[str] = set()
        self.lingering: dict[str, float] = {}
        self.dirty: set[str] = set()
        self._flush_scheduled = False
        # A flush whose SUBSCRIBEs Redis has not confirmed yet: changes wait for it, so
        # those of many clients arriving meanwhile go out together (one command, one PING).
        self._flush_in_flight = False
        self._flushed_at = float("-inf")
        # The future of the next flush (for channels not sent yet), and channels sent whose
        # confirmation (a PING behind them) is still due.
        self._next_flush: asyncio.Future[None] | None = None
        self._unconfirmed: dict[str, asyncio.Future[None]] = {}
        self._flushes_unconfirmed = 0
        self._linger_handle: asyncio.TimerHandle | None = None

    def channels(self) -> list[str]:
        """What a new session subscribes to: every channel wanted or lingering."""
        return [*self.wanted, *self.lingering]

    def interest(self, channel: str, on: bool) -> None:
        """The node got its first local member of `channel` (on) or lost its last (off).
        Changes are sent once per event loop iteration; an emptied room or user channel is
        unsubscribed only `unsubscribe_delay` seconds later, if it stays empty."""
        if on and channel in self.wanted:
            return  # subscribed, or on its way (the common case: checked first)
        if not self.enabled:
            return
        if on:
            self.wanted.add(channel)
            if self.lingering.pop(channel, None) is not None:
                return  # still subscribed
        else:
            self.wanted.discard(channel)
            if self.unsubscribe_delay > 0 and not channel.startswith(_CLIENT_PREFIX):
                # Client ids never come back; rooms and users often do.
                loop = self.loop
                assert loop is not None
                self.lingering.pop(channel, None)
                self.lingering[channel] = loop.time() + self.unsubscribe_delay
                if self._linger_handle is None:
                    self._linger_handle = loop.call_later(
                        self.unsubscribe_delay, self._expire_lingering
                    )
                return
        self.dirty.add(channel)
        if not self._flush_scheduled:
            self._schedule_flush()

    def interest_many(self, adds: list[str], removes: list[str]) -> None:
        """`interest(channel, True)` for each of `adds`, then `interest(channel, False)` for
        each of `removes`. A login's channels are wanted already (`subscribe_new`): then the
        adds cost one set test in all."""
        interest = self.interest
        if adds and not self.wanted.issuperset(adds):
            for channel in adds:
                interest(channel, True)
        for channel in removes:
            interest(channel, False)

    def subscribe_new(
        self, channels: list[str], shared: list[str] | None = None
    ) -> asyncio.Future[Any] | None:
        """Subscribe channels no one on this node has wanted before (a new client's own):
        `interest(channel, True)` for each, and the future of the flush that will confirm
        them, as `confirmation()` would return (None when there is nothing to wait for).
        `shared` (a login's user and default rooms, which other clients may hold): wanted
        from now on too, and the future also covers their confirmation, all in one call."""
        if not self.enabled:
            return None
        wanted = self.wanted
        wanted.update(channels)
        self.dirty.update(channels)
        next_flush = self._next_flush
        if next_flush is None:
            next_flush = self._next()
        if not self._flush_scheduled:
            self._schedule_flush()
        if not shared:
            return next_flush
        session = self.session
        one = session.shards[0].subscribed if session and session.slot_map is None else None
        unconfirmed = self._unconfirmed
        other: asyncio.Future[Any] | None = None
        for channel in shared:
            if channel not in wanted:
                self.interest(channel, True)  # dirty now, unless it was lingering
            if one is not None:
                sent = channel in one
            else:
                sent = session is not None and channel in session.shard_for(channel).subscribed
            if not sent:
                continue  # goes out with `next_flush` (or the next session)
            if unconfirmed:
                waiting = unconfirmed.get(channel)
                if waiting is not None and waiting is not next_flush and not waiting.done():
                    if other is None:
                        other = waiting
                    elif other is not waiting:  # rare: several flushes to wait for
                        late = self.confirmation(shared)
                        return next_flush if late is None else asyncio.gather(next_flush, late)
        if other is None:
            return next_flush
        return asyncio.gather(next_flush, other)

    def confirmation(self, channels: Iterable[str]) -> asyncio.Future[Any] | None:
        """None when Redis has confirmed a subscription to every one of `channels` (the
        fast path: nothing to wait for); otherwise a future resolved once it has. Call
        `interest(channel, True)` first for channels nobody wanted yet. Channels sent in
        the same event loop iteration share one command and one confirmation. While Redis
        is unreachable the future resolves when a new session has subscribed again; callers
        bound the wait themselves. Never fails; patterns (and the emitter) need no wait."""
        if not self.enabled:
            return None
        session = self.session
        unconfirmed = self._unconfirmed
        waits: list[asyncio.Future[Any]] = []
        unsent = False
        one = session.shards[0].subscribed if session and session.slot_map is None else None
        for channel in channels:
            if one is not None:
                sent = channel in one
            else:
                sent = session is not None and channel in session.shard_for(channel).subscribed
            if not sent:
                unsent = True
            elif unconfirmed:
                waiting = unconfirmed.get(channel)
                if waiting is not None and not waiting.done() and waiting not in waits:
                    waits.append(waiting)
        if unsent:
            waits.append(self._next_flush or self._next())
            if not self._flush_scheduled:
                self._schedule_flush()
        if not waits:
            return None
        if len(waits) == 1:
            return waits[0]
        return asyncio.gather(*waits)

    def attach(self, session: Session) -> None:
        """A new session is up, subscribed (confirmed) to every channel wanted when it
        opened. What the old one left unconfirmed is live now, or goes out with the next
        flush."""
        self.session = session
        self._flush_in_flight = False
        self._flush_scheduled = False  # a flush held for the old session's confirmation
        pending, self._unconfirmed = self._unconfirmed, {}
        self._flushes_unconfirmed = 0
        late: set[asyncio.Future[None]] = set()
        for channel, waiting in pending.items():
            if waiting.done():
                continue
            if channel not in session.shard_for(channel).subscribed:
                self.dirty.add(channel)
                late.add(waiting)
        for waiting in set(pending.values()):
            if waiting.done():
                continue
            if waiting in late:
                self._next().add_done_callback(_resolver(waiting))
            else:
                waiting.set_result(None)
        if self.dirty or self._next_flush is not None:
            self._schedule_flush()

    def close(self) -> None:
        """Closing: nobody may wait for a confirmation any more, nothing is flushed."""
        self.enabled = False
        if self._linger_handle is not None:
            self._linger_handle.cancel()
            self._linger_handle = None
        for waiting in [*self._unconfirmed.values(), self._next_flush]:
            if waiting is not None and not waiting.done():
                waiting.set_result(None)
        self._unconfirmed.clear()
        self._next_flush = None

    def _next(self) -> asyncio.Future[None]:
        if self._next_flush is None:
            assert self.loop is not None
            self._next_flush = self.loop.create_future()
        return self._next_flush

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self.loop is not None:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self, force: bool = False) -> None:
        """Send the subscription changes accumulated since the last flush, then one PING per
        shard written to: its answer confirms every SUBSCRIBE before it. While a flush is
        unconfirmed, the next waits for it (unless forced)."""
        self._flush_scheduled = False
        session = self.session
        if session is None:
            return  # kept for the next session, which compares with what it subscribed
        if self._flush_in_flight and not force:
            # `_confirm` flushes again; until then changes need not schedule a flush each
            # (a login per loop iteration would otherwise cost a no-op call each).
            self._flush_scheduled = True
            return
        loop = self.loop
        assert loop is not None
        if self.dirty and not force:
            wait = self._flushed_at + FLUSH_SPACING - loop.time()
            # uvloop's clock and timers have 1 ms steps: a wait of a rounding error would
            # come back at once, every loop iteration, until the clock ticks.
            if wait > _CLOCK_STEP:  # busy: gather a few more clients' changes first
                self._flush_scheduled = True
                loop.call_later(wait, self.flush)
                return
        waiting, self._next_flush = self._next_flush, None
        if not self.dirty:
            if waiting is not None and not waiting.done():
                waiting.set_result(None)
            return
        subscribe, unsubscribe = self._changes(session)
        self.dirty.clear()
        for shard, channels in unsubscribe:
            shard.send_subscriptions(channels, False, wake=False)
        if not subscribe:
            for shard, _ in unsubscribe:
                shard.push()
            if waiting is not None and not waiting.done():
                waiting.set_result(None)
            return
        if waiting is None:
            waiting = loop.create_future()
        sent: list[str] = []
        barriers = []
        flushed = waiting
        one = len(subscribe) == 1  # then its PING's answer confirms the flush right away
        for shard, channels in subscribe:
            shard.send_subscriptions(channels, True, wake=False)
            then = (lambda: self._confirmed(flushed)) if one else None
            barriers.append(shard.barrier(wake=False, then=then))
            sent += channels
        # One write per shard: its unsubscribes, subscribes and PING together.
        for shard, _ in unsubscribe:
            shard.push()
        for shard, _ in subscribe:
            shard.push()
        self._unconfirmed.update(dict.fromkeys(sent, waiting))
        self._flushes_unconfirmed += 1
        self._flush_in_flight = True
        self._flushed_at = loop.time()
        if not one:
            confirmed = asyncio.gather(*barriers)
            confirmed.add_done_callback(lambda done: self._confirm(flushed, done))

    def _changes(
        self, session: Session
    ) -> tuple[list[tuple[Shard, list[str]]], list[tuple[Shard, list[str]]]]:
        """The dirty channels to subscribe and to unsubscribe, by shard."""
        wanted, lingering, dirty = self.wanted, self.lingering, self.dirty
        if session.slot_map is None:  # one node: no slot look-up per channel
            only = session.shards[0]
            subscribed = only.subscribed
            # Set operations: no Python step per channel (logins make many new ones).
            kept = dirty & wanted
            if lingering:
                kept |= lingering.keys() & dirty
            on = list(kept - subscribed)
            off = list(dirty.intersection(subscribed).difference(kept))
            return ([(only, on)] if on else []), ([(only, off)] if off else [])
        subscribe: dict[int, tuple[Shard, list[str]]] = {}
        unsubscribe: dict[int, tuple[Shard, list[str]]] = {}
        for channel in dirty:
            shard = session.shard_for(channel)
            want = channel in wanted or channel in lingering
            if want and channel not in shard.subscribed:
                subscribe.setdefault(id(shard), (shard, []))[1].append(channel)
            elif not want and channel in shard.subscribed:
                unsubscribe.setdefault(id(shard), (shard, []))[1].append(channel)
        return list(subscribe.values()), list(unsubscribe.values())

    def _confirm(self, waiting: asyncio.Future[None], done: asyncio.Future[Any]) -> None:
        """A flush's PINGs came back: its channels are live. If the session failed first,
        they stay unconfirmed until the next session has subscribed again (`attach`)."""
        if done.cancelled() or done.exception() is not None:
            return
        self._confirmed(waiting)

    def _confirmed(self, waiting: asyncio.Future[None]) -> None:
        """`_confirm` once every PING of the flush was answered."""
        self._flush_in_flight = False
        self._flush_scheduled = False  # held while in flight (see `flush`)
        if self.dirty or self._next_flush is not None:
            self._schedule_flush()
        if not waiting.done():
            waiting.set_result(None)
        self._flushes_unconfirmed -= 1
        if not self._flushes_unconfirmed:
            self._unconfirmed.clear()  # all done (entries of done flushes count as confirmed)

    def _expire_lingering(self) -> None:
        self._linger_handle = None
        loop = self.loop
        assert loop is not None
        now = loop.time()
        lingering = self.lingering
        while lingering:
            channel, until = next(iter(lingering.items()))
            if until > now:
                self._linger_handle = loop.call_later(until - now, self._expire_lingering)
                break
            del lingering[channel]
            self.dirty.add(channel)
        self._schedule_flush()


def _resolver(waiting: asyncio.Future[None]) -> Callable[[asyncio.Future[None]], None]:
    """A done-callback that resolves `waiting` too (unless it is already)."""

    def resolve(_: asyncio.Future[None]) -> None:
        if not waiting.done():
            waiting.set_result(None)

    return resolve


__all__ = ["FLUSH_SPACING", "Interest"]
