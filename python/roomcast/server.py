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

from . import _core
from .auth import Authentication
from .barrier import HELD_LIMIT, JoinBarrier, is_join, reading
from .broker import Broker, create_broker
from .callbacks import check_callbacks
from .connection import Client, Links
from .constants import (
    SUBSCRIBE_TIMEOUT,
    CloseCode,
    ErrorMessages,
    WebSocketDefaults,
)
from .counters import Counters
from .delivery import Delivery
from .http import HttpHandler, UpgradeRefused, WebServer
from .log import TRACE, client_extra, fault
from .options import resolve_server_options
from .protocol import InvalidMessage, InvalidText, decode, sanitize_rooms
from .rooms import Rooms
from .scheme import EncryptionScheme, scheme_of
from .sealing import Sealer
from .session import Action

__all__ = ["EncryptionScheme", "WebSocketServerHelper", "resolve_server_options"]

logger = logging.getLogger("roomcast")

# How often the deadline wheel is swept; bounds how late a timeout close can be.
SWEEP_INTERVAL = 0.05

_HANDLE = Action.HANDLE
_IGNORE = Action.IGNORE
_AUTHENTICATE = Action.AUTHENTICATE
_JOIN = Action.JOIN
_LEAVE = Action.LEAVE
_OPEN_ENCRYPTED = Action.OPEN_ENCRYPTED
_NOT_AUTHENTICATED = Action.NOT_AUTHENTICATED
_ALREADY_AUTHENTICATED = Action.ALREADY_AUTHENTICATED


class WebSocketServerHelper(Authentication, Rooms, Delivery):
    """A WebSocket endpoint: authentication, rooms, users, broadcast and cross-node delivery.

    Callbacks may be plain functions or coroutine functions and are called with keyword
    arguments (see the README). An exception in a callback is logged and changes nothing else.
    Times are in seconds.
    """

    def __init__(
        self,
        identifier: str = "WebSocketServerHelper",
        path: str = WebSocketDefaults.PATH,
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
        auth_timeout: float = WebSocketDefaults.AUTH_TIMEOUT,
        heartbeat_interval: float = WebSocketDefaults.HEARTBEAT_INTERVAL,
        heartbeat_timeout: float = WebSocketDefaults.HEARTBEAT_TIMEOUT,
        require_encryption: bool = False,
        encrypted_batch_limit: int = WebSocketDefaults.ENCRYPTED_BATCH_LIMIT,
        server_options: Mapping[str, Any] | None = None,
        subscribe_timeout: float = SUBSCRIBE_TIMEOUT,
    ) -> None:
        if not redis_connection:
            raise ValueError(ErrorMessages.INVALID_REDIS)
        if authenticate_fn is None:
            raise ValueError("authenticate_fn is required")
        if auth_timeout <= 0 or heartbeat_timeout <= 0 or heartbeat_interval <= 0:
            raise ValueError(
                "auth_timeout, heartbeat_interval and heartbeat_timeout must be positive"
            )
        if subscribe_timeout <= 0:
            raise ValueError(f"subscribe_timeout must be positive: {subscribe_timeout}")
        if encrypted_batch_limit < 1:
            raise ValueError(f"encrypted_batch_limit must be at least 1: {encrypted_batch_limit}")
        self.identifier = identifier
        self.server_id = str(uuid.uuid4())
        self._path = path
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

        self.default_rooms = list(
            default_rooms
            if default_rooms is not None
            else (WebSocketDefaults.ROOM, WebSocketDefaults.NOTIFICATION_ROOM)
        )
        for room in self.default_rooms:
            if not sanitize_rooms([room]):  # what a client could not join either
                raise ValueError(f"invalid default room: {room!r}")
        self.auth_timeout = float(auth_timeout)
        self.heartbeat_interval = float(heartbeat_interval)
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.require_encryption = bool(require_encryption)
        self.subscribe_timeout = float(subscribe_timeout)
        self.server_options = resolve_server_options(server_options)
        self._max_connections: int | None = self.server_options["max_connections"]
        self._backpressure_limit = int(self.server_options["backpressure_limit"])
        self._close_on_backpressure = bool(self.server_options["close_on_backpressure_limit"])

        self._loop = None
        self._clients = {}
        self._encrypted = 0
        self._tasks = set()
        self._logins = {}
        self._barrier = JoinBarrier(
            self._broker, self._clients, self._handle, self.subscribe_timeout
        )
        self._held = self._barrier.held
        self._hub = _core.Hub(
            self._schedule,
            backpressure_limit=self._backpressure_limit,
            close_on_backpressure_limit=self._close_on_backpressure,
            heartbeat_timeout=self.heartbeat_timeout,
            idle_timeout=float(self.server_options["idle_timeout"]),
            send_pings=bool(self.server_options["send_pings"]),
            on_overflow=self._on_overflow,
            on_interest=self._on_interest if self._barrier.interest is not None else None,
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
        )
        self._sealer = Sealer(
            self._hub, self._spawn, encryption, outbound_transformer, int(encrypted_batch_limit)
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
            from .endpoints import Endpoints

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
        See `roomcast.runner.run`."""
        from .runner import run

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
        await self._broker.close()
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
        self._hub.remove(client.handle)
        self._clients.pop(client.id, None)
        self._held.pop(client.id, None)
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

    # -- inbound messages ------------------------------------------------------------------

    def _on_message(self, client: Client, payload: Any, is_text: bool) -> None:
        self._hub.touch(client.handle)
        if self._held:
            held = self._held.get(client.id)
            if held is not None and (held[1] or not is_join(payload, is_text)):
                # Behind a join barrier: handled in order once it is lifted. (The payload
                # is only valid during this call.)
                queued = held[1]
                queued.append((bytes(payload), is_text))
                if len(queued) == HELD_LIMIT:
                    reading(client, False)  # TCP pushes back on the client meanwhile
                return
            # Joins right behind joins go ahead (each takes effect once confirmed), so a
            # burst of them costs one Redis round trip, not one each.
        # `_handle`, inlined: one Python call less per message.
        try:
            message = decode(payload, is_text)
        except (InvalidMessage, InvalidText) as exc:
            self._invalid(client, exc)
            return
        self._dispatch(client, message)

    def _handle(self, client: Client, payload: Any, is_text: bool) -> None:
        """One inbound message (held behind a barrier until now)."""
        try:
            message = decode(payload, is_text)
        except (InvalidMessage, InvalidText) as exc:
            self._invalid(client, exc)
            return
        self._dispatch(client, message)

    def _invalid(self, client: Client, exc: Exception) -> None:
        self.counters.received["invalid"] += 1
        if isinstance(exc, InvalidMessage):
            self._send_error(client, ErrorMessages.INVALID_FORMAT)
            return
        fault(
            "invalid utf-8",
            "closing %s: text message is not valid UTF-8",
            client.id,
            extra=client_extra(client),
        )
        client.close(CloseCode.INVALID_TEXT, CloseCode.REASONS[CloseCode.INVALID_TEXT])

    def _dispatch(self, client: Client, message: dict[str, Any], sealed: bool = False) -> None:
        """Carry out the session's action for one decoded message; `sealed` when it came
        inside an `encrypted` event."""
        event = message.get("event")
        if not sealed:
            self.counters.count_received(event)
        action = client.receive(event, sealed)
        if action is _HANDLE:
            if self.message_handler is not None:
                self._invoke(
                    "message_handler",
                    self.message_handler,
                    client_id=client.id,
                    user_id=client.user_id,
                    message=message,
                )
        elif action is _IGNORE:
            return
        elif action is _JOIN:
            self._on_join(client, message.get("data"))
        elif action is _LEAVE:
            self._on_leave(client, message.get("data"))
        elif action is _AUTHENTICATE:
            self._hub.set_auth_deadline(client.handle, 3 * self.auth_timeout)
            data = message.get("data")
            self._spawn(self._authenticate(client, data if type(data) is dict else {}))
        elif action is _NOT_AUTHENTICATED:
            self._send_error(client, ErrorMessages.NOT_AUTHENTICATED)
        elif action is _ALREADY_AUTHENTICATED:
            self._send_error(client, ErrorMessages.ALREADY_AUTHENTICATED)
        elif action is _OPEN_ENCRYPTED:
            self._on_encrypted_inbound(client, message)
        elif action is Action.DROP_NO_EVENT:
            logger.debug(
                "message without event from %s dropped", client.id, extra=client_extra(client)
            )
        elif action is Action.DROP_SERVER_EVENT:
            logger.debug("server event %r from %s dropped", event, client.id)
        else:  # Action.DROP_NESTED
            logger.debug(
                "nested encrypted event from %s dropped", client.id, extra=client_extra(client)
            )

    def _to_message_handler(self, client: Client, message: dict[str, Any]) -> None:
        if self.message_handler is not None:
            self._invoke(
                "message_handler",
                self.message_handler,
                client_id=client.id,
                user_id=client.user_id,
                message=message,
            )

    def _on_encrypted_inbound(self, client: Client, message: dict[str, Any]) -> None:
        """An `encrypted` event from a client: opened and handled as if sent in clear.

        Without a scheme that opens it, it goes to message_handler as is (as in the original),
        so an application with its own scheme can open it there.
        """
        scheme = self.encryption
        if scheme is None:
            self._to_message_handler(client, message)
            return
        try:
            plaintext = scheme.open_inbound(client.id, message.get("data"))
            inner = decode(plaintext, False)
        except InvalidMessage:
            fault(
                "undecryptable message",
                "encrypted event from %s holds no JSON object",
                client.id,
                extra=client_extra(client),
            )
            self._send_error(client, ErrorMessages.INVALID_FORMAT)
            return
        except Exception as exc:  # the scheme's ValueError, or a bug in a custom scheme
            fault(
                "undecryptable message",
                "encrypted event from %s not opened: %s",
                client.id,
                exc,
                extra=client_extra(client),
            )
            self._send_error(client, ErrorMessages.DECRYPTION_FAILED)
            return
        self._dispatch(client, inner, sealed=True)

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
        Redis being unreachable or slower than `subscribe_timeout`) and, prefixed `broker_`,
        the broker's when it keeps any."""
        stats = self._hub.stats()
        stats["subscribe_waits"] = self._barrier.waits
        stats["subscribe_unconfirmed"] = self._barrier.unconfirmed
        broker_stats = getattr(self._broker, "stats", None)
        if callable(broker_stats):
            for key, value in broker_stats().items():
                stats[f"broker_{key}"] = value
        return stats

    @property
    def encrypted_connections(self) -> int:
        """Connections with an encrypted session now."""
        return self._encrypted

    @property
    def broker_state(self) -> str:
        """The broker's connection state (`roomcast.metrics.BROKER_STATES`)."""
        return str(getattr(self._broker, "state", "connected"))

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

    async def settle(self) -> None:
        """Return once queued encrypted deliveries are sealed and the broker's subscription
        changes so far are in effect (raises BrokerUnavailable while it reconnects)."""
        await self._sealer.wait_idle()
        sync = getattr(self._broker, "sync", None)  # only brokers that subscribe have it
        if sync is not None:
            await sync()
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
