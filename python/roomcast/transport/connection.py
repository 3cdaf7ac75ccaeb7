"""The picows adapter: one `Client` per WebSocket connection.

picows hands us frames, not messages: this module joins continuation frames, checks their
order and reserved bits (picows ignores them), inflates permessage-deflate messages (RSV1 on
the first frame, when the connection negotiated it: `roomcast.transport.deflate`), enforces
the whole-message size (on the wire and once inflated) and fragment count limits and UTF-8,
and turns each complete message into one call on the helper (through its `Links`). A
`WSFrame` is only valid inside `on_ws_frame`; nothing here keeps it. The `Client` object is
also the session (`roomcast.protocol.session`) and the record the public API returns
(`get_clients()` and friends).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from .._core import Hub, InflatedTooBig, Inflater, InvalidDeflate
from ..log import PicowsLog, client_extra, fault
from ..protocol.constants import CloseCode
from ..protocol.counters import Counters
from ..protocol.session import SESSION_SLOTS, SessionMachine

logger = logging.getLogger("roomcast")

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
_PONG = WSMsgType.PONG
_PING = WSMsgType.PING

# picows keeps the upgrade request and response on the transport for the connection's life
# (read-only attributes); their headers (~2 KB per connection) are never read after the
# upgrade, so each is swapped for this one empty, read-only mapping, and the request line's
# three byte strings (~120 B, more with a query string) for one shared empty one.
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
_NO_BYTES = b""

# How long a closing connection may take to answer our close frame before we drop it.
CLOSE_GRACE = 2.0


class Pause:
    """Why a client's socket is not read (bits: several may hold at once)."""

    JOIN_QUEUE = 1  # messages queued behind a join barrier past their limit
    HANDLERS = 2  # max_handler_tasks_per_client message_handler calls in flight
    ROOM_CHANGES = 4  # room_changes_per_second passed: until the churn is paid back
    PRESENCE = 8  # presence requests waiting past their limit


def _valid_close_code(code: int) -> bool:
    """A code a close frame may carry (RFC 6455 §7.4: 1004-1006 and 1015 are reserved, below
    1000 and 1016-2999 unassigned, from 5000 undefined)."""
    return (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code <= 4999


class Links:
    """What every `Client` of one helper reaches: the hub, the counters and the helper's
    connection events, handed over explicitly (one object per helper, so a connection
    costs one reference). `loop` is set once the helper is configured."""

    __slots__ = (
        "counters",
        "hub",
        "inflater",
        "loop",
        "max_fragments",
        "max_payload_length",
        "on_connect",
        "on_disconnect",
        "on_message",
        "on_pause_writing",
    )

    def __init__(
        self,
        hub: Hub,
        counters: Counters,
        max_payload_length: int,
        on_connect: Callable[[Client, WSTransport], None],
        on_message: Callable[[Client, Any, bool], None],
        on_disconnect: Callable[[Client], None],
        on_pause_writing: Callable[[Client], None],
        max_fragments: int = 1024,
    ) -> None:
        self.hub = hub
        self.counters = counters
        self.max_payload_length = max_payload_length
        # Frames one message may span: each costs a callback, so an endless run of empty
        # continuations is bounded by count, not only by the bytes it carries.
        self.max_fragments = max_fragments
        self.on_connect = on_connect
        self.on_message = on_message
        self.on_disconnect = on_disconnect
        self.on_pause_writing = on_pause_writing
        self.loop: asyncio.AbstractEventLoop | None = None
        # One for every connection: inbound messages carry no context (RFC 7692
        # client_no_context_takeover), so nothing is kept per connection.
        self.inflater = Inflater()


class _Fragments:
    """A message arriving in several frames: its payload so far, joined in one buffer."""

    __slots__ = ("count", "deflated", "payload", "text")

    def __init__(self, text: bool, deflated: bool) -> None:
        self.payload = bytearray()
        self.count = 0  # frames so far
        self.text = text
        self.deflated = deflated


class Client(WSListener, SessionMachine):
    """One connection: its session (state, user, keys), its socket, and the record
    applications read. Rooms, activity and backpressure are the hub's, read through it."""

    __slots__ = (
        *SESSION_SLOTS,
        "_disconnect_timer",
        "_fragments",
        "_links",
        "_paused",
        "_picows_log",
        "_pacing",
        "_writable",
        "connected_at",
        "deflate_window",
        "handle",
        "transport",
    )

    def __init__(self, links: Links, client_id: str) -> None:
        self._links = links
        self.start_session(client_id)
        self.connected_at = time.time()
        self.handle = -1
        self.transport: WSTransport | None = None
        self._fragments: _Fragments | None = None  # only while a message is fragmented
        # The server window agreed for permessage-deflate (`roomcast.transport.deflate`); 0: none.
        self.deflate_window = 0
        self._disconnect_timer: asyncio.TimerHandle | None = None
        self._paused = 0  # the `Pause` reasons reading is paused for
        # Paced writes under way (recoveries' replays, one per room): pauses meanwhile are
        # theirs, not overflow; `_writable` is resolved by `resume_writing` or the disconnect.
        self._pacing = 0
        self._writable: asyncio.Future[None] | None = None
        self._picows_log: PicowsLog | None = None

    def log_to(self, log: PicowsLog) -> None:
        """picows' log for this connection names this client until it disconnects."""
        self._picows_log = log
        log.client = self

    # -- the record ----------------------------------------------------------------------

    @property
    def rooms(self) -> set[str]:
        return set(self._links.hub.rooms_of(self.handle))

    @property
    def backpressured(self) -> bool:
        return self._links.hub.is_backpressured(self.handle)

    @property
    def last_activity(self) -> float:
        """Unix time of the last frame received (or of the successful authentication)."""
        return self._links.hub.last_activity(self.handle)

    def __repr__(self) -> str:
        return f"Client(id={self.id!r}, user_id={self.user_id!r}, state={self.state.value!r})"

    # -- reading ---------------------------------------------------------------------------

    def pause_reading(self, reason: int) -> None:
        """Stop reading the socket (TCP then pushes back on the client) for `reason`, one of
        `Pause`'s bits; reading resumes once every reason that paused it is resumed."""
        paused = self._paused
        self._paused = paused | reason
        if not paused:
            self._reading(False)

    def resume_reading(self, reason: int) -> None:
        paused = self._paused
        if paused & reason:
            self._paused = paused & ~reason
            if not self._paused:
                self._reading(True)

    @property
    def reading_paused(self) -> bool:
        return bool(self._paused)

    def paused_for(self, reason: int) -> bool:
        return bool(self._paused & reason)

    def _reading(self, on: bool) -> None:
        raw: Any = getattr(self.transport, "underlying_transport", None)
        try:
            if on and not raw.is_reading():
                raw.resume_reading()
            elif not on and raw.is_reading():
                raw.pause_reading()
        except (AttributeError, RuntimeError):  # closing, or not a socket transport
            logger.debug("reading not %s for %s", "resumed" if on else "paused", self.id)

    # -- picows callbacks ------------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        for message in (transport.request, transport.response):
            if message is not None:
                message.headers = _NO_HEADERS  # type: ignore[assignment]  # read-only on purpose
        request = transport.request
        if request is not None:
            request.method = request.path = request.version = _NO_BYTES
        self._links.on_connect(self, transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            self._on_reserved_bits(frame, msg_type)
            return
        if self._fragments is None and frame.fin and (msg_type is _TEXT or msg_type is _BINARY):
            # The common case: a whole message in one frame.
            if self.closing:
                return
            if frame.payload_size > self._links.max_payload_length:
                # picows already answered 1009 when the route's limit is the listener's, but it
                # still hands over a frame whose bytes had arrived: never read it.
                self._too_big(frame.payload_size)
                return
            self._links.on_message(self, frame.get_payload_as_memoryview(), msg_type is _TEXT)
            return
        if msg_type is _CLOSE:
            self._on_close_frame(transport, frame)
        elif msg_type is _PONG:
            self._links.hub.touch_recv(self.handle)
        elif msg_type is _PING:
            # Answered here, not by picows, so a ping with reserved bits is refused first.
            self._links.hub.touch_recv(self.handle)
            if not transport.is_close_frame_sent:
                transport.send_pong(frame.get_payload_as_bytes())
        elif self.closing:
            return  # nothing a closing client sends reaches the application
        elif msg_type is _TEXT or msg_type is _BINARY or msg_type is _CONTINUATION:
            self._on_fragment(frame, msg_type)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        log = self._picows_log
        if log is not None:  # the cycle through picows' transport ends here
            log.client = self._picows_log = None
        self._wake_writer()
        if self._disconnect_timer is not None:
            self._disconnect_timer.cancel()
            self._disconnect_timer = None
        self._links.on_disconnect(self)

    def pause_writing(self) -> None:
        if self._pacing:
            return  # a paced write passed its own lower mark: it waits, nothing overflowed
        self._links.on_pause_writing(self)

    def resume_writing(self) -> None:
        self._links.hub.set_backpressured(self.handle, False)
        self._wake_writer()

    # -- paced writes ------------------------------------------------------------------------

    def begin_paced(self, high: int) -> bool:
        """Start a paced write: the socket's buffer pauses at `high` bytes (and resumes at a
        quarter of it) and a pause is the pacing's own, not an overflow. False when the
        connection has no socket any more."""
        raw = self._raw()
        if raw is None:
            return False
        if not self._pacing:
            raw.set_write_buffer_limits(high=high, low=high // 4)
        self._pacing += 1
        return True

    def paced_full(self) -> bool:
        """The socket's buffer is past the paced write's mark: wait for `drained`."""
        raw = self._raw()
        return raw is None or raw.get_write_buffer_size() > raw.get_write_buffer_limits()[1]

    async def drained(self, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) for the socket's buffer to drain below the paced
        write's low mark; False on the timeout or when the connection went away."""
        raw = self._raw()
        if raw is None or self.closing:
            return False
        if raw.get_write_buffer_size() <= raw.get_write_buffer_limits()[0]:
            return True
        writable = self._writable
        if writable is None or writable.done():
            writable = self._writable = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(writable), timeout)
        except TimeoutError:
            return False
        return self._raw() is not None and not self.closing

    def end_paced(self, high: int) -> None:
        """Back to the connection's own limits (`high`, resuming at a quarter) once the last
        paced write ended; past them already, the connection is backpressured as any other
        (the pause was the pacing's)."""
        self._pacing -= 1
        if self._pacing:
            return
        raw = self._raw()
        if raw is not None:
            raw.set_write_buffer_limits(high=high, low=high // 4)
            if raw.get_write_buffer_size() > high:
                self._links.on_pause_writing(self)

    def _wake_writer(self) -> None:
        writable = self._writable
        if writable is not None and not writable.done():
            writable.set_result(None)

    def _raw(self) -> Any:
        transport = self.transport
        if transport is None or transport.is_disconnected:
            return None
        raw = transport.underlying_transport
        return None if raw.is_closing() else raw

    # -- framing details -------------------------------------------------------------------

    def _on_reserved_bits(self, frame: WSFrame, msg_type: WSMsgType) -> None:
        """A frame with RSV bits: the first frame of a compressed message when only RSV1 is
        set, on a data frame, on a connection that negotiated permessage-deflate; anything
        else fails the connection (RFC 6455 §5.2, RFC 7692 §6.1)."""
        if frame.rsv2 or frame.rsv3:
            self._fail(WSCloseCode.PROTOCOL_ERROR, "reserved bits RSV2/RSV3 set")
        elif not self.deflate_window:
            self._fail(WSCloseCode.PROTOCOL_ERROR, "RSV1 set without permessage-deflate")
        elif msg_type is _CONTINUATION:
            self._fail(WSCloseCode.PROTOCOL_ERROR, "RSV1 set on a continuation frame")
        elif msg_type is not _TEXT and msg_type is not _BINARY:
            self._fail(WSCloseCode.PROTOCOL_ERROR, "RSV1 set on a control frame")
        elif self.closing:
            return
        elif self._fragments is None and frame.fin:
            if frame.payload_size > self._links.max_payload_length:
                self._too_big(frame.payload_size)
                return
            self._inflated(frame.get_payload_as_bytes(), msg_type is _TEXT)
        else:
            self._on_fragment(frame, msg_type, deflated=True)

    def _inflated(self, compressed: bytes, is_text: bool) -> None:
        """Inflates a compressed message to at most max_payload_length bytes and hands it on;
        past the limit the client gets 1009, bad deflate data 1007 (RFC 7692 §8.2.3.3)."""
        links = self._links
        try:
            payload = links.inflater.inflate(compressed, links.max_payload_length)
        except InflatedTooBig:
            self._too_big(links.max_payload_length + 1, inflated=True)
            return
        except InvalidDeflate:
            self._fail(WSCloseCode.INVALID_TEXT, "invalid compressed data")
            return
        links.on_message(self, payload, is_text)

    def _on_fragment(self, frame: WSFrame, msg_type: WSMsgType, deflated: bool = False) -> None:
        fragments = self._fragments
        if msg_type is _CONTINUATION:
            if fragments is None:
                self._fail(WSCloseCode.PROTOCOL_ERROR, "unexpected continuation frame")
                return
        elif fragments is not None:
            self._fail(WSCloseCode.PROTOCOL_ERROR, "expected a continuation frame")
            return
        else:
            fragments = self._fragments = _Fragments(msg_type is _TEXT, deflated)
        links = self._links
        payload = fragments.payload
        size = len(payload) + frame.payload_size
        if size > links.max_payload_length:
            self._fragments = None
            self._too_big(size)
            return
        # Every frame counts, empty continuations too.
        fragments.count += 1
        if fragments.count > links.max_fragments:
            self._fragments = None
            self._too_many_fragments()
            return
        payload += frame.get_payload_as_memoryview()
        if frame.fin:
            self._fragments = None
            if self.closing:
                return
            if fragments.deflated:
                self._inflated(bytes(payload), fragments.text)
            else:
                self._links.on_message(self, payload, fragments.text)

    def _on_close_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if not transport.is_close_frame_sent:
            if frame.payload_size == 0:  # no code: answered with a normal closure
                transport.send_close(WSCloseCode.OK)
            elif _valid_close_code(frame.get_close_code().value):
                transport.send_close(frame.get_close_code(), frame.get_close_message())
            else:
                transport.send_close(WSCloseCode.PROTOCOL_ERROR)
        transport.disconnect()

    def _fail(self, code: WSCloseCode, reason: str) -> None:
        fault("protocol error", "closing %s: %s", self.id, reason, extra=client_extra(self))
        self.close(code.value, reason)

    def _too_big(self, size: int, *, inflated: bool = False) -> None:
        fault(
            "oversized message",
            "closing %s: %smessage of %d bytes or more over max_payload_length %d",
            self.id,
            "inflated " if inflated else "",
            size,
            self._links.max_payload_length,
            extra=client_extra(self),
        )
        self.close(WSCloseCode.MESSAGE_TOO_BIG.value, CloseCode.REASONS[CloseCode.MESSAGE_TOO_BIG])

    def _too_many_fragments(self) -> None:
        fault(
            "too many fragments",
            "closing %s: message in more than %d frames (max_fragments)",
            self.id,
            self._links.max_fragments,
            extra=client_extra(self),
        )
        self.close(CloseCode.POLICY_VIOLATION, CloseCode.FRAGMENTS_REASON)

    # -- closing ---------------------------------------------------------------------------

    def close(self, code: int, reason: str, *, abort: bool = False) -> None:
        """Send a close frame after everything already queued, then drop the connection when
        the client answers or after CLOSE_GRACE seconds; `abort` drops it at once. Idempotent.
        `closing` is True from then on."""
        transport = self.transport
        if self.closing or transport is None:
            return
        self.closing = True
        links = self._links
        links.counters.close(code)
        links.hub.flush_one(self.handle)
        try:
            transport.send_close(code, reason.encode())  # type: ignore[arg-type]
        except Exception:  # the transport is already gone
            logger.debug("close frame not sent to %s", self.id, exc_info=True)
        if abort:
            self._force_disconnect()
            return
        loop = links.loop
        if loop is not None:
            self._disconnect_timer = loop.call_later(CLOSE_GRACE, self._force_disconnect)

    def _force_disconnect(self) -> None:
        self._disconnect_timer = None
        if self.transport is not None:
            self.transport.disconnect(graceful=False)
