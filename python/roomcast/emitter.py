"""WebSocketEmitter: publish to WebSocket clients from a process without a server.

Workers, cron jobs and the `roomcast emit` command use it. It writes the same envelopes as a
server (and as the original's emitter), with serverId "emitter", so every node delivers them,
the original's nodes included.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError

from .broker import Broker, BrokerUnavailable, create_broker
from .broker.redis.history import RedisHistory
from .protocol.constants import (
    EMITTER_SERVER_ID,
    ErrorMessages,
    WebSocketChannels,
    WebSocketMessageTypes,
)
from .protocol.messages import MISSING, encode_envelope

logger = logging.getLogger("roomcast")


class WebSocketEmitter:
    """A publisher of envelopes. Call `configure()` first and `shutdown()` at the end.

    Each `to_*` coroutine returns once Redis accepted the message, with the number of
    subscriptions Redis delivered it to (on the node or shard it went to: with classic
    subscriptions that is one per node interested); it raises BrokerUnavailable while Redis
    is unreachable. Delivery to clients is at-most-once, as for every broker.
    """

    def __init__(
        self,
        redis_connection: Any = None,
        identifier: str = "WebSocketEmitter",
        *,
        history_rooms: str | None = None,
        history_size: int | None = None,
        history_ttl: float | None = None,
    ) -> None:
        """History settings (SPEC §10): by default `configure()` takes the servers' from
        Redis (`roomcast.broker.redis.settings`), so that messages to their history rooms
        are numbered and kept as the servers do. Given ones win (a mismatch with the
        servers' is logged once); `history_size` and `history_ttl` default to the servers'
        (or 100 and 300 s)."""
        if not redis_connection:
            raise ValueError(ErrorMessages.INVALID_REDIS)
        self.identifier = identifier
        self._broker: Broker = create_broker(redis_connection, publisher_only=True)
        self._configured = False
        self._history: RedisHistory | None = None
        self._is_history: Any = None
        self._explicit: dict[str, Any] = {
            name: value
            for name, value in (
                ("history_rooms", history_rooms),
                ("history_size", history_size),
                ("history_ttl", history_ttl),
            )
            if value is not None
        }
        if history_rooms is not None:
            self._use_history(self._explicit)

    def _use_history(self, settings: dict[str, Any]) -> None:
        """Number and keep messages to the rooms of `settings["history_rooms"]`."""
        from .broker.redis import RedisBroker
        from .config import resolve_server_options
        from .protocol.messages import RoomGlob

        resolved = resolve_server_options(settings)  # the servers' checks and defaults
        broker = self._broker
        if not isinstance(broker, RedisBroker) or broker.sharded:
            raise ValueError("history_rooms needs redis with classic pub/sub (not sharded)")
        size, ttl = resolved["history_size"], resolved["history_ttl"]
        self._history = RedisHistory(
            broker.target, size, ttl, timeout=float(resolved["history_timeout"])
        )
        self._is_history = RoomGlob(resolved["history_rooms"])

    async def _servers_settings(self) -> None:
        """Take the history settings the servers published (explicit ones win)."""
        from .broker.redis import RedisBroker
        from .broker.redis.settings import read_settings

        broker = self._broker
        if not isinstance(broker, RedisBroker) or broker.sharded:
            return
        try:
            published = await read_settings(broker.target)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"history settings unreadable in redis: {exc}") from exc
        if published is None:
            return
        explicit = self._explicit
        differ = {k: v for k, v in explicit.items() if published[k] != v}
        if differ:
            logger.warning(
                "%s: the given history settings %s differ from the servers' in redis (%s): "
                "the given ones are used",
                self.identifier,
                differ,
                {k: published[k] for k in differ},
            )
        if len(explicit) < 3:  # (a history built from given rooms has not written yet)
            self._use_history({**published, **explicit})
            logger.debug("%s: the servers' history settings: %s", self.identifier, published)

    @property
    def broker(self) -> Broker:
        """The emitter's own broker (its `connected`, `state` and `stats()` tell its health)."""
        return self._broker

    async def configure(self) -> None:
        """Connect; raises BrokerUnavailable naming the address when Redis does not answer
        within the helper's ready timeout."""
        if self._configured:
            return
        await self._broker.start(None)
        await self._servers_settings()
        self._configured = True
        logger.debug("%s ready", self.identifier)

    async def to_client(self, client_id: str, event: str, data: Any = MISSING) -> int:
        """To one client, on whichever node it is connected."""
        return await self._publish(
            WebSocketChannels.for_client(client_id),
            WebSocketMessageTypes.CLIENT,
            client_id,
            event,
            data,
        )

    async def to_user(self, user_id: str, event: str, data: Any = MISSING) -> int:
        """To every session of a user, on every node."""
        return await self._publish(
            WebSocketChannels.for_user(user_id), WebSocketMessageTypes.USER, user_id, event, data
        )

    async def to_room(
        self, room: str, event: str, data: Any = MISSING, exclude: list[str] | None = None
    ) -> int:
        """To every member of a room on every node, except the client ids in `exclude`; to a
        history room through its history (numbered and kept)."""
        history = self._history
        if history is not None and self._is_history(room):
            if not self._configured:
                raise BrokerUnavailable(f"{self.identifier} is not configured: call configure()")
            envelope = encode_envelope(
                EMITTER_SERVER_ID, WebSocketMessageTypes.ROOM, event, data, room, exclude
            )
            try:
                _, _, receivers = await history.append(
                    room, WebSocketChannels.for_room(room), envelope
                )
            except (RedisError, OSError) as exc:
                raise BrokerUnavailable(f"redis is unavailable: {exc}") from exc
            return receivers
        return await self._publish(
            WebSocketChannels.for_room(room), WebSocketMessageTypes.ROOM, room, event, data, exclude
        )

    async def broadcast(
        self, event: str, data: Any = MISSING, exclude: list[str] | None = None
    ) -> int:
        """To every authenticated client on every node."""
        return await self._publish(
            WebSocketChannels.BROADCAST, WebSocketMessageTypes.BROADCAST, None, event, data, exclude
        )

    @property
    def history_settings(self) -> dict[str, Any] | None:
        """The history settings in use (None: no history room), once configured."""
        history = self._history
        if history is None:
            return None
        return {
            "history_rooms": self._is_history.pattern,
            "history_size": history.size,
            "history_ttl": history.ttl,
        }

    async def shutdown(self) -> None:
        """Disconnect; idempotent."""
        if self._history is not None:
            await self._history.close()
        await self._broker.close()
        self._configured = False

    async def _publish(
        self,
        channel: str,
        type_: str,
        target: str | None,
        event: str,
        data: Any,
        exclude: list[str] | None = None,
    ) -> int:
        if not self._configured:
            raise BrokerUnavailable(f"{self.identifier} is not configured: call configure()")
        message = encode_envelope(EMITTER_SERVER_ID, type_, event, data, target, exclude)
        return await self._broker.publish_wait(channel, message)


__all__ = ["WebSocketEmitter"]
