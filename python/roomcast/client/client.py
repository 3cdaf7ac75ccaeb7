"""`Client`: one application's connection to roomcast, kept up across failures (SPEC §14).

The client owns three tasks while it runs: the connection loop (connect, authenticate, read,
reconnect with back-off), one heartbeat task per connection, and the dispatcher that calls the
application's callbacks in message order. The reader never runs a callback itself, so a slow
callback delays only later callbacks, never heartbeats or the reading of the socket.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import orjson

from . import messages as wire
from .backoff import Backoff, Urls
from .ecdh import Handshake, Session
from .messages import (
    AuthenticationRefused,
    ClientClosed,
    Connected,
    ConnectionLost,
    Disconnected,
    Joined,
    Message,
    Position,
    RequestError,
    State,
)
from .streams import Streams

if TYPE_CHECKING:
    import ssl as ssl_module

    from websockets.asyncio.client import ClientConnection

logger = logging.getLogger("roomcast.client")

Callback = Callable[[Any], Any]
TokenSource = Callable[[], "str | Awaitable[str | None] | None"]

# Events an application may not send with `send()`: the protocol's own.
_RESERVED = frozenset(
    {"authenticate", "connected", "disconnect", "join", "leave", "error", "heartbeat", "encrypted"}
)
DEFAULT_HEARTBEAT_TIMEOUT = 90.0  # the server's default `heartbeat_timeout`
_CLOSED = object()


class Member:
    """One entry of a presence list."""

    __slots__ = ("client_id", "user_id")

    def __init__(self, client_id: str, user_id: str | None) -> None:
        self.client_id = client_id
        self.user_id = user_id

    def __repr__(self) -> str:
        return f"Member(client_id={self.client_id!r}, user_id={self.user_id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Member) and (other.client_id, other.user_id) == (
            self.client_id,
            self.user_id,
        )

    def __hash__(self) -> int:
        return hash((self.client_id, self.user_id))


class _Link:
    """One connection: its socket, session key and the requests waiting for an answer."""

    def __init__(self, ws: ClientConnection, url: str) -> None:
        self.ws = ws
        self.url = url
        self.session: Session | None = None
        self.pings: deque[asyncio.Future[None]] = deque()
        self.presence: tuple[str, asyncio.Future[list[Member]]] | None = None
        self.presence_lock = asyncio.Lock()
        self.sent: set[str] = set()  # rooms included in a join on this connection
        self.joined: dict[str, Joined] = {}
        self.waiting: dict[str, list[asyncio.Future[Joined]]] = {}
        self.last_send = time.monotonic()
        self.last_error: str | None = None
        self.alive = True

    def fail(self) -> None:
        """The connection ended: every request waiting on it fails with ConnectionLost."""
        self.alive = False
        futures: list[asyncio.Future[Any]] = list(self.pings)
        if self.presence is not None:
            futures.append(self.presence[1])
        for waiters in self.waiting.values():
            futures.extend(waiters)
        for future in futures:
            if not future.done():
                future.set_exception(ConnectionLost("the connection ended"))
                future.exception()  # retrieved: nobody may be waiting any more
        self.pings.clear()
        self.waiting.clear()
        self.presence = None


class Client:
    """A roomcast client: authenticates, heartbeats, reconnects, rejoins and recovers.

    `url` is one URL or several, tried in turn. `token` is sent in `authenticate`;
    `get_token` (sync or async, returning the token) is called for every connection instead,
    so an expired token is replaced on reconnect; after a refusal (close 4003 or 4004) the
    client connects again only if `get_token` returns a different token. `rooms` are joined
    on every connection. With `recover`, each history room's position is sent back on every
    rejoin, so with a long enough history every message reaches the application exactly once
    and in order; `joined` and `gap` callbacks tell, per room, whether it was recovered.
    `encryption=True` speaks the built-in ECDH scheme. `heartbeat` is the server's heartbeat
    timeout in seconds (default 90, the server's default): the client sends a heartbeat after
    a third of it without sending anything (0 turns heartbeats off). `backoff` is the
    (minimum, maximum) reconnect delay in seconds, with full jitter. `history_rooms`: globs of
    the server's history rooms, so that `join()` also waits for their `joined` answers.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str | None = None,
        get_token: TokenSource | None = None,
        rooms: Iterable[str] = (),
        recover: bool = True,
        encryption: bool = False,
        heartbeat: float | None = None,
        reconnect: bool = True,
        backoff: tuple[float, float] = (0.5, 20.0),
        history_rooms: str | Iterable[str] | None = None,
        positions: dict[str, Position] | None = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 10.0,
        max_queue: int = 10_000,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        Urls(urls)  # checks there is one
        Backoff(*backoff)  # checks the bounds
        if heartbeat is not None and heartbeat < 0:
            raise ValueError(f"heartbeat must be >= 0 seconds: {heartbeat!r}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1: {max_queue!r}")
        self.urls = urls
        self.token = token
        self.get_token = get_token
        self.recover = recover
        self.encryption = encryption
        self.heartbeat = DEFAULT_HEARTBEAT_TIMEOUT if heartbeat is None else heartbeat
        self.reconnect = reconnect
        self.backoff = backoff
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self._history = (
            [history_rooms] if isinstance(history_rooms, str) else list(history_rooms or ())
        )
        self._rooms: dict[str, None] = {}
        for room in rooms:
            self._rooms[_room_name(room)] = None
        self._streams = Streams(recover)
        for room, position in (positions or {}).items():
            self._streams.set_position(room, position)
        self._handlers: dict[str, list[Callback]] = {}
        self._max_queue = max_queue
        self._ssl = ssl
        self._state = State.DISCONNECTED
        self.id: str | None = None
        self.user_id: str | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.connections = 0  # connections established (figures, tests)
        self._link: _Link | None = None
        self._link_changed: asyncio.Event | None = None
        self._inbox: asyncio.Queue[Any] | None = None
        self._calls: asyncio.Queue[Any] | None = None
        self._iterating = False
        self._dropped = 0
        self._first: asyncio.Future[None] | None = None
        self._error: ClientClosed | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._dispatch_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    # -- life-cycle ------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """`connecting`, `connected`, `disconnected` (waiting to reconnect, or not started)
        or `closed`."""
        return self._state

    @property
    def positions(self) -> dict[str, Position]:
        """The last position of each history room (keep it to resume in another process:
        `Client(..., positions=...)`)."""
        return self._streams.positions()

    @property
    def replayed(self) -> int:
        """Messages handed over from recoveries so far."""
        return self._streams.replayed

    @property
    def rooms(self) -> list[str]:
        """The rooms the client joins on every connection."""
        return list(self._rooms)

    async def connect(self, timeout: float | None = None) -> None:
        """Start, and return once the first connection is authenticated (its rooms are being
        joined). Raises AuthenticationRefused if the server refuses the token and no new one
        comes, ClientClosed if the client gives up (`reconnect=False`), TimeoutError after
        `timeout` seconds (the client keeps trying until `close()`)."""
        if self._state is State.CLOSED:
            raise ClientClosed("the client is closed")
        if self._run_task is None:
            loop = asyncio.get_running_loop()
            self._first = loop.create_future()
            self._link_changed = asyncio.Event()
            self._inbox = asyncio.Queue(self._max_queue)
            self._calls = asyncio.Queue(self._max_queue)
            self._dispatch_task = loop.create_task(self._dispatch())
            self._run_task = loop.create_task(self._run())
        assert self._first is not None
        await asyncio.wait_for(asyncio.shield(self._first), timeout)

    async def close(self) -> None:
        """Close the connection (1000) and stop; `async for` ends. Idempotent."""
        if self._state is State.CLOSED and self._run_task is None:
            return
        self._closing = True
        link = self._link
        if link is not None:
            try:
                await asyncio.wait_for(link.ws.close(1000, "client closed"), 5.0)
            except Exception:
                pass
        task, self._run_task = self._run_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._finish(ClientClosed("the client is closed"))
        dispatcher, self._dispatch_task = self._dispatch_task, None
        if dispatcher is not None:
            assert self._calls is not None
            _put_nowait_dropping(self._calls, _CLOSED)
            try:
                await asyncio.wait_for(asyncio.shield(dispatcher), 1.0)
            except TimeoutError:
                dispatcher.cancel()
                await asyncio.gather(dispatcher, return_exceptions=True)
        for extra in list(self._tasks):
            extra.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the application's side ------------------------------------------------------------

    def on(self, event: str, callback: Callback) -> Callable[[], None]:
        """Call `callback` (a function or a coroutine function) for each message of `event`,
        with the `Message`; or for a life-cycle event: `connected` (`Connected`),
        `disconnected` (`Disconnected`), `joined` (`Joined`, every history room answer) and
        `gap` (`Joined`, when messages may be missing: reload the room's state). Callbacks
        run one at a time in arrival order, never on the reader. `"*"` gets every message.
        Returns a function that removes the callback."""
        self._handlers.setdefault(event, []).append(callback)

        def remove() -> None:
            handlers = self._handlers.get(event, [])
            if callback in handlers:
                handlers.remove(callback)

        return remove

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        """The next message (every event; life-cycle events go to callbacks only). Messages
        are kept for iteration from `connect()` on, up to `max_queue`: while iterating, a full
        queue pauses reading (the server's backpressure applies); before the first
        iteration, the oldest are dropped."""
        if self._inbox is None:
            raise StopAsyncIteration
        self._iterating = True
        item = await self._inbox.get()
        if item is _CLOSED:
            _put_nowait_dropping(self._inbox, _CLOSED)  # for any other iterator
            raise StopAsyncIteration
        assert isinstance(item, Message)
        return item

    async def join(self, *rooms: str, timeout: float | None = None) -> dict[str, Joined]:
        """Join `rooms` now and on every later connection. Returns once the server handled
        the join, with the `joined` answer of each history room among them (those matching
        `history_rooms`, or seen as history rooms before; a refused room gets no answer, so
        waiting for it ends in TimeoutError). Rooms without history get no answer of their own
        (SPEC §10): they are not in the result."""
        names = [_room_name(room) for room in rooms]
        for room in names:
            self._rooms[room] = None
        deadline = _deadline(timeout if timeout is not None else self.request_timeout)
        while True:
            link = await self._wait_link(deadline)
            try:
                return await self._join_on(link, names, deadline)
            except ConnectionLost:
                continue  # the next connection rejoins them: wait for its answers

    async def leave(self, *rooms: str, timeout: float | None = None) -> None:
        """Leave `rooms` (and forget their positions); returns once the server handled it, or
        at once when not connected."""
        names = [_room_name(room) for room in rooms]
        for room in names:
            self._rooms.pop(room, None)
            self._streams.forget(room)
        link = self._link
        if link is None or not link.alive:
            return
        for room in names:
            link.sent.discard(room)
            link.joined.pop(room, None)
        try:
            await self._send(link, {"event": wire.LEAVE, "data": {"rooms": names}})
            await self._ping(link, _deadline(timeout or self.request_timeout))
        except ConnectionLost:
            pass

    async def send(self, event: str, data: Any = None, *, timeout: float | None = None) -> None:
        """Send a custom event (without a `data` key when `data` is None). At most once: a
        message in flight when the connection breaks is lost. Waits for a connection up to
        `timeout` (default `request_timeout`)."""
        if not isinstance(event, str) or not event:
            raise ValueError(f"event must be a non-empty string: {event!r}")
        if event in _RESERVED:
            raise ValueError(f"reserved event: {event}")
        link = await self._wait_link(_deadline(timeout or self.request_timeout))
        await self._send(link, {"event": event} if data is None else {"event": event, "data": data})

    async def presence(self, room: str, *, timeout: float | None = None) -> list[Member]:
        """The members of a presence room, on every node. RequestError("Presence not
        allowed") when the server refuses; TimeoutError when it does not answer (a server
        without presence rooms hands the request to its application)."""
        room = _room_name(room)
        deadline = _deadline(timeout or self.request_timeout)
        while True:
            link = await self._wait_link(deadline)
            async with link.presence_lock:  # the server answers one request at a time
                if not link.alive:
                    continue
                future: asyncio.Future[list[Member]] = asyncio.get_running_loop().create_future()
                link.presence = (room, future)
                try:
                    await self._send(link, {"event": wire.PRESENCE, "data": {"room": room}})
                    members: list[Member] = await _until(future, deadline)
                    return members
                except ConnectionLost:
                    continue
                finally:
                    if link.presence is not None and link.presence[1] is future:
                        link.presence = None

    # -- internals: requests ---------------------------------------------------------------

    async def _wait_link(self, deadline: float) -> _Link:
        while True:
            if self._state is State.CLOSED or self._closing:
                raise self._error or ClientClosed("the client is closed")
            link = self._link
            if link is not None and link.alive:
                return link
            if self._link_changed is None:
                raise ClientClosed("the client is not started: call connect() first")
            self._link_changed.clear()
            await _until(asyncio.ensure_future(self._link_changed.wait()), deadline)

    async def _join_on(self, link: _Link, rooms: list[str], deadline: float) -> dict[str, Joined]:
        fresh = [room for room in rooms if room not in link.sent]
        expected = [room for room in rooms if self._is_history(room)]
        loop = asyncio.get_running_loop()
        waiters: dict[str, asyncio.Future[Joined]] = {}
        for room in expected:
            if room in link.joined:
                continue
            future: asyncio.Future[Joined] = loop.create_future()
            link.waiting.setdefault(room, []).append(future)
            waiters[room] = future
        if fresh:
            link.sent.update(fresh)
            await self._send(link, self._join_message(fresh))
        await self._ping(link, deadline)
        result = {room: link.joined[room] for room in expected if room in link.joined}
        for room, future in waiters.items():
            try:
                result[room] = await _until(future, deadline)
            except TimeoutError:
                raise TimeoutError(
                    f"no joined answer for room {room} (refused, or not a history room)"
                ) from None
        return result

    def _join_message(self, rooms: list[str]) -> dict[str, Any]:
        data: dict[str, Any] = {"rooms": rooms}
        recover = self._streams.recover_for(rooms)
        if recover:
            data["recover"] = recover
        return {"event": wire.JOIN, "data": data}

    async def _ping(self, link: _Link, deadline: float) -> None:
        """Wait until the server handled everything sent before: `authenticate` on an
        authenticated connection is answered `Already authenticated`, in order."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        link.pings.append(future)
        await self._send(link, {"event": wire.AUTHENTICATE})
        await _until(future, deadline)

    def _is_history(self, room: str) -> bool:
        return self._streams.known(room) or any(fnmatchcase(room, p) for p in self._history)

    async def _send(self, link: _Link, message: dict[str, Any]) -> None:
        if not link.alive:
            raise ConnectionLost("the connection ended")
        frame = link.session.seal(message) if link.session is not None else orjson.dumps(message)
        link.last_send = time.monotonic()
        try:
            await link.ws.send(frame.decode())
        except Exception as exc:  # ConnectionClosed, or a transport error
            raise ConnectionLost(f"the connection ended: {exc}") from None

    # -- internals: the connection loop ----------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(*self.backoff)
        urls = Urls(self.urls)
        next_token: str | None = None
        try:
            while not self._closing:
                url = urls.current
                self._state = State.CONNECTING
                try:
                    token = next_token if next_token is not None else await self._token()
                    next_token = None
                    ws = await self._open(url)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    logger.debug("connecting to %s failed: %s", url, exc)
                    if not await self._retry(Disconnected(1006, str(exc), url, self.reconnect)):
                        return
                    urls.advance()
                    await asyncio.sleep(backoff.delay())
                    continue
                code, reason, established, error = await self._session(ws, url, token)
                if established:
                    backoff.reset()
                if code in wire.REFUSED and not self._closing:
                    fresh = await self._fresh_token(token)
                    if fresh is None:
                        await self._emit_disconnected(Disconnected(code, reason, url, False, error))
                        self._finish(AuthenticationRefused(code, reason, error))
                        return
                    next_token = fresh
                if self._closing:
                    await self._emit_disconnected(Disconnected(code, reason, url, False, error))
                    return
                if not await self._retry(Disconnected(code, reason, url, self.reconnect, error)):
                    return
                urls.advance()
                await asyncio.sleep(backoff.delay())
        finally:
            self._state = State.CLOSED if self._closing or self._error else self._state

    async def _retry(self, disconnected: Disconnected) -> bool:
        """After a connection ended or failed: False (and closed) when the client stops."""
        self._state = State.DISCONNECTED
        await self._emit_disconnected(disconnected)
        if self.reconnect and not self._closing:
            return True
        self.close_code, self.close_reason = disconnected.code, disconnected.reason
        self._finish(
            ClientClosed(f"connection ended: {disconnected.code} {disconnected.reason}".strip())
        )
        return False

    async def _open(self, url: str) -> ClientConnection:
        try:
            from websockets.asyncio.client import connect
        except ImportError:  # pragma: no cover - the extra is missing
            raise ImportError(
                "roomcast.client needs the websockets package: pip install 'roomcast[client]'"
            ) from None
        return await connect(
            url,
            open_timeout=self.connect_timeout,
            max_size=None,
            max_queue=64,
            ssl=self._ssl,
        )

    async def _token(self) -> str | None:
        if self.get_token is None:
            return self.token
        value = self.get_token()
        if inspect.isawaitable(value):
            value = await value
        self.token = value
        return value

    async def _fresh_token(self, used: str | None) -> str | None:
        """After a refusal: a token different from `used`, or None."""
        if self.get_token is None:
            return None
        try:
            token = await self._token()
        except Exception as exc:
            logger.warning("get_token raised after a refusal: %s", exc)
            return None
        return token if token is not None and token != used else None

    async def _session(
        self, ws: ClientConnection, url: str, token: str | None
    ) -> tuple[int, str, bool, str | None]:
        """One connection from authenticate to close: (close code, reason, whether it was
        authenticated, the last error event)."""
        from websockets.exceptions import ConnectionClosed

        link = _Link(ws, url)
        handshake = Handshake() if self.encryption else None
        auth: dict[str, Any] = {"type": "Bearer", "token": token}
        if handshake is not None:
            auth["publicKey"] = handshake.public_key
        established = False
        heartbeat: asyncio.Task[None] | None = None
        try:
            await ws.send(orjson.dumps({"event": wire.AUTHENTICATE, "data": auth}).decode())
            connected = await self._await_connected(link)
            if connected is None:
                return _close_info(ws, link)
            data = connected.get("data")
            data = data if isinstance(data, dict) else {}
            if handshake is not None:
                try:
                    link.session = handshake.session(data.get("serverPublicKey"), data.get("salt"))
                except ValueError as exc:
                    await ws.close(1000, "no encrypted session")
                    self._finish(ClientClosed(f"encryption refused by {url}: {exc}"))
                    self._closing = True
                    return 1000, str(exc), False, None
            established = True
            self.connections += 1
            self.id = data.get("id") if isinstance(data.get("id"), str) else None
            user_id = data.get("userId")
            self.user_id = user_id if isinstance(user_id, str) else None
            self._streams.new_connection()
            self._link = link
            self._state = State.CONNECTED
            info = Connected(
                self.id or "",
                self.user_id,
                data.get("time") if isinstance(data.get("time"), str) else None,
                url,
                link.session is not None,
                self.connections > 1,
            )
            await self._emit(wire.CONNECTED, info)
            if self._rooms:
                rooms = list(self._rooms)
                link.sent.update(rooms)
                await self._send(link, self._join_message(rooms))
            if self.heartbeat > 0:
                heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(link))
            assert self._link_changed is not None
            self._link_changed.set()
            if self._first is not None and not self._first.done():
                self._first.set_result(None)
            async for raw in ws:
                await self._on_frame(link, raw)
        except (ConnectionClosed, ConnectionLost, OSError):
            pass
        finally:
            link.fail()
            if self._link is link:
                self._link = None
                if self._link_changed is not None:
                    self._link_changed.set()
            if heartbeat is not None:
                heartbeat.cancel()
        code, reason, _, error = _close_info(ws, link)
        return code, reason, established, error

    async def _await_connected(self, link: _Link) -> dict[str, Any] | None:
        """The `connected` message, or None if the connection closed or timed out first."""
        from websockets.exceptions import ConnectionClosed

        try:
            async with asyncio.timeout(self.connect_timeout):
                while True:
                    message = _decode(await link.ws.recv())
                    if message is None:
                        continue
                    event = message.get("event")
                    if event == wire.CONNECTED:
                        return message
                    if event == wire.ERROR:
                        link.last_error = _error_text(message)
        except ConnectionClosed:
            return None
        except TimeoutError:
            await link.ws.close(1000, "no connected answer")
            return None

    async def _heartbeat(self, link: _Link) -> None:
        interval = self.heartbeat / 3
        while link.alive:
            wait = link.last_send + interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            try:
                await self._send(link, {"event": wire.HEARTBEAT})
            except ConnectionLost:
                return

    # -- internals: what the server sends --------------------------------------------------

    async def _on_frame(self, link: _Link, raw: str | bytes) -> None:
        message = _decode(raw)
        if message is None:
            return
        if message.get("event") == wire.ENCRYPTED and link.session is not None:
            try:
                inner = link.session.open(message.get("data"))
            except ValueError as exc:
                logger.warning("%s: %s", self.id, exc)
                return
            if not isinstance(inner, dict):
                return
            message = inner
        event = message.get("event")
        if not isinstance(event, str):
            return
        data = message.get("data")
        if event == wire.ERROR:
            text = _error_text(message)
            if text == wire.ALREADY_AUTHENTICATED and link.pings:
                future = link.pings.popleft()
                if not future.done():
                    future.set_result(None)
                return
            link.last_error = text
            if text == wire.PRESENCE_NOT_ALLOWED and link.presence is not None:
                _fail(link.presence[1], RequestError(text))
                return
        elif event == wire.JOINED and isinstance(data, dict):
            await self._on_joined(link, data)
            return
        elif event == wire.PRESENCE and link.presence is not None and isinstance(data, dict):
            asked, answer = link.presence
            if data.get("room") == asked and isinstance(data.get("clients"), list):
                members = [
                    Member(c.get("clientId", ""), c.get("userId"))
                    for c in data["clients"]
                    if isinstance(c, dict)
                ]
                if not answer.done():
                    answer.set_result(members)
                return
        room, offset = message.get("room"), message.get("offset")
        item = Message(
            event,
            data,
            room if isinstance(room, str) else None,
            offset if type(offset) is int else None,
            "data" in message,
        )
        if item.room is None or item.offset is None:
            await self._deliver(item)
            return
        ready, resync = self._streams.on_message(item, item.room in self._rooms)
        for one in ready:
            await self._deliver(one)
        if resync is not None:
            await self._resync(link, resync)

    async def _on_joined(self, link: _Link, data: dict[str, Any]) -> None:
        room, epoch, offset = data.get("room"), data.get("epoch"), data.get("offset")
        recovered = data.get("recovered") is True
        if not isinstance(room, str) or not isinstance(epoch, str) or type(offset) is not int:
            return
        joined, ready, resync = self._streams.on_joined(room, epoch, offset, recovered)
        if resync:
            if room in self._rooms:
                await self._resync(link, room)
                return
            joined, ready, _ = self._streams.on_joined(room, epoch, offset, recovered, True)
        if joined is None:
            return
        link.joined[room] = joined
        for future in link.waiting.pop(room, ()):
            if not future.done():
                future.set_result(joined)
        await self._emit(wire.JOINED, joined)
        if joined.gap:
            await self._emit(wire.GAP, joined)
        for one in ready:
            await self._deliver(one)

    async def _resync(self, link: _Link, room: str) -> None:
        """Leave and re-join `room` with its position: the server replays what is missing."""
        logger.debug("%s: re-synchronising room %s", self.id, room)
        try:
            await self._send(link, {"event": wire.LEAVE, "data": {"rooms": [room]}})
            await self._send(link, self._join_message([room]))
        except ConnectionLost:
            pass

    # -- internals: handing over -----------------------------------------------------------

    async def _deliver(self, message: Message) -> None:
        handlers = self._handlers.get(message.event, []) + self._handlers.get("*", [])
        if handlers:
            assert self._calls is not None
            await self._calls.put((handlers, message))
        inbox = self._inbox
        if inbox is None:
            return
        if self._iterating:
            await inbox.put(message)
            return
        if inbox.full():
            inbox.get_nowait()
            self._dropped += 1
            if self._dropped == 1:
                logger.warning(
                    "%s: %d messages kept for iteration and none read yet: dropping the "
                    "oldest (iterate, or use on() callbacks only)",
                    self.id,
                    self._max_queue,
                )
        inbox.put_nowait(message)

    async def _emit(self, event: str, payload: Any) -> None:
        handlers = self._handlers.get(event)
        if handlers and self._calls is not None:
            await self._calls.put((list(handlers), payload))

    async def _emit_disconnected(self, disconnected: Disconnected) -> None:
        await self._emit(wire.DISCONNECTED, disconnected)

    async def _dispatch(self) -> None:
        assert self._calls is not None
        while True:
            item = await self._calls.get()
            if item is _CLOSED:
                return
            handlers, payload = item
            for handler in handlers:
                try:
                    result = handler(payload)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    logger.exception("%s: callback %r raised", self.id, handler)

    def _finish(self, error: ClientClosed) -> None:
        """The client stops for good: waiters and iterators are told."""
        if self._error is None:
            self._error = error
        self._state = State.CLOSED
        self._closing = True
        if self._first is not None and not self._first.done():
            self._first.set_exception(error)
            self._first.exception()
        if self._link_changed is not None:
            self._link_changed.set()
        if self._inbox is not None:
            _put_nowait_dropping(self._inbox, _CLOSED)


def _room_name(room: Any) -> str:
    if not isinstance(room, str) or not room:
        raise ValueError(f"room must be a non-empty string: {room!r}")
    return room


def _decode(raw: str | bytes) -> dict[str, Any] | None:
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return message if isinstance(message, dict) else None


def _error_text(message: dict[str, Any]) -> str | None:
    data = message.get("data")
    text = data.get("message") if isinstance(data, dict) else None
    return text if isinstance(text, str) else None


def _close_info(ws: ClientConnection, link: _Link) -> tuple[int, str, bool, str | None]:
    code = ws.close_code if ws.close_code is not None else 1006
    return code, ws.close_reason or "", False, link.last_error


def _deadline(timeout: float) -> float:
    return time.monotonic() + timeout


async def _until(future: asyncio.Future[Any], deadline: float) -> Any:
    left = deadline - time.monotonic()
    if left <= 0 and not future.done():
        future.cancel()
        raise TimeoutError("no answer in time")
    return await asyncio.wait_for(future, left if left > 0 else None)


def _fail(future: asyncio.Future[Any], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)


def _put_nowait_dropping(queue: asyncio.Queue[Any], item: Any) -> None:
    """Put without waiting; make room by dropping the oldest if full."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)
