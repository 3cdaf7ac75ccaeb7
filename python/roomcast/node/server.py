"""WebSocketServerHelper: the lifecycle and the public API of a node, over the parts it owns.

The parts, one module each, built here and given what they need (never the helper): the
join barrier (`barrier`), local delivery in clear and sealed (`sender`), history and presence
rooms (`history`, `presence`), joins and leaves (`rooms`), logins (`auth`), the inbound path
(`inbound`) and delivery across nodes (`delivery`); the loop and its tasks (`tasks`). The
session state machine is `roomcast.protocol.session`, the picows adapter
`roomcast.transport.connection`, encrypted delivery `roomcast.encryption.sealing`.
Everything that scales with the number of connections (registry, rooms, users, fan-out,
deadlines, backpressure) lives in the Rust `Hub`; Python decides what to send and to whom,
and never loops over recipients itself for plaintext delivery. See ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from ssl import SSLContext
from typing import Any, Unpack

from .._core import EXPIRED_AUTH, EXPIRED_HEARTBEAT, Hub
from ..broker import Broker, create_broker
from ..broker.history import HistoryStore
from ..broker.redis.history import RedisHistory
from ..config import ServerConfig, resolve_server_options
from ..encryption.scheme import EncryptionScheme, scheme_of
from ..encryption.sealing import Sealer
from ..log import TRACE, client_extra, fault
from ..protocol.constants import CloseCode, ErrorMessages
from ..protocol.counters import Counters
from ..protocol.messages import MISSING
from ..serving.runner import ServeOptions
from ..transport.connection import Client, Links
from ..transport.http import HttpHandler, UpgradeRefused, WebServer
from ..transport.httpapi import Api
from .auth import Authentication
from .barrier import JoinBarrier
from .callbacks import check_callbacks
from .delivery import Delivery
from .history import History
from .inbound import Inbound
from .limits import Limits
from .presence import Member, Presence
from .rooms import Rooms
from .sender import Sender
from .tasks import Callback, Tasks

_DEFAULT = ServerConfig()

__all__ = ["EncryptionScheme", "WebSocketServerHelper", "resolve_server_options"]

logger = logging.getLogger("roomcast")

# How often the deadline wheel is swept; bounds how late a timeout close can be.
SWEEP_INTERVAL = 0.05


class WebSocketServerHelper:
    """A WebSocket endpoint: authentication, rooms, users, broadcast and cross-node delivery.

    Callbacks may be plain functions or coroutine functions and are called with keyword
    arguments (see the README). An exception in a callback is logged and changes nothing else.
    Times are in seconds.
    """

    def __init__(
        self,
        identifier: str = _DEFAULT.identifier,
        path: str = _DEFAULT.path,
        redis_connection: Any = None,
        authenticate_fn: Callable[..., Any] | None = None,
        *,
        validate_room_fn: Callable[..., Any] | None = None,
        client_connected_fn: Callable[..., Any] | None = None,
        client_disconnected_fn: Callable[..., Any] | None = None,
        message_handler: Callable[..., Any] | None = None,
        outbound_transformer: Callable[..., Any] | None = None,
        handshake_fn: Callable[..., Any] | None = None,
        encryption: EncryptionScheme | None = None,
        default_rooms: Iterable[str] | None = None,
        auth_timeout: float = _DEFAULT.auth_timeout,
        heartbeat_interval: float = _DEFAULT.heartbeat_interval,
        heartbeat_timeout: float = _DEFAULT.heartbeat_timeout,
        require_encryption: bool = _DEFAULT.require_encryption,
        encrypted_batch_limit: int = _DEFAULT.encrypted_batch_limit,
        server_options: Mapping[str, Any] | None = None,
        subscribe_timeout: float = _DEFAULT.subscribe_timeout,
        config: ServerConfig | None = None,
    ) -> None:
        """The settings come from `config` when given (the keyword settings are then
        ignored), else from the keywords, which build one (`self.config`, the one place
        the helper and its parts read them from)."""
        if not redis_connection:
            raise ValueError(ErrorMessages.INVALID_REDIS)
        if authenticate_fn is None:
            raise ValueError("authenticate_fn is required")
        if config is None:
            config = ServerConfig(
                identifier=identifier,
                path=path,
                default_rooms=_DEFAULT.default_rooms
                if default_rooms is None
                else tuple(default_rooms),
                auth_timeout=auth_timeout,
                heartbeat_interval=heartbeat_interval,
                heartbeat_timeout=heartbeat_timeout,
                require_encryption=require_encryption,
                encrypted_batch_limit=encrypted_batch_limit,
                subscribe_timeout=subscribe_timeout,
                options=server_options or {},
            )
        self.config = config
        self.server_id = str(uuid.uuid4())
        # A scheme supplies the hooks not given explicitly, opens inbound `encrypted` events
        # and drops client keys at disconnect; bound methods of one bring it along.
        if encryption is None:
            encryption = scheme_of(handshake_fn) or scheme_of(outbound_transformer)
        if encryption is not None:
            handshake_fn = handshake_fn or encryption.handshake_fn
            outbound_transformer = outbound_transformer or encryption.outbound_transformer
        check_callbacks(
            {
                "authenticate_fn": authenticate_fn,
                "validate_room_fn": validate_room_fn,
                "client_connected_fn": client_connected_fn,
                "client_disconnected_fn": client_disconnected_fn,
                "message_handler": message_handler,
                "outbound_transformer": outbound_transformer,
                "handshake_fn": handshake_fn,
            }
        )
        self.client_disconnected_fn = client_disconnected_fn
        options = config.options
        broker = self._broker = create_broker(redis_connection)
        # Python's own index of connections: the hub maps ids to handles internally but
        # cannot hand back the `Client` of an id.
        clients: dict[str, Client] = {}
        self._clients = clients
        tasks = self._tasks = Tasks()
        barrier = self._barrier = JoinBarrier(
            broker, clients, config.subscribe_timeout, int(options["join_queue_limit"])
        )
        write_delay = float(options["write_delay"])
        hub = self._hub = Hub(
            _late_flush(tasks, write_delay) if write_delay else tasks.schedule,
            backpressure_limit=int(options["backpressure_limit"]),
            close_on_backpressure_limit=bool(options["close_on_backpressure_limit"]),
            heartbeat_timeout=config.heartbeat_timeout,
            idle_timeout=float(options["idle_timeout"]),
            send_pings=bool(options["send_pings"]),
            on_overflow=self._on_overflow,
            on_interest=barrier.on_interest if barrier.interest is not None else None,
            direct_writes=True,
            pass_sockets=int(options["pass_sockets"]),
            pass_bytes=int(options["pass_bytes"]),
            # The rest of a pass that stopped at its bound: at once, not after write_delay.
            resume=tasks.schedule,
            deflate_threshold=int(options["deflate_threshold"]),
            deflate_level=int(options["deflate_level"]),
        )
        # Plain ints the protocol path bumps; `roomcast.serving.metrics` reads them at scrape
        # time.
        counters = self.counters = Counters()
        sealer = self._sealer = Sealer(
            hub, tasks.spawn, encryption, outbound_transformer, config.encrypted_batch_limit
        )
        sender = self._sender = Sender(hub, sealer)
        limits = self._limits = Limits(options, hub, sender.error, tasks.spawn)
        server_id = self.server_id
        history = self._history = History(hub, sender, broker, server_id, tasks, options)
        presence = self._presence = Presence(
            hub, sender, broker, clients, server_id, tasks, options, config.subscribe_timeout
        )
        rooms = self._rooms = Rooms(
            hub, barrier, clients, tasks, history, presence, limits, validate_room_fn
        )
        auth = self._auth = Authentication(
            hub,
            sender,
            sealer,
            barrier,
            rooms,
            clients,
            tasks,
            counters,
            config.default_rooms,
            config.require_encryption,
            encryption,
            authenticate_fn,
            handshake_fn,
            client_connected_fn,
        )
        inbound = self._inbound = Inbound(
            hub,
            barrier,
            sender,
            rooms,
            auth,
            presence,
            tasks,
            counters,
            encryption,
            config.auth_timeout,
            message_handler,
            limits,
        )
        self._delivery = Delivery(
            sender, history, broker, clients, server_id, hub.has_room, hub.user_members
        )
        barrier.attach(hub, inbound.handle)
        self._links = Links(
            hub,
            counters,
            int(options["max_payload_length"]),
            self._on_connect,
            inbound.on_message,
            self._on_disconnect,
            self._on_pause_writing,
            int(options["max_fragments"]),
        )
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._accepting = False
        self._configured = False
        self._shut_down = False

    # -- settings (read from `config`) ---------------------------------------------------

    @property
    def identifier(self) -> str:
        return self.config.identifier

    @property
    def default_rooms(self) -> list[str]:
        return list(self.config.default_rooms)

    @property
    def auth_timeout(self) -> float:
        return self.config.auth_timeout

    @property
    def heartbeat_interval(self) -> float:
        return self.config.heartbeat_interval

    @property
    def heartbeat_timeout(self) -> float:
        return self.config.heartbeat_timeout

    @property
    def require_encryption(self) -> bool:
        return self.config.require_encryption

    @property
    def subscribe_timeout(self) -> float:
        return self.config.subscribe_timeout

    @property
    def server_options(self) -> Mapping[str, Any]:
        """The resolved server options (`roomcast.config.resolve_server_options`)."""
        return self.config.options

    # -- callbacks and encryption (each kept by the part that calls it) ------------------

    @property
    def authenticate_fn(self) -> Callback:
        return self._auth.authenticate_fn

    @authenticate_fn.setter
    def authenticate_fn(self, fn: Callback) -> None:
        self._auth.authenticate_fn = fn

    @property
    def handshake_fn(self) -> Callback | None:
        return self._auth.handshake_fn

    @handshake_fn.setter
    def handshake_fn(self, fn: Callback | None) -> None:
        self._auth.handshake_fn = fn

    @property
    def client_connected_fn(self) -> Callback | None:
        return self._auth.client_connected_fn

    @client_connected_fn.setter
    def client_connected_fn(self, fn: Callback | None) -> None:
        self._auth.client_connected_fn = fn

    @property
    def validate_room_fn(self) -> Callback | None:
        return self._rooms.validate_room_fn

    @validate_room_fn.setter
    def validate_room_fn(self, fn: Callback | None) -> None:
        self._rooms.validate_room_fn = fn

    @property
    def message_handler(self) -> Callback | None:
        return self._inbound.message_handler

    @message_handler.setter
    def message_handler(self, fn: Callback | None) -> None:
        self._inbound.message_handler = fn

    @property
    def validate_presence_fn(self) -> Callback | None:
        """`validate_presence_fn(client_id, user_id, room) -> bool` (sync or async): may let
        a client that is not a member of a presence room ask for its members."""
        return self._presence.validate_presence_fn

    @validate_presence_fn.setter
    def validate_presence_fn(self, fn: Callback | None) -> None:
        self._presence.validate_presence_fn = fn

    @property
    def encryption(self) -> EncryptionScheme | None:
        """The encryption scheme, if any (given, or the one `handshake_fn` belongs to)."""
        return self._auth.scheme

    @property
    def outbound_transformer(self) -> Callback | None:
        """What encrypted clients get of each message (see the README)."""
        return self._sealer.transformer

    @outbound_transformer.setter
    def outbound_transformer(self, transformer: Callback | None) -> None:
        self._sealer.transformer = transformer

    @property
    def encrypted_batch_limit(self) -> int:
        return self._sealer.batch_limit

    @encrypted_batch_limit.setter
    def encrypted_batch_limit(self, limit: int) -> None:
        self._sealer.batch_limit = int(limit)

    def enable_client_encryption(self, client_id: str) -> None:
        """From now on the client gets only what outbound_transformer makes of each message."""
        self._auth.enable_client_encryption(client_id)

    # -- lifecycle -----------------------------------------------------------------------

    async def configure(self) -> None:
        """Connect the broker, subscribe and start the deadline sweep. Call once, in the loop."""
        if self._configured:
            return
        # require_encryption without handshake_fn is not refused here: it is the seed's
        # "4004 only" row (no client can become encrypted, so none is left without delivery).
        if self.handshake_fn is not None and self.outbound_transformer is None:
            raise ValueError(
                "encryption is configured but outbound_transformer is missing: "
                "encrypted clients could receive nothing"
            )
        self._history.start()
        self._presence.start()
        self._rooms.start()
        loop = self._links.loop = self._tasks.start()
        self._barrier.start(loop)
        await self._broker.start(self._delivery.on_envelope)
        self._sweep_handle = loop.call_later(SWEEP_INTERVAL, self._sweep)
        self._configured = True
        self._accepting = True
        logger.debug(
            "%s ready on path %s (server id %s)", self.identifier, self.config.path, self.server_id
        )

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        http_handler: HttpHandler | None = None,
        *,
        ssl: SSLContext | None = None,
        health: bool = False,
        metrics: bool = False,
        reuse_port: bool = False,
        api: Api | None = None,
    ) -> WebServer:
        """Configure (if needed) and listen on host:port; returns the started WebServer.

        `ssl` serves wss:// (and https:// for plain HTTP); `health` answers GET /health and
        `metrics` GET /metrics (Prometheus text) before `http_handler` sees a request;
        `reuse_port` lets several processes listen on one port (SO_REUSEPORT); `api` (a
        `roomcast.serving.api.Api` of this helper) answers /api/, the server HTTP API."""
        await self.configure()
        if health or metrics:
            from ..serving.endpoints import Endpoints

            http_handler = Endpoints(self, http_handler, health=health, metrics=metrics)
        server = WebServer(host, port, http_handler, ssl=ssl, reuse_port=reuse_port, api=api)
        server.route(self)
        await server.start()
        return server

    async def run(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        http_handler: HttpHandler | None = None,
        *,
        shutdown_trigger: Awaitable[Any] | None = None,
        on_listening: Callable[[WebServer], Any] | None = None,
        **serve_options: Unpack[ServeOptions],
    ) -> None:
        """Serve until SIGINT or SIGTERM (or until `shutdown_trigger` completes, or this
        task is cancelled), then shut down gracefully (1001 to every client) and return.
        `on_listening(server)` runs once the port is bound; the other options are `serve`'s.
        See `roomcast.runner.run`."""
        from ..serving.runner import run

        await run(
            self,
            host,
            port,
            http_handler,
            shutdown_trigger=shutdown_trigger,
            on_listening=on_listening,
            **serve_options,
        )

    async def shutdown(self) -> None:
        """Close every client with 1001, run the disconnect callbacks, clear all state and
        close the broker. Idempotent."""
        if self._shut_down:
            return
        self._shut_down = True
        self._accepting = False
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        reason = CloseCode.REASONS[CloseCode.GOING_AWAY]
        clients = list(self._clients.values())
        for client in clients:
            client.close(CloseCode.GOING_AWAY, reason)
            if client.transport is not None:
                client.transport.disconnect()  # flushes what is queued, then closes
        for client in clients:
            self._on_disconnect(client)
        self._clients.clear()
        self._sealer.clear()
        # Presence's and the history store's connections, then the broker's.
        await self._presence.close()
        await self._history.close()
        await self._broker.close()
        self._tasks.cancel()
        logger.debug("%s shut down", self.identifier)

    def get_path(self) -> str:
        return self.config.path

    def accept(self, deflate_window: int = 0) -> Client:
        """A listener for a new upgrade request (that negotiated permessage-deflate with
        server window `deflate_window`, 0: it did not); raises UpgradeRefused when it can't
        be taken."""
        if not self._accepting:
            raise UpgradeRefused("not accepting connections (not configured or shutting down)")
        limit: int | None = self.config.options["max_connections"]
        if limit is not None and len(self._clients) >= limit:
            raise UpgradeRefused(f"connection limit reached: {limit}")
        client = Client(self._links, str(uuid.uuid4()))
        client.deflate_window = deflate_window
        return client

    # -- connection events (called by Client through its Links) -----------------------------

    def _on_connect(self, client: Client, transport: Any) -> None:
        raw = transport.underlying_transport
        limit = int(self.config.options["backpressure_limit"])
        raw.set_write_buffer_limits(high=limit, low=limit // 4)
        client.handle = self._hub.add(client.id, raw.write, client)
        if client.deflate_window:
            self._hub.set_deflate(client.handle, client.deflate_window)
        self._clients[client.id] = client
        self.counters.connects += 1
        self._hub.set_auth_deadline(client.handle, self.config.auth_timeout)
        logger.log(TRACE, "connected %s (unauthorized)", client.id, extra=client_extra(client))
        if not self._accepting:
            client.close(CloseCode.GOING_AWAY, CloseCode.REASONS[CloseCode.GOING_AWAY])

    def _on_disconnect(self, client: Client) -> None:
        was_connected = client.disconnected()
        if was_connected is None:
            return
        if was_connected:
            self._rooms.leaving(client)
        self._hub.remove(client.handle)
        self._clients.pop(client.id, None)
        self._barrier.forget(client)
        self._limits.forget(client)
        self._presence.forget(client)
        self._sender.forget(client)
        self._auth.forget_keys(client)
        # The one line per connection at DEBUG.
        logger.debug(
            "connection %s closed (user %s, %s, %.3f s)",
            client.id,
            client.user_id,
            "authenticated" if was_connected else "never authenticated",
            time.time() - client.connected_at,
            extra=client_extra(client),
        )
        if was_connected and self.client_disconnected_fn is not None:
            self._tasks.invoke(
                "client_disconnected_fn",
                self.client_disconnected_fn,
                client_id=client.id,
                user_id=client.user_id,
            )

    def _on_pause_writing(self, client: Client) -> None:
        self._hub.set_backpressured(client.handle, True)
        logger.log(TRACE, "backpressure on %s", client.id, extra=client_extra(client))
        if self.config.options["close_on_backpressure_limit"]:
            self._on_overflow(client)

    def _on_overflow(self, client: Client) -> None:
        fault(
            "slow client",
            "closing %s: backpressure limit exceeded",
            client.id,
            extra=client_extra(client),
        )
        client.close(
            CloseCode.POLICY_VIOLATION, CloseCode.REASONS[CloseCode.POLICY_VIOLATION], abort=True
        )

    # -- delivery ------------------------------------------------------------------------

    def send_to_client(self, client_id: str, event: str, data: Any = MISSING) -> int:
        """Deliver to one local authenticated client; returns 1 if queued, else 0."""
        return self._delivery.to_client(client_id, event, data)

    def send_to_user(self, user_id: str, event: str, data: Any = MISSING) -> int:
        """Deliver to every local session of a user; returns how many were queued."""
        return self._delivery.to_user(user_id, event, data)

    def send_to_room(
        self, room: str, event: str, data: Any = MISSING, exclude: list[str] | None = None
    ) -> int:
        """Deliver to every local authenticated member of `room` not in `exclude`; a message
        to a history room is numbered and kept first (SPEC §10)."""
        return self._delivery.to_room(room, event, data, exclude)

    def broadcast(self, event: str, data: Any = MISSING, exclude: list[str] | None = None) -> int:
        """Deliver to every local authenticated client not in `exclude`."""
        return self._delivery.to_everyone(event, data, exclude)

    def send(
        self, destination: str | None = None, payload: Mapping[str, Any] | None = None
    ) -> None:
        """Deliver locally and publish to the other nodes.

        `payload` is `{"topic": event, "data": ...}`; one without a topic or a `data` key is
        ignored. No destination: everyone. A local client id: that client. A local room: the
        room. Anything else: published as a room envelope, which reaches a room of that name
        or a client of that id on any node.
        """
        self._delivery.send(destination, payload)

    # -- rooms ---------------------------------------------------------------------------

    def join_room(self, client_id: str, room: str) -> bool:
        """Put a local client in `room` (no name rules: the server may use any name).

        It is a member at once for local delivery; when the node must first subscribe to
        the room in Redis, the client's next messages are handled only once Redis has
        confirmed it (at most `subscribe_timeout` later). `join_room_confirmed` also waits.
        """
        return self._rooms.join_room(client_id, room) is not None

    async def join_room_confirmed(self, client_id: str, room: str) -> bool:
        """`join_room`, returning once the room is live cluster-wide: every message
        published to it from then on, on any node or by the emitter, reaches the client
        (unless Redis did not answer within `subscribe_timeout`; see `stats()`)."""
        lifted = self._rooms.join_room(client_id, room)
        if lifted is None:
            return False
        if not lifted.done():
            await asyncio.shield(lifted)
        return True

    def leave_room(self, client_id: str, room: str) -> bool:
        """Take a local client out of `room`; its own-id room cannot be left."""
        return self._rooms.leave_room(client_id, room)

    def disconnect(
        self,
        client_id: str | None = None,
        *,
        user_id: str | None = None,
        code: int = 1000,
        reason: str = "",
    ) -> int:
        """Close one local client (any state), or every local session of a user, with
        `code` and `reason`; returns how many were closed. The disconnect callbacks run as
        for any close. (On every node: the HTTP API's /api/disconnect.)"""
        if (client_id is None) == (user_id is None):
            raise ValueError("give one of client_id or user_id")
        return self._delivery.disconnect(client_id, user_id, code, reason)

    async def history(
        self, room: str, since: tuple[str, int] | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """What a history room keeps: `{"room", "epoch", "offset", "messages"}`, each
        message `{"event", "data"?, "offset", "exclude"?}`, oldest first. Without `since`:
        the messages kept (the newest `limit`). With `since` (epoch, offset): `recovered`
        says whether every message after it is still kept; if so `messages` are those (the
        first `limit`), else none. ValueError for a room without history; Redis errors
        propagate."""
        return await self._history.read(room, since, limit)

    async def presence(self, room: str) -> list[Member]:
        """The members of a presence room, each once: `{"clientId", "userId"?}` (no `userId`
        for anonymous clients); empty for a room without presence."""
        return await self._presence.members(room)

    # -- queries -------------------------------------------------------------------------

    def get_clients(self, id: str | None = None) -> Any:
        """One client by id (or None), or a snapshot dict of all clients by id."""
        if id is not None:
            return self._clients.get(id)
        return dict(self._clients)

    def get_clients_by_user(self, user_id: str) -> list[Client]:
        clients = self._clients
        return [clients[i] for i in self._hub.user_members(user_id) if i in clients]

    def get_clients_by_room(self, room: str) -> list[Client]:
        clients = self._clients
        return [clients[i] for i in self._hub.room_members(room) if i in clients]

    def stats(self) -> dict[str, int]:
        """Counters from the hub (connections, rooms, users, skipped messages, queued bytes),
        the join barrier's (`subscribe_waits`: logins and joins that waited for Redis to
        confirm a subscription; `subscribe_unconfirmed`: those that went ahead without it,
        Redis being unreachable or slower than `subscribe_timeout`), `history_*` (README)
        the limits' (`room_limit_refused`: joins refused by max_rooms_per_client;
        `rate_limited`: messages dropped by the inbound rate limit), presence's
        (`presence_requests`: clients with a `presence` request in flight;
        `presence_coalesced`: requests answered with one waiting already) and, prefixed
        `broker_`, the broker's when it keeps any."""
        stats = self._hub.stats()
        stats["subscribe_waits"] = self._barrier.waits
        stats["subscribe_unconfirmed"] = self._barrier.unconfirmed
        stats.update(self._history.stats())
        stats.update(self._limits.stats())
        stats.update(self._presence.stats())
        for key, value in self._broker.stats().items():
            stats[f"broker_{key}"] = value
        return stats

    @property
    def encrypted_connections(self) -> int:
        """Connections with an encrypted session now."""
        return self._sender.encrypted

    @property
    def history_store(self) -> HistoryStore | RedisHistory | None:
        """Where history rooms are kept: `MemoryHistory` on the memory broker, `RedisHistory`
        in redis; None before `configure` or when no room keeps history."""
        return self._history.store

    @property
    def broker(self) -> Broker:
        """The broker this helper publishes through and listens on."""
        return self._broker

    @property
    def broker_state(self) -> str:
        """The broker's connection state (`roomcast.broker.BROKER_STATES`)."""
        return self._broker.state

    @property
    def shut_down(self) -> bool:
        """True once `shutdown()` has begun."""
        return self._shut_down

    @property
    def accepting(self) -> bool:
        """True while new connections are taken (configured and not shutting down)."""
        return self._accepting

    def stop_accepting(self) -> None:
        """Refuse new connections from now on (what `shutdown` does first); `health()`
        reports it, so a load balancer drains this node while its clients stay."""
        self._accepting = False

    # -- hooks for tests and tools -------------------------------------------------------

    @property
    def sealing_idle(self) -> bool:
        """No encrypted delivery queued or being sealed."""
        return self._sealer.idle

    @property
    def held_clients(self) -> int:
        """Clients whose inbound messages wait behind a join barrier now."""
        return len(self._barrier.held)

    def channels_live(self, channels: list[str]) -> bool:
        """Whether every broker channel in `channels` is confirmed subscribed (always True
        when the broker does not confirm subscriptions: every channel is live)."""
        return self._barrier.live(channels)

    def flush(self) -> None:
        """Hand the queued writes to the sockets now (otherwise once per loop iteration)."""
        self._hub.flush(whole=True)

    async def settle(self) -> None:
        """Return once queued encrypted deliveries are sealed and the broker's subscription
        changes so far are in effect (raises BrokerUnavailable while it reconnects)."""
        await self._sealer.wait_idle()
        await self._broker.sync()
        self._hub.flush(whole=True)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(ok, body) for a load balancer: ok while this node accepts connections and its
        broker is connected; otherwise the body says what is wrong."""
        broker = self.broker_state
        if self._accepting and broker == "connected":
            return True, {"status": "ok"}
        body: dict[str, Any] = {"status": "degraded"}
        if not self._accepting:
            body["accepting"] = False
        if broker != "connected":
            body["broker"] = broker
        return False, body

    # -- internals -----------------------------------------------------------------------

    def _sweep(self) -> None:
        loop = self._tasks.loop
        assert loop is not None
        self._sweep_handle = loop.call_later(SWEEP_INTERVAL, self._sweep)
        for client, reason in self._hub.sweep():
            if reason == EXPIRED_AUTH:
                self.counters.auth["timeout"] += 1
                logger.debug(
                    "closing %s: authentication timeout", client.id, extra=client_extra(client)
                )
                client.close(CloseCode.AUTH_TIMEOUT, CloseCode.REASONS[CloseCode.AUTH_TIMEOUT])
            elif reason == EXPIRED_HEARTBEAT:
                logger.debug("closing %s: heartbeat timeout", client.id, extra=client_extra(client))
                client.close(
                    CloseCode.HEARTBEAT_TIMEOUT, CloseCode.REASONS[CloseCode.HEARTBEAT_TIMEOUT]
                )
            else:
                logger.debug("closing %s: idle timeout", client.id, extra=client_extra(client))
                client.close(CloseCode.GOING_AWAY, CloseCode.IDLE_REASON)


def _late_flush(tasks: Tasks, delay: float) -> Callable[[Callable[[], None]], None]:
    """The hub's `schedule` with a `write_delay`: its flush runs that much later, so
    deliveries within the window share one write per client."""

    def schedule(flush: Callable[[], None]) -> None:
        tasks.schedule_later(delay, flush)

    return schedule
