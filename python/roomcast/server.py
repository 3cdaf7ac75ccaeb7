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
from .broker import Broker, create_broker
from .callbacks import check_callbacks
from .connection import Client
from .constants import (
    LISTEN_BACKLOG,
    SUBSCRIBE_TIMEOUT,
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

# Messages a client may queue behind a join barrier before its socket stops being read.
HELD_LIMIT = 256

_ROOM_PREFIX = WebSocketChannels.ROOM_PREFIX
_USER_PREFIX = WebSocketChannels.USER_PREFIX
_CLIENT_PREFIX = WebSocketChannels.CLIENT_PREFIX

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
    "backlog": LISTEN_BACKLOG,
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


def _reading(client: Client, on: bool) -> None:
    """Resume or pause reading from a client's socket."""
    transport = client.transport
    raw = getattr(transport, "underlying_transport", None)
    try:
        if on and not raw.is_reading():  # type: ignore[union-attr]
            raw.resume_reading()  # type: ignore[union-attr]
        elif not on and raw.is_reading():  # type: ignore[union-attr]
            raw.pause_reading()  # type: ignore[union-attr]
    except (AttributeError, RuntimeError):  # closing, or not a socket transport
        logger.debug("reading not %s for %s", "resumed" if on else "paused", client.id)


def _is_join(payload: Any, is_text: bool) -> bool:
    try:
        return decode(payload, is_text).get("event") == _JOIN
    except (InvalidMessage, InvalidText):
        return False


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
    if int(resolved["backlog"]) <= 0:
        raise ValueError(f"backlog must be positive: {resolved['backlog']}")
    if float(resolved["idle_timeout"]) < 0:
        raise ValueError(f"idle_timeout must not be negative: {resolved['idle_timeout']}")
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
        self.subscribe_timeout = float(subscribe_timeout)
        self.server_options = resolve_server_options(server_options)
        self._max_payload_length = int(self.server_options["max_payload_length"])
        self._handshake_timeout = float(self.server_options["handshake_timeout"])
        self._max_connections = self.server_options["max_connections"]
        self._backpressure_limit = int(self.server_options["backpressure_limit"])
        self._close_on_backpressure = bool(self.server_options["close_on_backpressure_limit"])

        self._loop: asyncio.AbstractEventLoop | None = None
        # A broker that subscribes by interest learns when local rooms, users and clients
        # appear and disappear; the hub records those changes and we forward them once per
        # loop iteration.
        interest = getattr(self._broker, "interest", None)
        self._interest: Callable[[str, bool], Any] | None = interest if callable(interest) else None
        # The join barrier (see `_barrier`): brokers that subscribe per channel tell when
        # Redis has confirmed a subscription. Meanwhile the joining client's inbound messages
        # wait in `_held` (id -> [barriers pending, messages]); channels subscribed ahead of
        # the hub (before the join takes effect) are counted in `_ahead`.
        confirmation = getattr(self._broker, "confirmation", None)
        subscribe_new = getattr(self._broker, "subscribe_new", None)
        if not getattr(self._broker, "confirms_subscriptions", False) or self._interest is None:
            confirmation = None  # patterns (or no Redis): every channel is always live
        self._confirmation: Callable[[list[str]], asyncio.Future[Any] | None] | None = (
            confirmation if callable(confirmation) and callable(subscribe_new) else None
        )
        self._subscribe_new: Callable[[list[str]], asyncio.Future[Any] | None] = subscribe_new
        self._held: dict[str, list[Any]] = {}
        self._lifts: dict[asyncio.Future[Any], asyncio.Future[bool]] = {}
        self._logins: dict[asyncio.Future[bool], list[tuple[Client, list[str]]]] = {}
        self._ahead: dict[str, int] = {}
        self._waits = 0
        self._unconfirmed = 0
        self._confirm_late = False
        self._hub = _core.Hub(
            self._schedule,
            backpressure_limit=self._backpressure_limit,
            close_on_backpressure_limit=self._close_on_backpressure,
            heartbeat_timeout=self.heartbeat_timeout,
            idle_timeout=float(self.server_options["idle_timeout"]),
            send_pings=bool(self.server_options["send_pings"]),
            on_overflow=self._on_overflow,
            on_interest=self._on_interest if self._interest is not None else None,
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

    def _on_message(self, client: Client, payload: Any, is_text: bool) -> None:
        self._hub.touch(client.handle)
        if self._held:
            held = self._held.get(client.id)
            if held is not None and (held[1] or not _is_join(payload, is_text)):
                # Behind a join barrier: handled in order once it is lifted. (The payload
                # is only valid during this call.)
                queued = held[1]
                queued.append((bytes(payload), is_text))
                if len(queued) == HELD_LIMIT:
                    _reading(client, False)  # TCP pushes back on the client meanwhile
                return
            # Joins right behind joins go ahead (each takes effect once confirmed), so a
            # burst of them costs one Redis round trip, not one each.
        self._handle(client, payload, is_text)

    def _handle(self, client: Client, payload: Any, is_text: bool) -> None:
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
        ahead, lifted = self._subscribe_ahead(client)
        if lifted is None:
            self._login(client, ahead, None)
        else:
            # The rest runs when Redis confirms (or the bound passes), not in this task; the
            # logins waiting for one confirmation complete together, in arrival order.
            logins = self._logins.get(lifted)
            if logins is None:
                logins = self._logins[lifted] = []
                lifted.add_done_callback(self._login_all)
            logins.append((client, ahead))

    def _login_all(self, lifted: asyncio.Future[bool]) -> None:
        for client, ahead in self._logins.pop(lifted, ()):
            self._login(client, ahead, lifted)

    def _login(self, client: Client, ahead: list[str], lifted: asyncio.Future[bool] | None) -> None:
        """Authenticated (and subscribed): into the hub, `connected`, client_connected_fn."""
        if lifted is not None:
            self._count_unconfirmed(lifted)
        if client.state is not _AUTHENTICATING or client.closing:
            if lifted is not None:
                if ahead:
                    self._release_early(ahead, joined=False)
                self._interest(_CLIENT_PREFIX + client.id, False)  # type: ignore[misc]
                self._interest(_ROOM_PREFIX + client.id, False)  # type: ignore[misc]
            logger.info("%s left while its subscriptions were confirmed", client.id)
            return
        client.state = _AUTHENTICATED
        hub = self._hub
        hub.authenticate(client.handle, client.user_id)
        hub.join(client.handle, client.id)
        for room in self.default_rooms:
            hub.join(client.handle, room)
        if ahead:
            self._release_early(ahead, joined=True)
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

    def _subscribe_ahead(self, client: Client) -> tuple[list[str], asyncio.Future[bool] | None]:
        """With subscriptions by interest, subscribe the channels that reach this client, so
        that `connected` can wait (at most `subscribe_timeout`) until Redis confirms them:
        a message sent to it from another node right after `connected` is then not lost.
        Returns the channels subscribed early (for `_release_early`) and the barrier."""
        if self._confirmation is None:
            return [], None
        # Its own channels are new (no one else can hold them): no look-up, no counting.
        waiter = self._subscribe_new([_CLIENT_PREFIX + client.id, _ROOM_PREFIX + client.id])
        if waiter is None:  # the broker is closing
            return [], None
        shared = [_ROOM_PREFIX + room for room in self.default_rooms]
        if client.user_id is not None:
            shared.append(_USER_PREFIX + client.user_id)
        late = self._confirmation(shared)  # usually None: live already
        if late is None:
            return [], self._barrier(waiter)
        self._subscribe_early(shared)
        if late is not waiter:
            waiter = asyncio.gather(waiter, late)
        return shared, self._barrier(waiter)

    # -- the join barrier ----------------------------------------------------------------

    def _subscribe_early(self, channels: list[str]) -> None:
        """Subscribe `channels` ahead of the hub, for a join that takes effect once Redis
        confirms them; each is held until `_release_early`."""
        interest = self._interest
        assert interest is not None
        ahead = self._ahead
        for channel in channels:
            count = ahead.get(channel, 0)
            ahead[channel] = count + 1
            if not count:
                interest(channel, True)

    def _release_early(self, channels: list[str], joined: bool) -> None:
        """The join that subscribed `channels` early took effect (`joined`: the hub holds
        them now) or never will: give back what neither the hub nor another join holds."""
        interest = self._interest
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
        if channel.startswith(_ROOM_PREFIX):
            return hub.has_room(channel[len(_ROOM_PREFIX) :])
        if channel.startswith(_USER_PREFIX):
            return bool(hub.user_members(channel[len(_USER_PREFIX) :]))
        client = self._clients.get(channel[len(_CLIENT_PREFIX) :])
        return client is not None and client.state is _AUTHENTICATED

    def _barrier(self, waiter: asyncio.Future[Any]) -> asyncio.Future[bool]:
        """A future resolved True once `waiter` (a broker confirmation) is, or False after
        `subscribe_timeout` or at once while Redis is unreachable: no one waits longer.
        Everyone waiting for one confirmation shares it (and its timer); do not cancel it."""
        lifted = self._lifts.get(waiter)
        if lifted is not None:
            self._waits += 1
            return lifted
        loop = self._loop
        assert loop is not None
        lifted = loop.create_future()
        if not getattr(self._broker, "connected", True):
            self._unconfirmed_join("redis is unreachable")
            lifted.set_result(False)
            return lifted
        self._waits += 1
        self._lifts[waiter] = lifted

        def confirmed(_: Any) -> None:
            self._lifts.pop(waiter, None)
            if lifted.done():
                return
            timer.cancel()
            if self._confirm_late:
                self._confirm_late = False
                logger.warning("redis confirms subscriptions again")
            lifted.set_result(True)

        def late() -> None:
            self._lifts.pop(waiter, None)
            if not lifted.done():
                self._unconfirmed_join(f"no confirmation within {self.subscribe_timeout:g} s")
                lifted.set_result(False)

        timer = loop.call_later(self.subscribe_timeout, late)
        waiter.add_done_callback(confirmed)
        return lifted

    def _count_unconfirmed(self, lifted: asyncio.Future[bool]) -> None:
        if lifted.cancelled() or not lifted.result():
            self._unconfirmed += 1

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
            held = self._held[client.id] = [0, deque(), None]  # pending, queued, last `then`
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
            self._count_unconfirmed(lifted)
            if earlier is None or earlier.done():
                run()
            else:
                earlier.add_done_callback(run)

        lifted.add_done_callback(done)

    def _lift(self, client: Client, held: list[Any]) -> None:
        held[0] -= 1
        if held[0] > 0 or self._held.get(client.id) is not held:
            return  # another barrier pending, or the client is gone
        del self._held[client.id]
        messages: deque[tuple[bytes, bool]] = held[1]
        if len(messages) >= HELD_LIMIT:
            _reading(client, True)
        while messages:
            if client.state is _DISCONNECTED or client.closing:
                return
            payload, is_text = messages.popleft()
            self._handle(client, payload, is_text)
            again = self._held.get(client.id)
            if again is not None:
                # That message started a new barrier: the rest waits behind it too, but
                # for the joins right behind it (as in `_on_message`).
                while messages and _is_join(*messages[0]):
                    self._handle(client, *messages.popleft())
                again[1].extendleft(reversed(messages))
                if len(again[1]) >= HELD_LIMIT:
                    _reading(client, False)
                return

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
            # The client's next messages wait for the validation (and the join) too.
            assert self._loop is not None
            lifted: asyncio.Future[bool] = self._loop.create_future()
            self._hold(client, lifted, lambda: None)
            self._spawn(self._join_when_validated(client, rooms, allowed, lifted))
        else:
            self._join_allowed(client, rooms, allowed)

    async def _join_when_validated(
        self,
        client: Client,
        rooms: list[str],
        allowed: Awaitable[Any],
        lifted: asyncio.Future[bool],
    ) -> None:
        try:
            result = await allowed
        except Exception:
            logger.exception(
                "validate_room_fn raised for %s", client.id, extra=client_extra(client)
            )
            result = None
        try:
            if result is not None:
                self._join_allowed(client, rooms, result)
        finally:
            lifted.set_result(True)

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
        rooms = [r for r in allowed if r in requested]
        if self._confirmation is not None:
            channels = [WebSocketChannels.for_room(r) for r in rooms]
            waiter = self._confirmation(channels)
            if waiter is not None:
                # The join takes effect once Redis confirms: the client's later messages
                # are handled after it, and every message published from then on reaches it.
                self._subscribe_early(channels)
                self._hold(
                    client,
                    self._barrier(waiter),
                    lambda: self._join_now(client, rooms, channels),
                )
                return
            if client.id in self._held:
                # Live already, but an earlier join of the client is not: after it.
                assert self._loop is not None
                ready: asyncio.Future[bool] = self._loop.create_future()
                ready.set_result(True)
                self._hold(client, ready, lambda: self._join_now(client, rooms, []))
                return
        self._join_now(client, rooms, [])

    def _join_now(self, client: Client, rooms: list[str], ahead: list[str]) -> None:
        joined = client.state is _AUTHENTICATED and not client.closing
        if joined:
            hub, handle = self._hub, client.handle
            added = [r for r in rooms if hub.join(handle, r)]
            logger.debug("%s joined %r", client.id, added)
        if ahead:
            self._release_early(ahead, joined)

    def _on_leave(self, client: Client, data: Any) -> None:
        for room in requested_rooms(data):
            if type(room) is str and room != client.id:
                self._hub.leave(client.handle, room)

    def join_room(self, client_id: str, room: str) -> bool:
        """Put a local client in `room` (no name rules: the server may use any name).

        It is a member at once for local delivery; when the node must first subscribe to
        the room in Redis, the client's next messages are handled only once Redis has
        confirmed it (at most `subscribe_timeout` later). `join_room_confirmed` also waits.
        """
        return self._join_room(client_id, room) is not None

    async def join_room_confirmed(self, client_id: str, room: str) -> bool:
        """`join_room`, returning once the room is live cluster-wide: every message
        published to it from then on, on any node or by the emitter, reaches the client
        (unless Redis did not answer within `subscribe_timeout`; see `stats()`)."""
        lifted = self._join_room(client_id, room)
        if lifted is None:
            return False
        if not lifted.done():
            await asyncio.shield(lifted)
        return True

    def _join_room(self, client_id: str, room: str) -> asyncio.Future[bool] | None:
        """None if no such client or already a member; else the barrier (maybe done)."""
        client = self._clients.get(client_id)
        if client is None:
            return None
        hub = self._hub
        waiter = None
        if self._confirmation is not None:
            channel = WebSocketChannels.for_room(room)
            if not hub.has_room(room):
                self._interest(channel, True)  # type: ignore[misc]
            waiter = self._confirmation([channel])
        if not hub.join(client.handle, room):
            return None
        if waiter is None:
            assert self._loop is not None
            lifted: asyncio.Future[bool] = self._loop.create_future()
            lifted.set_result(True)
            return lifted
        lifted = self._barrier(waiter)
        self._hold(client, lifted, lambda: None)
        return lifted

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
        """Counters from the hub (connections, rooms, users, skipped messages, queued bytes),
        the join barrier's (`subscribe_waits`: logins and joins that waited for Redis to
        confirm a subscription; `subscribe_unconfirmed`: those that went ahead without it,
        Redis being unreachable or slower than `subscribe_timeout`) and, prefixed `broker_`,
        the broker's when it keeps any."""
        stats = self._hub.stats()
        stats["subscribe_waits"] = self._waits
        stats["subscribe_unconfirmed"] = self._unconfirmed
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
        ahead = self._ahead
        for kind, name, present in self._hub.drain_interest():
            channel = prefixes[kind] + name
            if not present and ahead and channel in ahead:
                continue  # a pending join still needs it (released by `_release_early`)
            interest(channel, present)

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
