"""WebSocketServerHelper: lifecycle and public API, wiring the parts of a node together.

The parts, one module each: the session state machine (`session`), the picows adapter
(`connection`), authentication (`auth`), rooms (`rooms`), delivery and cross-node routing
(`delivery`), encrypted delivery (`sealing`), interest sync and the join barrier
(`barrier`). Everything that scales with the number of connections (registry, rooms, users,
fan-out, deadlines, backpressure) lives in the Rust `Hub`; Python decides what to send and to
whom, and never loops over recipients itself for plaintext delivery. See ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from ssl import SSLContext
from typing import Any

from .. import _core
from ..broker import Broker, create_broker
from ..config import ServerConfig
from ..encryption.scheme import EncryptionScheme, scheme_of
from ..encryption.sealing import Sealer
from ..log import TRACE, client_extra, fault
from ..protocol.constants import CloseCode, ErrorMessages
from ..protocol.counters import Counters
from ..transport.connection import Client, Links
from ..transport.http import HttpHandler, UpgradeRefused, WebServer
from .auth import Authentication
from .barrier import JoinBarrier
from .callbacks import check_callbacks
from .delivery import Delivery
from .history import History
from .inbound import Inbound
from .limits import Limits
from .options import resolve_server_options
from .presence import Presence
from .rooms import Rooms

_DEFAULT = ServerConfig()

__all__ = ["EncryptionScheme", "WebSocketServerHelper", "resolve_server_options"]

logger = logging.getLogger("roomcast")

# How often the deadline wheel is swept; bounds how late a timeout close can be.
SWEEP_INTERVAL = 0.05


class WebSocketServerHelper(Inbound, Authentication, Rooms, Delivery, History, Presence):
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
        ignored), else from the keywords, which build one (`self.config`)."""
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
        self.identifier = config.identifier
        self.server_id = str(uuid.uuid4())
        self._path = config.path
        self._broker: Broker = create_broker(redis_connection)

        self.authenticate_fn = authenticate_fn
        self.validate_room_fn = validate_room_fn
        self.client_connected_fn = client_connected_fn
        self.client_disconnected_fn = client_disconnected_fn
        self.message_handler = message_handler
        # A scheme supplies the hooks not given explicitly, opens inbound `encrypted` events
        # and drops client keys at disconnect; bound methods of one bring it along.
        if encryption is None:
            encryption = scheme_of(handshake_fn) or scheme_of(outbound_transformer)
        if encryption is not None:
            handshake_fn = handshake_fn or encryption.handshake_fn
            outbound_transformer = outbound_transformer or encryption.outbound_transformer
        self.encryption = encryption
        self.handshake_fn = handshake_fn
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

        self.default_rooms = list(config.default_rooms)
        self.auth_timeout = config.auth_timeout
        self.heartbeat_interval = config.heartbeat_interval
        self.heartbeat_timeout = config.heartbeat_timeout
        self.require_encryption = config.require_encryption
        self.subscribe_timeout = config.subscribe_timeout
        self.server_options = dict(config.options)
        self._max_connections: int | None = self.server_options["max_connections"]
        self._backpressure_limit = int(self.server_options["backpressure_limit"])
        self._close_on_backpressure = bool(self.server_options["close_on_backpressure_limit"])
        self._write_delay = float(self.server_options["write_delay"])

        self._loop = None
        self._clients = {}
        self._encrypted = 0
        self._tasks = set()
        self._logins = {}
        self._barrier = JoinBarrier(
            self._broker,
            self._clients,
            self._handle,
            self.subscribe_timeout,
            int(self.server_options["join_queue_limit"]),
        )
        self._held = self._barrier.held
        self._hub = _core.Hub(
            self._schedule_late_flush if self._write_delay else self._schedule,
            backpressure_limit=self._backpressure_limit,
            close_on_backpressure_limit=self._close_on_backpressure,
            heartbeat_timeout=self.heartbeat_timeout,
            idle_timeout=float(self.server_options["idle_timeout"]),
            send_pings=bool(self.server_options["send_pings"]),
            on_overflow=self._on_overflow,
            on_interest=self._on_interest if self._barrier.interest is not None else None,
            direct_writes=True,
        )
        self._barrier.hub = self._hub
        # Plain ints the protocol path bumps; `roomcast.metrics` reads them at scrape time.
        self.counters = Counters()
        self._links = Links(
            self._hub,
            self.counters,
            int(self.server_options["max_payload_length"]),
            self._on_connect,
            self._on_message,
            self._on_disconnect,
            self._on_pause_writing,
            int(self.server_options["max_fragments"]),
        )
        self._limits = Limits(self.server_options, self._hub, self._send_error, self._spawn)
        self._rate = self._limits.rate
        self._sealer = Sealer(
            self._hub, self._spawn, encryption, outbound_transformer, config.encrypted_batch_limit
        )
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._accepting = False
        self._configured = False
        self._shut_down = False

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
        self._setup_rooms()
        self._loop = self._links.loop = self._barrier.loop = asyncio.get_running_loop()
        await self._broker.start(self._on_envelope)
        self._sweep_handle = self._loop.call_later(SWEEP_INTERVAL, self._sweep)
        self._configured = True
        self._accepting = True
        logger.debug(
            "%s ready on path %s (server id %s)", self.identifier, self._path, self.server_id
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
    ) -> WebServer:
        """Configure (if needed) and listen on host:port; returns the started WebServer.

        `ssl` serves wss:// (and https:// for plain HTTP); `health` answers GET /health and
        `metrics` GET /metrics (Prometheus text) before `http_handler` sees a request;
        `reuse_port` lets several processes listen on one port (SO_REUSEPORT)."""
        await self.configure()
        if health or metrics:
            from ..serving.endpoints import Endpoints

            http_handler = Endpoints(self, http_handler, health=health, metrics=metrics)
        server = WebServer(host, port, http_handler, ssl=ssl, reuse_port=reuse_port)
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
        ssl: SSLContext | None = None,
        health: bool = False,
        metrics: bool = False,
        reuse_port: bool = False,
    ) -> None:
        """Serve until SIGINT or SIGTERM (or until `shutdown_trigger` completes, or this
        task is cancelled), then shut down gracefully (1001 to every client) and return.
        `on_listening(server)` runs once the port is bound; the other options are `serve`'s.
        See `roomcast.serving.runner.run`."""
        from ..serving.runner import run

        await run(
            self,
            host,
            port,
            http_handler,
            shutdown_trigger=shutdown_trigger,
            on_listening=on_listening,
            ssl=ssl,
            health=health,
            metrics=metrics,
            reuse_port=reuse_port,
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
        await self._close_broker()
        for task in list(self._tasks):
            task.cancel()
        logger.debug("%s shut down", self.identifier)

    def get_path(self) -> str:
        return self._path

    def accept(self) -> Client:
        """A listener for a new upgrade request; raises UpgradeRefused when it can't be taken."""
        if not self._accepting:
            raise UpgradeRefused("not accepting connections (not configured or shutting down)")
        if self._max_connections is not None and len(self._clients) >= self._max_connections:
            raise UpgradeRefused(f"connection limit reached: {self._max_connections}")
        return Client(self._links, str(uuid.uuid4()))

    # -- connection events (called by Client through its Links) -----------------------------

    def _on_connect(self, client: Client, transport: Any) -> None:
        raw = transport.underlying_transport
        raw.set_write_buffer_limits(
            high=self._backpressure_limit, low=self._backpressure_limit // 4
        )
        client.handle = self._hub.add(client.id, raw.write, client)
        self._clients[client.id] = client
        self.counters.connects += 1
        self._hub.set_auth_deadline(client.handle, self.auth_timeout)
        logger.log(TRACE, "connected %s (unauthorized)", client.id, extra=client_extra(client))
        if not self._accepting:
            client.close(CloseCode.GOING_AWAY, CloseCode.REASONS[CloseCode.GOING_AWAY])

    def _on_disconnect(self, client: Client) -> None:
        was_connected = client.disconnected()
        if was_connected is None:
            return
        if was_connected and self._leave_hooks:
            self._rooms_left(client, self._hub.rooms_of(client.handle))
        self._hub.remove(client.handle)
        self._clients.pop(client.id, None)
        self._held.pop(client.id, None)
        self._limits.forget(client)
        if client.encrypted:
            self._encrypted -= 1
        self._forget_keys(client)
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
            self._invoke(
                "client_disconnected_fn",
                self.client_disconnected_fn,
                client_id=client.id,
                user_id=client.user_id,
            )

    def _on_pause_writing(self, client: Client) -> None:
        self._hub.set_backpressured(client.handle, True)
        logger.log(TRACE, "backpressure on %s", client.id, extra=client_extra(client))
        if self._close_on_backpressure:
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
        and, prefixed `broker_`, the broker's when it keeps any."""
        stats = self._hub.stats()
        stats["subscribe_waits"] = self._barrier.waits
        stats["subscribe_unconfirmed"] = self._barrier.unconfirmed
        stats.update(self._history_stats())
        for key, value in self._broker.stats().items():
            stats[f"broker_{key}"] = value
        return stats

    @property
    def encrypted_connections(self) -> int:
        """Connections with an encrypted session now."""
        return self._encrypted

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
        return len(self._held)

    def channels_live(self, channels: list[str]) -> bool:
        """Whether every broker channel in `channels` is confirmed subscribed (always True
        when the broker does not confirm subscriptions: every channel is live)."""
        confirmation = self._barrier.confirmation
        return confirmation is None or confirmation(channels) is None

    def flush(self) -> None:
        """Hand the queued writes to the sockets now (otherwise once per loop iteration)."""
        self._hub.flush()

    async def settle(self) -> None:
        """Return once queued encrypted deliveries are sealed and the broker's subscription
        changes so far are in effect (raises BrokerUnavailable while it reconnects)."""
        await self._sealer.wait_idle()
        await self._broker.sync()
        self._hub.flush()

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

    def _schedule_late_flush(self, flush: Callable[[], None]) -> None:
        """The hub's `schedule` with a `write_delay`: its flush runs that much later, so
        deliveries within the window share one write per client."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        loop.call_later(self._write_delay, flush)

    def _sweep(self) -> None:
        assert self._loop is not None
        self._sweep_handle = self._loop.call_later(SWEEP_INTERVAL, self._sweep)
        for client, reason in self._hub.sweep():
            if reason == _core.EXPIRED_AUTH:
                self.counters.auth["timeout"] += 1
                logger.debug(
                    "closing %s: authentication timeout", client.id, extra=client_extra(client)
                )
                client.close(CloseCode.AUTH_TIMEOUT, CloseCode.REASONS[CloseCode.AUTH_TIMEOUT])
            elif reason == _core.EXPIRED_HEARTBEAT:
                logger.debug("closing %s: heartbeat timeout", client.id, extra=client_extra(client))
                client.close(
                    CloseCode.HEARTBEAT_TIMEOUT, CloseCode.REASONS[CloseCode.HEARTBEAT_TIMEOUT]
                )
            else:
                logger.debug("closing %s: idle timeout", client.id, extra=client_extra(client))
                client.close(CloseCode.GOING_AWAY, CloseCode.IDLE_REASON)

    def _on_interest(self) -> None:
        """The hub recorded the first interest change since the last drain."""
        self._schedule(self._barrier.sync_interest)
