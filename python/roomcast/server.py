"""WebSocketServerHelper: the protocol state machine, callbacks, local delivery and the broker.

Everything that scales with the number of connections (registry, rooms, users, fan-out,
deadlines, backpressure) lives in the Rust `Hub`; this module decides what to send and to
whom, and never loops over recipients itself for plaintext delivery.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from ssl import SSLContext
from typing import Any, Protocol

from . import _core
from .broker import Broker, BrokerUnavailable, create_broker
from .callbacks import check_callbacks
from .connection import Client
from .constants import (
    CloseCode,
    ErrorMessages,
    WebSocketChannels,
    WebSocketClientStates,
    WebSocketDefaults,
    WebSocketEvents,
    WebSocketMessageTypes,
)
from .http import HttpHandler, UpgradeRefused, WebServer
from .log import TRACE, client_extra, fault
from .metrics import Counters
from .protocol import (
    MISSING,
    InvalidMessage,
    InvalidText,
    decode,
    decode_envelope,
    encode,
    encode_envelope,
    error_payload,
    iso_now,
    requested_rooms,
    sanitize_rooms,
)

logger = logging.getLogger("roomcast")

_UNAUTHORIZED = WebSocketClientStates.UNAUTHORIZED
_AUTHENTICATING = WebSocketClientStates.AUTHENTICATING
_AUTHENTICATED = WebSocketClientStates.AUTHENTICATED
_DISCONNECTED = WebSocketClientStates.DISCONNECTED

_HEARTBEAT = WebSocketEvents.HEARTBEAT
_AUTHENTICATE = WebSocketEvents.AUTHENTICATE
_JOIN = WebSocketEvents.JOIN
_LEAVE = WebSocketEvents.LEAVE
_ENCRYPTED = WebSocketEvents.ENCRYPTED
# Server-to-client events a client may not send; dropped, never handed to message_handler.
_SERVER_ONLY = frozenset(
    {WebSocketEvents.CONNECTED, WebSocketEvents.ERROR, WebSocketEvents.DISCONNECT}
)

# Error events in clear, by message (see `_send_error` for who gets them sealed).
_ERRORS = {
    message: error_payload(message)
    for message in (
        ErrorMessages.INVALID_FORMAT,
        ErrorMessages.ALREADY_AUTHENTICATED,
        ErrorMessages.NOT_AUTHENTICATED,
        ErrorMessages.AUTH_FAILED,
        ErrorMessages.AUTH_ERROR,
        ErrorMessages.HANDSHAKE_FAILED,
        ErrorMessages.DECRYPTION_FAILED,
    )
}

# The channel of each kind of interest change the hub reports.
_INTEREST_PREFIXES = {
    _core.INTEREST_ROOM: WebSocketChannels.ROOM_PREFIX,
    _core.INTEREST_USER: WebSocketChannels.USER_PREFIX,
    _core.INTEREST_CLIENT: WebSocketChannels.CLIENT_PREFIX,
}

# How often the deadline wheel is swept; bounds how late a timeout close can be.
SWEEP_INTERVAL = 0.05
# Encrypted delivery gives the event loop back after this much work (seconds) or this many
# recipients (whose writes the next flush makes), so a fan-out to many encrypted clients
# never stalls other connections for long.
ENCRYPTED_SLICE = 0.002
ENCRYPTED_SLICE_CLIENTS = 32
# Bytes of plaintext sealed per call of a scheme's `seal_batch` (many keys, one message).
ENCRYPTED_CHUNK_BYTES = 256 * 1024

# server_options keys, with the original's camelCase names accepted as aliases.
_OPTION_DEFAULTS: dict[str, Any] = {
    "max_payload_length": WebSocketDefaults.MAX_PAYLOAD_LENGTH,
    "idle_timeout": WebSocketDefaults.IDLE_TIMEOUT,
    "backpressure_limit": WebSocketDefaults.BACKPRESSURE_LIMIT,
    "close_on_backpressure_limit": False,
    "send_pings": WebSocketDefaults.SEND_PINGS,
    "max_connections": None,
    "publish_to_self": WebSocketDefaults.PUBLISH_TO_SELF,
    "per_message_deflate": False,
    # Seconds a new connection has to complete its upgrade request.
    "handshake_timeout": 5.0,
    # Seconds queued deliveries wait before they are written, so that messages arriving
    # within the window share one write per client (0: written at the end of the loop
    # iteration that queued them).
    "write_delay": 0.0,
}
_OPTION_ALIASES = {
    "maxPayloadLength": "max_payload_length",
    "idleTimeout": "idle_timeout",
    "backpressureLimit": "backpressure_limit",
    "closeOnBackpressureLimit": "close_on_backpressure_limit",
    "sendPings": "send_pings",
    "maxConnections": "max_connections",
    "publishToSelf": "publish_to_self",
    "perMessageDeflate": "per_message_deflate",
    "handshakeTimeout": "handshake_timeout",
    "writeDelay": "write_delay",
}


class EncryptionScheme(Protocol):
    """What `encryption=` takes (`roomcast.crypto.EcdhScheme` is one).

    Besides the two hooks: `open_inbound(client_id, data) -> bytes` opens the `data` of an
    `encrypted` event from a client (raising ValueError when it cannot), `forget(client_id)`
    drops the client's key when it is gone. An optional `seal_batch(clients, event, data) ->
    list[bytes | None]` seals one message for many clients at once (used for fan-out when the
    scheme's own `outbound_transformer` is the one bound).
    """

    def handshake_fn(self, client_id: str, user_id: str | None, data: Any) -> Any: ...
    def outbound_transformer(self, client: Any, event: str, data: Any) -> Any: ...
    def open_inbound(self, client_id: str, data: Any) -> bytes: ...
    def forget(self, client_id: str) -> None: ...


def _scheme_of(hook: Any) -> Any:
    """The scheme object a bound hook method belongs to, if it is one."""
    owner = getattr(hook, "__self__", None)
    if callable(getattr(owner, "open_inbound", None)) and callable(getattr(owner, "forget", None)):
        return owner
    return None


def _refused(result: Any) -> bool:
    """None, False (and other falsy non-mappings) refuse; any mapping, even `{}`, accepts."""
    return result is None or result is False or (not result and not isinstance(result, Mapping))


def resolve_server_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults merged with `options`; unknown keys are an error, not a silent no-op."""
    resolved = dict(_OPTION_DEFAULTS)
    for key, value in (options or {}).items():
        name = _OPTION_ALIASES.get(key, key)
        if name not in resolved:
            raise ValueError(f"unknown server option: {key}")
        resolved[name] = value
    if resolved["per_message_deflate"]:
        raise ValueError("unsupported server option: per_message_deflate")
    if int(resolved["max_payload_length"]) <= 0:
        raise ValueError(f"max_payload_length must be positive: {resolved['max_payload_length']}")
    if int(resolved["backpressure_limit"]) <= 0:
        raise ValueError(f"backpressure_limit must be positive: {resolved['backpressure_limit']}")
    if float(resolved["handshake_timeout"]) <= 0:
        raise ValueError(f"handshake_timeout must be positive: {resolved['handshake_timeout']}")
    if float(resolved["idle_timeout"]) < 0:
        raise ValueError(f"idle_timeout must not be negative: {resolved['idle_timeout']}")
    if not float(resolved["write_delay"]) >= 0:
        raise ValueError(f"write_delay must not be negative: {resolved['write_delay']}")
    return resolved


class WebSocketServerHelper:
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
    ) -> None:
        if not redis_connection:
            raise ValueError(ErrorMessages.INVALID_REDIS)
        if authenticate_fn is None:
            raise ValueError("authenticate_fn is required")
        if auth_timeout <= 0 or heartbeat_timeout <= 0 or heartbeat_interval <= 0:
            raise ValueError(
                "auth_timeout, heartbeat_interval and heartbeat_timeout must be positive"
            )
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
            encryption = _scheme_of(handshake_fn) or _scheme_of(outbound_transformer)
        if encryption is not None:
            handshake_fn = handshake_fn or encryption.handshake_fn
            outbound_transformer = outbound_transformer or encryption.outbound_transformer
        self.encryption = encryption
        self.outbound_transformer = outbound_transformer
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
        self.encrypted_batch_limit = int(encrypted_batch_limit)
        self.server_options = resolve_server_options(server_options)
        self._max_payload_length = int(self.server_options["max_payload_length"])
        self._handshake_timeout = float(self.server_options["handshake_timeout"])
        self._max_connections = self.server_options["max_connections"]
        self._backpressure_limit = int(self.server_options["backpressure_limit"])
        self._close_on_backpressure = bool(self.server_options["close_on_backpressure_limit"])
        self._write_delay = float(self.server_options["write_delay"])

        self._loop: asyncio.AbstractEventLoop | None = None
        # A broker that subscribes by interest learns when local rooms, users and clients
        # appear and disappear; the hub records those changes and we forward them once per
        # loop iteration.
        interest = getattr(self._broker, "interest", None)
        self._interest: Callable[[str, bool], Any] | None = interest if callable(interest) else None
        self._hub = _core.Hub(
            self._schedule_flush,
            backpressure_limit=self._backpressure_limit,
            close_on_backpressure_limit=self._close_on_backpressure,
            heartbeat_timeout=self.heartbeat_timeout,
            idle_timeout=float(self.server_options["idle_timeout"]),
            send_pings=bool(self.server_options["send_pings"]),
            on_overflow=self._on_overflow,
            on_interest=self._on_interest if self._interest is not None else None,
            direct_writes=True,
        )
        self._clients: dict[str, Client] = {}
        self._encrypted = 0
        # Plain ints the protocol path bumps; `roomcast.metrics` reads them at scrape time.
        self.counters = Counters()
        # Encrypted deliveries (clients, event, data), run one after another so every client
        # gets its messages in order; `_sealer` drains them.
        self._sealing: deque[tuple[list[Client], str, Any]] = deque()
        self._sealer_running = False
        self._tasks: set[asyncio.Future[Any]] = set()
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
        self._loop = asyncio.get_running_loop()
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
        self._sealing.clear()
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
        return Client(self, str(uuid.uuid4()))

    # -- connection events (called by Client) ------------------------------------------------

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
        if client.state is _DISCONNECTED:
            return
        was_connected = client.state is _AUTHENTICATED
        client.state = _DISCONNECTED
        self._hub.remove(client.handle)
        self._clients.pop(client.id, None)
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

    def _on_message(self, client: Client, payload: Any, is_text: bool) -> None:
        self._hub.touch(client.handle)
        try:
            message = decode(payload, is_text)
        except InvalidMessage:
            self.counters.received["invalid"] += 1
            self._send_error(client, ErrorMessages.INVALID_FORMAT)
            return
        except InvalidText:
            self.counters.received["invalid"] += 1
            fault(
                "invalid utf-8",
                "closing %s: text message is not valid UTF-8",
                client.id,
                extra=client_extra(client),
            )
            client.close(CloseCode.INVALID_TEXT, CloseCode.REASONS[CloseCode.INVALID_TEXT])
            return
        self._dispatch(client, message)

    def _send_error(self, client: Client, message: str) -> None:
        """An error event: sealed like any other message once the client holds its key (it
        got `connected`), in clear before that (during authentication or the handshake)."""
        if client.encrypted and client.state is _AUTHENTICATED:
            self._deliver_encrypted((client,), WebSocketEvents.ERROR, {"message": message})
            return
        payload = _ERRORS.get(message)
        self._hub.send(client.handle, payload if payload is not None else error_payload(message))

    def _dispatch(self, client: Client, message: dict[str, Any], sealed: bool = False) -> None:
        """Act on one decoded message; `sealed` when it came inside an `encrypted` event."""
        event = message.get("event")
        if not sealed:
            self.counters.count_received(event)
        if type(event) is not str or not event:
            logger.debug(
                "message without event from %s dropped", client.id, extra=client_extra(client)
            )
            return
        if event == _HEARTBEAT:
            return
        state = client.state
        if event == _AUTHENTICATE:
            if state is not _UNAUTHORIZED:
                self._send_error(client, ErrorMessages.ALREADY_AUTHENTICATED)
                return
            # The state changes now, not when the task starts: a second authenticate in the
            # same read must already see it.
            client.state = _AUTHENTICATING
            self._hub.set_auth_deadline(client.handle, 3 * self.auth_timeout)
            data = message.get("data")
            self._spawn(self._authenticate(client, data if type(data) is dict else {}))
            return
        if state is not _AUTHENTICATED:
            self._send_error(client, ErrorMessages.NOT_AUTHENTICATED)
            return
        if event == _JOIN:
            self._on_join(client, message.get("data"))
        elif event == _LEAVE:
            self._on_leave(client, message.get("data"))
        elif event in _SERVER_ONLY:
            logger.debug("server event %r from %s dropped", event, client.id)
        elif event == _ENCRYPTED:
            if sealed:
                logger.debug(
                    "nested encrypted event from %s dropped", client.id, extra=client_extra(client)
                )
            else:
                self._on_encrypted_inbound(client, message)
        else:
            self._to_message_handler(client, message)

    def _to_message_handler(self, client: Client, message: dict[str, Any]) -> None:
        if self.message_handler is not None:
            self._invoke(
                "message_handler",
                self.message_handler,
                client_id=client.id,
                user_id=client.user_id,
                message=message,
            )

    # -- authentication ------------------------------------------------------------------

    async def _authenticate(self, client: Client, data: dict[str, Any]) -> None:
        try:
            result = self.authenticate_fn(data=data)
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            logger.exception("authenticate_fn raised for %s", client.id, extra=client_extra(client))
            self.counters.auth["error"] += 1
            if client.state is _AUTHENTICATING and not client.closing:
                self._send_error(client, ErrorMessages.AUTH_ERROR)
                client.close(CloseCode.AUTH_FAILED, CloseCode.REASONS[CloseCode.AUTH_FAILED])
            return
        if client.state is not _AUTHENTICATING or client.closing:
            logger.debug("%s left during authentication", client.id, extra=client_extra(client))
            return
        if _refused(result):
            self.counters.auth["failed"] += 1
            logger.debug("authentication rejected for %s", client.id, extra=client_extra(client))
            self._send_error(client, ErrorMessages.AUTH_FAILED)
            client.close(CloseCode.AUTH_FAILED, CloseCode.REASONS[CloseCode.AUTH_FAILED])
            return
        if not isinstance(result, Mapping):
            result = {}
        user_id = result.get("user_id", result.get("userId"))
        client.user_id = None if user_id is None else str(user_id)
        metadata = result.get("metadata")
        client.metadata = dict(metadata) if isinstance(metadata, Mapping) else None

        if self.require_encryption or (
            self.handshake_fn is not None and data.get("publicKey") is not None
        ):
            if not await self._handshake(client, data):
                return
        if not await self._subscribe_ahead(client):
            return

        client.state = _AUTHENTICATED
        hub = self._hub
        hub.authenticate(client.handle, client.user_id)
        hub.join(client.handle, client.id)
        for room in self.default_rooms:
            hub.join(client.handle, room)
        connected: dict[str, Any] = {"id": client.id}
        if client.user_id is not None:
            connected["userId"] = client.user_id
        connected["time"] = iso_now()
        if client.encrypted:
            # In clear, never through the transformer: the client needs them to derive its key.
            if client.server_public_key is not None:
                connected["serverPublicKey"] = client.server_public_key
            if client.salt is not None:
                connected["salt"] = client.salt
        hub.send(client.handle, encode(WebSocketEvents.CONNECTED, connected))
        self.counters.auth["ok"] += 1
        logger.log(
            TRACE,
            "authenticated %s (user %s, encrypted %s)",
            client.id,
            client.user_id,
            client.encrypted,
            extra=client_extra(client),
        )
        if self.client_connected_fn is not None:
            self._invoke(
                "client_connected_fn",
                self.client_connected_fn,
                client_id=client.id,
                user_id=client.user_id,
                metadata=client.metadata,
            )

    async def _subscribe_ahead(self, client: Client) -> bool:
        """With subscriptions by interest, subscribe the channels that reach this client and
        wait until Redis confirms them before it is told it is connected, so a message sent to
        it from another node right after `connected` is not lost. False when it left meanwhile.
        """
        interest = self._interest
        sync = getattr(self._broker, "sync", None)
        if interest is None or sync is None:
            return True
        own = [WebSocketChannels.for_client(client.id), WebSocketChannels.for_room(client.id)]
        shared = [WebSocketChannels.for_room(room) for room in self.default_rooms]
        if client.user_id is not None:
            shared.append(WebSocketChannels.for_user(client.user_id))
        for channel in own + shared:
            interest(channel, True)
        try:
            await sync()
        except (BrokerUnavailable, TimeoutError):
            # Redis is away: local delivery works, and the broker resubscribes on recovery.
            logger.debug("subscriptions for %s not confirmed: redis unavailable", client.id)
        if client.state is _AUTHENTICATING and not client.closing:
            return True
        # It left: give back what the hub does not hold for other clients.
        for channel in own:
            interest(channel, False)
        for room in self.default_rooms:
            if not self._hub.has_room(room):
                interest(WebSocketChannels.for_room(room), False)
        if client.user_id is not None and not self._hub.user_members(client.user_id):
            interest(WebSocketChannels.for_user(client.user_id), False)
        logger.debug(
            "%s left while its subscriptions were confirmed", client.id, extra=client_extra(client)
        )
        return False

    async def _handshake(self, client: Client, data: dict[str, Any]) -> bool:
        """Run handshake_fn; on refusal close the client and return False."""
        if self.handshake_fn is None:
            logger.error("require_encryption is on but no handshake_fn: closing %s", client.id)
            client.close(
                CloseCode.ENCRYPTION_REQUIRED, CloseCode.REASONS[CloseCode.ENCRYPTION_REQUIRED]
            )
            return False
        try:
            outcome = self.handshake_fn(client_id=client.id, user_id=client.user_id, data=data)
            if inspect.isawaitable(outcome):
                outcome = await outcome
        except Exception:
            logger.exception("handshake_fn raised for %s", client.id, extra=client_extra(client))
            outcome = None
        if client.state is not _AUTHENTICATING or client.closing:
            logger.debug("%s left during the handshake", client.id, extra=client_extra(client))
            self._forget_keys(client)  # the handshake may have stored a key after it left
            return False
        if _refused(outcome) or not isinstance(outcome, Mapping):
            logger.debug("handshake refused for %s", client.id, extra=client_extra(client))
            self._forget_keys(client)
            self._send_error(client, ErrorMessages.HANDSHAKE_FAILED)
            client.close(
                CloseCode.ENCRYPTION_REQUIRED, CloseCode.REASONS[CloseCode.ENCRYPTION_REQUIRED]
            )
            return False
        client.server_public_key = outcome.get("server_public_key", outcome.get("serverPublicKey"))
        client.salt = outcome.get("salt")
        self.enable_client_encryption(client.id)
        return True

    # -- rooms ---------------------------------------------------------------------------

    def _on_join(self, client: Client, data: Any) -> None:
        requested = requested_rooms(data)
        if not requested:
            return
        rooms = sanitize_rooms(requested)
        if not rooms:
            fault(
                "invalid room",
                "join refused for %s: no valid room names in %r",
                client.id,
                requested,
                extra=client_extra(client),
            )
            return
        if self.validate_room_fn is None:
            fault(
                "join refused",
                "join refused for %s: no validate_room_fn configured",
                client.id,
                extra=client_extra(client),
            )
            return
        try:
            allowed = self.validate_room_fn(
                client_id=client.id, user_id=client.user_id, rooms=rooms
            )
        except Exception:
            logger.exception(
                "validate_room_fn raised for %s", client.id, extra=client_extra(client)
            )
            return
        if inspect.isawaitable(allowed):
            self._spawn(self._join_when_validated(client, rooms, allowed))
        else:
            self._join_allowed(client, rooms, allowed)

    async def _join_when_validated(
        self, client: Client, rooms: list[str], allowed: Awaitable[Any]
    ) -> None:
        try:
            result = await allowed
        except Exception:
            logger.exception(
                "validate_room_fn raised for %s", client.id, extra=client_extra(client)
            )
            return
        self._join_allowed(client, rooms, result)

    def _join_allowed(self, client: Client, rooms: list[str], allowed: Any) -> None:
        if client.state is not _AUTHENTICATED:
            return
        if not allowed:
            logger.debug(
                "join refused for %s: no room allowed of %r",
                client.id,
                rooms,
                extra=client_extra(client),
            )
            return
        requested = set(rooms)
        # validate_room_fn returns a subset: anything else it returns is ignored.
        joined = [r for r in allowed if r in requested and self._hub.join(client.handle, r)]
        logger.debug("%s joined %r", client.id, joined)

    def _on_leave(self, client: Client, data: Any) -> None:
        for room in requested_rooms(data):
            if type(room) is str and room != client.id:
                self._hub.leave(client.handle, room)

    def join_room(self, client_id: str, room: str) -> bool:
        """Put a local client in `room` (no name rules: the server may use any name)."""
        client = self._clients.get(client_id)
        return client is not None and self._hub.join(client.handle, room)

    def leave_room(self, client_id: str, room: str) -> bool:
        """Take a local client out of `room`; its own-id room cannot be left."""
        client = self._clients.get(client_id)
        if client is None or room == client_id:
            return False
        return self._hub.leave(client.handle, room)

    # -- encryption hooks ----------------------------------------------------------------

    def enable_client_encryption(self, client_id: str) -> None:
        """From now on the client gets only what outbound_transformer makes of each message."""
        if self.outbound_transformer is None:
            raise ValueError(
                "enable_client_encryption needs an outbound_transformer: "
                "the client could receive nothing"
            )
        client = self._clients.get(client_id)
        if client is None or client.encrypted:
            return
        client.encrypted = True
        self._encrypted += 1
        self._hub.set_encrypted(client.handle, True)

    def _forget_keys(self, client: Client) -> None:
        if self.encryption is None:
            return
        try:
            self.encryption.forget(client.id)
        except Exception:
            logger.exception(
                "encryption scheme failed to forget %s", client.id, extra=client_extra(client)
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

    def _deliver_encrypted(self, clients: Iterable[Client], event: str, data: Any) -> None:
        """Queue one message for encrypted clients; deliveries run in order, in a task."""
        if self.outbound_transformer is None:
            logger.warning("encrypted clients skipped for %r: no outbound_transformer", event)
            return
        clients = list(clients)
        if not clients:
            return
        self._sealing.append((clients, event, data))
        if not self._sealer_running:
            self._sealer_running = True
            self._spawn(self._sealer())

    async def _sealer(self) -> None:
        try:
            while self._sealing:
                clients, event, data = self._sealing.popleft()
                transformer = self.outbound_transformer
                scheme = self.encryption
                seal_batch = getattr(scheme, "seal_batch", None)
                # The batch path only stands in for the scheme's own transformer.
                batched = seal_batch is not None and transformer == scheme.outbound_transformer
                try:
                    if batched:
                        await self._seal_batched(seal_batch, clients, event, data)
                    elif transformer is not None:
                        await self._transform_each(transformer, clients, event, data)
                except Exception:
                    logger.exception("encrypted delivery of %r failed", event)
        finally:
            self._sealer_running = False

    async def _seal_batched(
        self,
        seal_batch: Callable[[Sequence[Client], str, Any], list[bytes | None]],
        clients: list[Client],
        event: str,
        data: Any,
    ) -> None:
        """The scheme seals chunks of clients at once; the loop gets control between chunks
        (and flushes what the previous chunk queued)."""
        size = len(encode(event, data))
        chunk = max(1, min(ENCRYPTED_SLICE_CLIENTS, ENCRYPTED_CHUNK_BYTES // max(size, 1)))
        hub = self._hub
        for first in range(0, len(clients), chunk):
            if first:
                await asyncio.sleep(0)
            part = [c for c in clients[first : first + chunk] if c.state is _AUTHENTICATED]
            try:
                payloads = seal_batch(part, event, data)
            except Exception:
                logger.exception("seal_batch raised for %r", event)
                continue
            if len(payloads) != len(part):
                logger.error("seal_batch gave %d messages for %d clients", len(payloads), len(part))
                continue
            for client, payload in zip(part, payloads, strict=True):
                if payload is not None:
                    hub.send(client.handle, payload)
                else:
                    logger.debug("no key for %s: %r dropped", client.id, event)

    async def _transform_each(
        self, transformer: Callable[..., Any], clients: list[Client], event: str, data: Any
    ) -> None:
        """outbound_transformer per client, at most encrypted_batch_limit awaiting at once."""
        in_flight: set[asyncio.Future[None]] = set()
        started = time.perf_counter()
        done = 0
        try:
            for client in clients:
                done += 1
                if (
                    done > ENCRYPTED_SLICE_CLIENTS
                    or time.perf_counter() - started > ENCRYPTED_SLICE
                ):
                    await asyncio.sleep(0)
                    started = time.perf_counter()
                    done = 1
                if client.state is not _AUTHENTICATED:
                    continue
                try:
                    result = transformer(client=client, event=event, data=data)
                except Exception:
                    logger.exception(
                        "outbound_transformer raised for %s", client.id, extra=client_extra(client)
                    )
                    continue
                if not inspect.isawaitable(result):
                    self._send_transformed(client, event, result)
                    continue
                in_flight.add(asyncio.ensure_future(self._finish_transform(client, event, result)))
                if len(in_flight) >= self.encrypted_batch_limit:
                    _, in_flight = await asyncio.wait(
                        in_flight, return_when=asyncio.FIRST_COMPLETED
                    )
                    started = time.perf_counter()
                    done = 0
            if in_flight:
                await asyncio.wait(in_flight)
        except asyncio.CancelledError:
            for task in in_flight:
                task.cancel()
            raise

    async def _finish_transform(self, client: Client, event: str, result: Awaitable[Any]) -> None:
        try:
            transformed = await result
        except Exception:
            logger.exception(
                "outbound_transformer raised for %s", client.id, extra=client_extra(client)
            )
            return
        self._send_transformed(client, event, transformed)

    def _send_transformed(self, client: Client, event: str, result: Any) -> None:
        if not isinstance(result, Mapping) or "event" not in result:
            # Never fall back to plaintext for an encrypted client.
            logger.warning(
                "outbound_transformer gave nothing for %s (%r): dropped", client.id, event
            )
            return
        if client.state is _AUTHENTICATED:
            self._hub.send(client.handle, encode(result["event"], result.get("data", MISSING)))

    # -- local delivery ------------------------------------------------------------------

    def send_to_client(self, client_id: str, event: str, data: Any = MISSING) -> int:
        """Deliver to one local authenticated client; returns 1 if queued, else 0."""
        client = self._clients.get(client_id)
        if client is None or client.state is not _AUTHENTICATED:
            return 0
        if client.encrypted:
            self._deliver_encrypted((client,), event, data)
            return 1
        return int(self._hub.send(client.handle, encode(event, data)))

    def send_to_user(self, user_id: str, event: str, data: Any = MISSING) -> int:
        """Deliver to every local session of a user; returns how many were queued."""
        count = self._hub.send_user(user_id, encode(event, data))
        return count + self._to_encrypted(None, user_id, None, event, data)

    def send_to_room(
        self, room: str, event: str, data: Any = MISSING, exclude: list[str] | None = None
    ) -> int:
        """Deliver to every local authenticated member of `room` not in `exclude`."""
        count = self._hub.send_room(room, encode(event, data), exclude or None)
        return count + self._to_encrypted(room, None, exclude, event, data)

    def broadcast(self, event: str, data: Any = MISSING, exclude: list[str] | None = None) -> int:
        """Deliver to every local authenticated client not in `exclude`."""
        count = self._hub.broadcast(encode(event, data), exclude or None)
        return count + self._to_encrypted(None, None, exclude, event, data)

    def _to_encrypted(
        self,
        room: str | None,
        user_id: str | None,
        exclude: list[str] | None,
        event: str,
        data: Any,
    ) -> int:
        """The encrypted recipients the hub's plaintext fan-out skipped (a room's, a user's or
        everyone's): queued for sealing. Returns how many."""
        if not self._encrypted:
            return 0
        owners = self._hub.encrypted_owners(room, user_id, exclude or None)
        self._deliver_encrypted(owners, event, data)
        return len(owners)

    # -- delivery across nodes -------------------------------------------------------------

    def send(
        self, destination: str | None = None, payload: Mapping[str, Any] | None = None
    ) -> None:
        """Deliver locally and publish to the other nodes.

        `payload` is `{"topic": event, "data": ...}`; one without a topic or a `data` key is
        ignored. No destination: everyone. A local client id: that client. A local room: the
        room. Anything else: published as a room envelope, which reaches a room of that name
        or a client of that id on any node.
        """
        if type(payload) is not dict and not isinstance(payload, Mapping):
            return
        topic = payload.get("topic")
        if not topic or "data" not in payload:
            return
        data = payload["data"]
        if not destination:
            self.broadcast(topic, data)
            self._publish(WebSocketMessageTypes.BROADCAST, None, topic, data)
        elif destination in self._clients:
            self.send_to_client(destination, topic, data)
            self._publish(WebSocketMessageTypes.CLIENT, destination, topic, data)
        else:
            if self._hub.has_room(destination):
                self.send_to_room(destination, topic, data)
            self._publish(WebSocketMessageTypes.ROOM, destination, topic, data)

    def _publish(
        self,
        type_: str,
        target: str | None,
        event: str,
        data: Any,
        exclude: list[str] | None = None,
    ) -> None:
        if type_ == WebSocketMessageTypes.BROADCAST:
            channel = WebSocketChannels.BROADCAST
        elif type_ == WebSocketMessageTypes.ROOM:
            channel = WebSocketChannels.for_room(target or "")
        elif type_ == WebSocketMessageTypes.CLIENT:
            channel = WebSocketChannels.for_client(target or "")
        else:
            channel = WebSocketChannels.for_user(target or "")
        self._broker.publish(
            channel, encode_envelope(self.server_id, type_, event, data, target, exclude)
        )

    def _on_envelope(self, channel: str, raw: bytes) -> None:
        envelope = decode_envelope(raw)
        if envelope is None:
            logger.error("malformed envelope on %s dropped", channel)
            return
        if envelope.server_id == self.server_id:
            return
        type_, target = envelope.type, envelope.target
        if type_ == WebSocketMessageTypes.BROADCAST:
            self.broadcast(envelope.event, envelope.data, envelope.exclude)
        elif target is None:
            logger.debug("envelope of type %r without target on %s dropped", type_, channel)
        elif type_ == WebSocketMessageTypes.ROOM:
            self.send_to_room(target, envelope.event, envelope.data, envelope.exclude)
        elif type_ == WebSocketMessageTypes.CLIENT:
            self.send_to_client(target, envelope.event, envelope.data)
        elif type_ == WebSocketMessageTypes.USER:
            self.send_to_user(target, envelope.event, envelope.data)
        else:
            logger.debug("envelope of unknown type %r on %s dropped", type_, channel)

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
        """Counters from the hub (connections, rooms, users, skipped messages, queued bytes)
        and, prefixed `broker_`, from the broker when it keeps any."""
        stats = self._hub.stats()
        broker_stats = getattr(self._broker, "stats", None)
        if callable(broker_stats):
            for key, value in broker_stats().items():
                stats[f"broker_{key}"] = value
        return stats

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(ok, body) for a load balancer: ok while this node accepts connections and its
        broker is connected; otherwise the body says what is wrong."""
        broker = getattr(self._broker, "state", "connected")
        if self._accepting and broker == "connected":
            return True, {"status": "ok"}
        body: dict[str, Any] = {"status": "degraded"}
        if not self._accepting:
            body["accepting"] = False
        if broker != "connected":
            body["broker"] = broker
        return False, body

    # -- internals -----------------------------------------------------------------------

    def _schedule(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        loop.call_soon(callback)

    def _schedule_flush(self, flush: Callable[[], None]) -> None:
        """The hub's `schedule`: its flush runs at the end of this loop iteration, or
        `write_delay` later."""
        if not self._write_delay:
            self._schedule(flush)
            return
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
        self._schedule(self._sync_interest)

    def _sync_interest(self) -> None:
        interest = self._interest
        if interest is None:
            return
        prefixes = _INTEREST_PREFIXES
        for kind, name, present in self._hub.drain_interest():
            interest(prefixes[kind] + name, present)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        assert self._loop is not None
        task = asyncio.ensure_future(coro, loop=self._loop)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task failed", exc_info=task.exception())

    def _invoke(self, name: str, fn: Callable[..., Any], **kwargs: Any) -> None:
        """Call an application callback; log (never raise) what it raises, sync or async."""
        try:
            result = fn(**kwargs)
        except Exception:
            logger.exception("%s raised", name)
            return
        if inspect.isawaitable(result):
            self._spawn(self._guard(name, result))

    @staticmethod
    async def _guard(name: str, awaitable: Awaitable[Any]) -> None:
        try:
            await awaitable
        except Exception:
            logger.exception("%s raised", name)
