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
from .constants import EMITTER_SERVER_ID, ErrorMessages, WebSocketChannels, WebSocketMessageTypes
from .protocol import MISSING, encode_envelope

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
        history_size: int = 100,
        history_ttl: float = 300.0,
    ) -> None:
        """`history_rooms` (a glob), `history_size` and `history_ttl` must be the servers'
        (SPEC §10): messages to those rooms are numbered and kept, as the servers do."""
        if not redis_connection:
            raise ValueError(ErrorMessages.INVALID_REDIS)
        self.identifier = identifier
        self._broker: Broker = create_broker(redis_connection, publisher_only=True)
        self._configured = False
        self._history: RedisHistory | None = None
        self._is_history: Any = None
        if history_rooms is not None:
            from .broker.redis import RedisBroker
            from .history import RoomGlob
            from .options import resolve_server_options

            resolve_server_options(
                {
                    "history_rooms": history_rooms,
                    "history_size": history_size,
                    "history_ttl": history_ttl,
                }
            )  # the servers' checks
            broker = self._broker
            if not isinstance(broker, RedisBroker) or broker.sharded:
                raise ValueError("history_rooms needs redis with classic pub/sub (not sharded)")
            self._history = RedisHistory(broker.target, history_size, history_ttl)
            self._is_history = RoomGlob(history_rooms)

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
