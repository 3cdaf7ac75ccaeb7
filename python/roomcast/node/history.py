"""History rooms (SPEC §10): numbered delivery, `joined`, and recovery on join.

Whether a room keeps history is decided once per room name (`RoomGlob` caches the glob's
answer), so rooms without history pay one attribute test on the fan-out path and nothing
else. The store sits behind the broker seam (`roomcast.broker.history`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from .._core import Hub
from ..broker.history import Entry, HistoryStore, MemoryHistory
from ..broker.memory import MemoryBroker
from ..broker.protocol import Broker
from ..broker.redis.history import HistoryUnavailable, RedisHistory
from ..broker.redis.settings import keep_settings
from ..log import client_extra
from ..protocol.constants import WebSocketChannels, WebSocketMessageTypes
from ..protocol.messages import (
    MISSING,
    Envelope,
    RoomGlob,
    decode_envelope,
    encode,
    encode_envelope,
    history_frame,
)
from ..transport.connection import Client
from .replay import send_paced
from .sender import Sender
from .tasks import Tasks

logger = logging.getLogger("roomcast")

JOINED = "joined"
# Why a `joined` says `recovered: false` when it is not the history's answer (a `reason`).
UNAVAILABLE = "history unavailable"
TOO_SLOW = "client too slow"
RESET = "history reset during recovery"
# Sealed replays are not paced: one past half the pacing step is not sent (never cut short).
SEALED_TOO_LARGE = "replay too large for an encrypted session"
# Reads of a room's position again when its epoch changed while a recovery was read.
REREADS = 2
# Unnumbered messages to a history room are logged once per spell: again only after this
# many seconds without one.
UNNUMBERED_QUIET = 60
# Presence events: plain messages even in a history room (`roomcast.presence`).
PRESENCE_EVENTS = frozenset({"presence-join", "presence-leave"})
_NO_ONE: frozenset[str] = frozenset()


def _entry_message(entry: Entry) -> dict[str, Any]:
    message: dict[str, Any] = {"event": entry.event}
    if entry.data is not MISSING:
        message["data"] = entry.data
    message["offset"] = entry.offset
    if entry.exclude:
        message["exclude"] = sorted(entry.exclude)
    return message


def _envelope_message(raw: bytes) -> dict[str, Any] | None:
    envelope = decode_envelope(raw)
    if envelope is None or envelope.offset is None:
        return None
    message: dict[str, Any] = {"event": envelope.event}
    if envelope.data is not MISSING:
        message["data"] = envelope.data
    message["offset"] = envelope.offset
    if envelope.exclude:
        message["exclude"] = envelope.exclude
    return message


class History:
    """The history rooms of one helper: `is_history` (None until `start` finds a glob in the
    options, then whether a room keeps history), the store, numbering and recovery.

    A room's offset order, the live messages held while a member's recovery is read and the
    floors after it (a late live copy of a recovered message is not sent again) are the
    hub's: `send_history`, `hold_history`, `take_held`, `release_history`
    (rust/core/src/history.rs). Recoveries are paced against the client's socket
    (`roomcast.node.replay`); every Redis call has `history_timeout`."""

    def __init__(
        self,
        hub: Hub,
        sender: Sender,
        broker: Broker,
        server_id: str,
        tasks: Tasks,
        options: Mapping[str, Any],
    ) -> None:
        self._hub = hub
        self._sender = sender
        self._broker = broker
        self._server_id = server_id
        self._tasks = tasks
        self._options = options
        self.is_history: RoomGlob | None = None
        self._store: HistoryStore | None = None  # in this process (memory broker)
        # In redis: numbered by the script, delivered on receipt.
        self._remote: RedisHistory | None = None
        self._unnumbered = 0  # history room messages that came without an offset
        self._unnumbered_at = -float("inf")  # when the last one came (monotonic)
        self._resets: set[tuple[str, str]] = set()  # (room, epoch) whose reset is under way

    def start(self) -> None:
        """At configure: the store the options and the broker call for, if any room keeps
        history."""
        options = self._options
        glob = options["history_rooms"]
        if glob is None:
            return
        size, ttl = int(options["history_size"]), options["history_ttl"]
        broker = self._broker
        if isinstance(broker, MemoryBroker):
            self._store = MemoryHistory(size, ttl)
        else:
            from ..broker.redis import RedisBroker

            if not isinstance(broker, RedisBroker) or broker.sharded:
                raise ValueError(
                    "history_rooms needs the memory:// broker or redis with classic pub/sub "
                    "(not sharded)"
                )
            self._remote = RedisHistory(
                broker.target,
                size,
                ttl,
                timeout=float(options["history_timeout"]),
                queue_limit=int(options["history_queue_limit"]),
                on_unnumbered=self._unnumbered_own,
            )
            # The emitter reads them (`roomcast.broker.redis.settings`).
            loop = asyncio.get_running_loop()
            self._remote.own(loop.create_task(keep_settings(self._remote, glob)))
        self.is_history = RoomGlob(glob)

    @property
    def store(self) -> HistoryStore | RedisHistory | None:
        """Where the rooms' history is kept (None before `start` or without history rooms)."""
        return self._store if self._remote is None else self._remote

    @property
    def in_redis(self) -> bool:
        """Whether messages are numbered (and published) by Redis, not by this node."""
        return self._remote is not None

    async def close(self) -> None:
        if self._remote is not None:
            await self._remote.close()

    async def read(
        self, room: str, since: tuple[str, int] | None, limit: int | None
    ) -> dict[str, Any]:
        """See `WebSocketServerHelper.history`."""
        is_history = self.is_history
        if is_history is None or not is_history(room):
            raise ValueError(f"not a history room: {room}")
        recovered: bool | None = None
        remote = self._remote
        if remote is None:
            store = self._store
            assert store is not None
            if since is None:
                epoch, offset, entries = store.kept(room)
            else:
                epoch, offset = store.position(room)
                found = store.since(room, *since)
                recovered = found is not None
                entries = found or []
            messages = [_entry_message(e) for e in entries]
        else:
            if since is None:
                epoch, offset, raws = await remote.kept(room)
                if not epoch:  # never written: the room's first epoch starts now
                    epoch, offset, _ = await remote.read(room, None, 0)
            else:
                epoch, offset, found_raw = await remote.read(room, *since)
                recovered = found_raw is not None
                raws = found_raw or []
            messages = [m for m in map(_envelope_message, raws) if m is not None]
        if limit is not None:
            messages = messages[:limit] if since is not None else messages[-limit:]
        answer: dict[str, Any] = {"room": room, "epoch": epoch, "offset": offset}
        if recovered is not None:
            answer["recovered"] = recovered
        answer["messages"] = messages
        return answer

    def send(self, room: str, event: str, data: Any, exclude: list[str] | None) -> int:
        """Number and keep one room message, then deliver it to the local members (in redis:
        the script publishes it, and every node, this one too, delivers it on receipt)."""
        remote = self._remote
        if remote is not None:
            envelope = encode_envelope(
                self._server_id, WebSocketMessageTypes.ROOM, event, data, room, exclude
            )
            remote.publish(room, WebSocketChannels.for_room(room), envelope)
            return 0
        store = self._store
        assert store is not None
        epoch, entry = store.append(
            room,
            event,
            data,
            frozenset(exclude) if exclude else _NO_ONE,
            lambda offset: history_frame(event, data, room, offset),
        )
        return self._sender.numbered(room, epoch, entry.offset, entry.frame, exclude, event, data)

    def joined(
        self, client: Client, rooms: Sequence[str], recover: dict[str, tuple[str, int]]
    ) -> None:
        """After a client's join: per history room among `rooms` (just joined), the
        recovered messages if asked and possible, then `joined`."""
        is_history, store = self.is_history, self._store
        assert is_history is not None
        one = self._sender.one
        for room in rooms:
            if not is_history(room):
                continue
            if store is None:  # redis: held from now on, read, then released in order
                self._hub.hold_history(client.handle, room)
                self._tasks.spawn(self._recover(client, room, recover.get(room)))
                continue
            epoch, offset = store.position(room)
            wanted = recover.get(room)
            entries = None if wanted is None else store.since(room, *wanted)
            recovered = entries is not None
            replay = [
                (e.offset, e.frame, e.event, e.data)
                for e in entries or ()
                if client.id not in e.exclude
            ]
            reason = None
            if client.encrypted and self._sealed_too_large(replay):
                replay, recovered, reason = [], False, SEALED_TOO_LARGE
            if not client.encrypted and sum(len(r[1]) for r in replay) > self._step_limit():
                # More than the socket may hold at once: paced, live messages held meanwhile.
                self._hub.hold_history(client.handle, room)
                self._tasks.spawn(self._finish(client, room, epoch, offset, replay, recovered))
                continue
            for entry_offset, frame, event, message in replay:
                one(client, frame, event, message, (room, entry_offset))
            data: dict[str, Any] = {
                "room": room,
                "epoch": epoch,
                "offset": offset,
                "recovered": recovered,
            }
            if reason:
                data["reason"] = reason
            one(client, encode(JOINED, data), JOINED, data)

    def on_envelope(self, room: str, envelope: Envelope) -> bool:
        """A history room's envelope: in redis, numbered (by the script), or not (from a
        node or emitter that does not number it: delivered live as a plain message).
        Presence events are plain messages on any broker. False: not handled here (from
        another helper on the memory broker: `send_to_room` numbers it in this one)."""
        if self._remote is None and envelope.event not in PRESENCE_EVENTS:
            return False
        if envelope.offset is not None:
            self._deliver_numbered(room, envelope)
        elif envelope.server_id != self._server_id:
            self._deliver_unnumbered(room, envelope)
        return True

    def _deliver_unnumbered(self, room: str, envelope: Envelope, why: str | None = None) -> None:
        """As a plain room message: no offset, not kept. Presence events are meant so; any
        other is counted (`stats()["history_unnumbered"]`) and logged once per spell."""
        event = envelope.event
        if event not in PRESENCE_EVENTS:
            self._count_unnumbered(room, envelope.server_id, why)
        self._sender.room(room, event, envelope.data, envelope.exclude)

    def _count_unnumbered(self, room: str, sender: str, why: str | None = None) -> None:
        self._unnumbered += 1
        now = time.monotonic()
        if now - self._unnumbered_at > UNNUMBERED_QUIET:
            logger.warning(
                "message to history room %s without an offset (%s) delivered as a plain "
                "message, not kept; such messages are counted in "
                "stats()['history_unnumbered'] and logged again after %d s without one",
                room,
                why
                or f"from {sender}: a node or emitter that does not number it, e.g. the "
                "original's, or an emitter without the history settings",
                UNNUMBERED_QUIET,
            )
        self._unnumbered_at = now

    def _unnumbered_own(self, room: str, channel: str, raw: bytes) -> None:
        """A message of this node's the store could not number in time (Redis down or too
        slow, the writer's queue full): live to the local members without an offset, and to
        the other nodes' through the broker (which they deliver unnumbered too)."""
        envelope = decode_envelope(raw)
        if envelope is None:
            return
        self._deliver_unnumbered(room, envelope, "redis history did not number it in time")
        self._broker.publish(channel, raw)

    def stats(self) -> dict[str, int]:
        """For `stats()`: history messages delivered without an offset, history writes
        dropped (redis unreachable)."""
        if self.is_history is None:
            return {}
        remote = self._remote
        dropped = 0 if remote is None else remote.failed
        return {"history_unnumbered": self._unnumbered, "history_dropped": dropped}

    def _deliver_numbered(self, room: str, envelope: Envelope) -> None:
        """A history room's message from redis (from any node, this one included): to the
        local members in the room's offset order, except the excluded, those whose recovery
        is being read (held for them) and those that already have it (the hub decides)."""
        offset = envelope.offset
        assert offset is not None
        event, data = envelope.event, envelope.data
        frame = history_frame(event, data, room, offset)
        epoch = envelope.epoch or ""
        if self._sender.numbered(room, epoch, offset, frame, envelope.exclude, event, data) < 0:
            self._rolled_back(room, epoch, envelope)

    def _rolled_back(self, room: str, epoch: str, envelope: Envelope) -> None:
        """The room's offsets went back under `epoch` (a restore, a replica promoted before
        it caught up): the message goes out live without an offset, and the room gets a new
        epoch (once, whichever node sees it first), so no client recovers across the two."""
        self._deliver_unnumbered(room, envelope, f"its offset went back under epoch {epoch}")
        remote = self._remote
        if remote is None or (room, epoch) in self._resets:
            return
        self._resets.add((room, epoch))
        self._tasks.spawn(self._reset(remote, room, epoch))

    async def _reset(self, remote: RedisHistory, room: str, epoch: str) -> None:
        try:
            new = await remote.reset(room, epoch)
            logger.warning(
                "history room %s went back under epoch %s (a restore or a failover): now in "
                "epoch %s, so clients recovering from before get recovered: false",
                room,
                epoch,
                new,
            )
        except Exception as exc:
            logger.warning("history room %s: new epoch not started: %s", room, exc)
        finally:
            self._resets.discard((room, epoch))

    def _sealed_too_large(self, replay: list[tuple[int, bytes, str, Any]]) -> bool:
        """Whether a replay to an encrypted client is too large to queue at once: sealed
        messages are not paced, and sealing may double their size."""
        return sum(len(r[1]) for r in replay) > self._step_limit() // 2

    def _step_limit(self) -> int:
        """Bytes of a replay queued at once without pacing: half the backpressure limit."""
        return int(self._options["backpressure_limit"]) // 2

    async def _recover(self, client: Client, room: str, wanted: tuple[str, int] | None) -> None:
        """A recovery in redis: the read (within `history_timeout`; again when the room's
        epoch changed meanwhile), then `_finish`."""
        remote = self._remote
        assert remote is not None
        hub = self._hub
        epoch, offset = "", 0
        messages: list[bytes] | None = None
        reason: str | None = None
        try:
            for _ in range(1 + REREADS):
                epoch, offset, messages = await remote.read(room, *(wanted or (None, 0)))
                seen = hub.held_epoch(client.handle, room)
                if seen is None or seen == epoch:
                    break
            else:
                raise HistoryUnavailable(f"its epoch kept changing (now {seen})")
            if wanted is None:
                messages = None
        except Exception as exc:
            logger.warning(
                "history of room %s unreadable for %s: %s",
                room,
                client.id,
                exc,
                extra=client_extra(client),
            )
            epoch, offset, messages, reason = "", 0, None, UNAVAILABLE
        except BaseException:  # cancelled: stop holding
            hub.hold_history(client.handle, room, False)
            raise
        if not client.live or not hub.in_room(client.handle, room):
            return  # the hub forgot what it held when the client left the room
        if not epoch:  # unreadable: start from the first message held
            first = hub.held_first(client.handle, room)
            if first is not None:
                epoch, offset = first[0], first[1] - 1
        replay = []
        for raw in messages or ():
            old = decode_envelope(raw)
            if old is None or old.offset is None:
                continue
            if client.id not in (old.exclude or ()):
                frame = history_frame(old.event, old.data, room, old.offset)
                replay.append((old.offset, frame, old.event, old.data))
        await self._finish(client, room, epoch or "", offset, replay, messages is not None, reason)

    async def _finish(
        self,
        client: Client,
        room: str,
        epoch: str,
        offset: int,
        replay: list[tuple[int, bytes, str, Any]],
        recovered: bool,
        reason: str | None = None,
    ) -> None:
        """The end of a recovery whose live messages are held: the replay (paced for a
        plaintext client), `joined`, then the held messages after `offset` in offset order,
        once each, paced too, and the hold released. `reason` says why it is not
        `recovered` when that is not the history's answer. A client too slow for its replay
        gets the part that fit, then `joined` with `recovered: false` and that reason; one
        whose room began a new epoch meanwhile, `joined` at the new epoch's first message
        held, `recovered: false`."""
        hub, one = self._hub, self._sender.one
        handle = client.handle
        limit = int(self._options["backpressure_limit"])
        deadline = asyncio.get_running_loop().time() + float(self._options["recovery_timeout"])
        try:
            if client.encrypted and self._sealed_too_large(replay):
                recovered, reason = False, SEALED_TOO_LARGE
            elif client.encrypted:
                for entry_offset, frame, event, message in replay:
                    one(client, frame, event, message, (room, entry_offset))
            elif replay and await send_paced(
                hub, client, [r[1] for r in replay], limit, deadline
            ) < len(replay):
                recovered, reason = False, TOO_SLOW
                logger.warning(
                    "recovery of room %s for %s cut short: its socket did not drain within %.1f s",
                    room,
                    client.id,
                    float(self._options["recovery_timeout"]),
                    extra=client_extra(client),
                )
            if not client.live or not hub.in_room(handle, room):
                return
            seen = hub.held_epoch(handle, room)
            if seen is not None and seen != epoch:
                # A new epoch began meanwhile (Redis lost the history): the client starts
                # from its first message held, and knows it did not recover.
                first = hub.held_first(handle, room, seen)
                epoch, offset = seen, (first[1] - 1 if first is not None else 0)
                recovered, reason = False, RESET
            data: dict[str, Any] = {
                "room": room,
                "epoch": epoch,
                "offset": offset,
                "recovered": recovered,
            }
            if reason:
                data["reason"] = reason
            one(client, encode(JOINED, data), JOINED, data)
            after = offset
            if not client.encrypted:
                # The live messages held meanwhile, paced; the rest released below.
                while taken := hub.take_held(handle, room, epoch, after, limit // 2):
                    payloads = [p for _, p in taken]
                    queued = await send_paced(hub, client, payloads, limit, deadline)
                    after = taken[-1][0]
                    if queued < len(payloads):
                        # Too slow for live messages too: the rest goes as they do (the
                        # backpressure skip), and so does what is still held, below.
                        for payload in payloads[queued:]:
                            hub.send(handle, payload)
                        break
                    if not client.live or not hub.in_room(handle, room):
                        return
        except BaseException:
            hub.hold_history(handle, room, False)
            raise
        # What is still held goes as live messages do (to a client still too slow: the
        # backpressure skip); for an encrypted member, handed back to be sealed.
        for payload in hub.release_history(handle, room, epoch, after):
            held = orjson.loads(payload)
            one(client, payload, held["event"], held.get("data", MISSING), (room, held["offset"]))
