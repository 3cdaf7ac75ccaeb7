"""The opening handshake, held to RFC 6455 §4.2 where picows is lenient.

picows parses the request head and calls our listener factory; it answers 400 itself for a
head it cannot parse (a non-GET method, a version other than HTTP/1.1, a malformed header),
but only once the whole head (up to the blank line) has arrived, and it upgrades versions 7
and 8. Two small additions close the gaps:

- `refusal(headers)`, called by the listener factory for a WebSocket path, answers a handshake
  that RFC 6455 does not allow: 426 with `Sec-WebSocket-Version: 13` for another version, 426
  with `Upgrade: websocket` when the Upgrade or Connection header is missing, 400 for a missing
  version or a missing or malformed key. picows sends the answer and closes.
- `FirstBytesGuard` wraps picows' protocol for the first bytes of a connection only: when they
  cannot start an HTTP request line (a TLS ClientHello, an SSH banner), it answers 400 and
  closes at once instead of waiting for a blank line that never comes. Once the request line
  looks like HTTP it hands the transport to picows' protocol (`set_protocol`), so it costs
  nothing after the first read. A request that `divert` claims (the server API's, which
  picows cannot answer: it takes GET only and closes after each answer) goes to the protocol
  `divert` gives instead, with the bytes read so far.

A client that sends nothing, or its head a byte at a time, is closed by picows' handshake
timeout (the server option `handshake_timeout`).
"""

from __future__ import annotations

import asyncio
import binascii
from base64 import b64decode
from collections.abc import Callable, Mapping
from typing import Any

from ..log import fault

# RFC 7230 tchar (the characters of a method token) and the bytes a request target may hold.
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_TARGET = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))
_METHOD_MAX = 32
# The longest request line we wait for; picows caps the whole head at 16 KiB.
REQUEST_LINE_MAX = 8192

BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 19\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"not an HTTP request"
)


def request_line_verdict(head: bytes) -> bool | None:
    """Whether the first bytes of a connection can start an HTTP/1.x request line: True (it
    does), False (it cannot), None (more bytes are needed to tell)."""
    end = head.find(b"\n")
    if end > 0 and head.startswith(b"GET /") and head[end - 10 : end] == b" HTTP/1.1\r":
        return True  # the usual upgrade request, decided in one look
    line = head if end < 0 else head[:end]
    method, space, rest = line.partition(b" ")
    if method.translate(None, _TCHAR) or len(method) > _METHOD_MAX:
        return False
    if not space:
        return None if end < 0 else False
    if not method:
        return False
    target, space, version = rest.partition(b" ")
    if target.translate(None, _TARGET):
        return False
    if not space:
        if end >= 0 or len(line) > REQUEST_LINE_MAX:
            return False
        return None
    if not target:
        return False
    if version.startswith(b"HTTP/"):
        return True
    if end < 0 and b"HTTP/".startswith(version):
        return None
    return False


Divert = Callable[[bytes], "asyncio.Protocol | None"]
"""Given a connection's first bytes (a whole request line), the protocol to take it, or None
to leave it to picows."""


class FirstBytesGuard(asyncio.BufferedProtocol):
    """Stands in front of picows' protocol until the request line looks like HTTP (see the
    module docstring). Reads go into the inner protocol's buffer; a bad start is answered
    here and never reaches it."""

    __slots__ = ("_buffer", "_divert", "_head", "_inner", "_transport")

    def __init__(self, inner: Any, divert: Divert | None = None) -> None:
        self._inner = inner
        self._divert = divert
        self._transport: Any = None
        self._buffer: memoryview | None = None
        self._head = b""

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self._inner.connection_made(transport)

    def get_buffer(self, sizehint: int) -> Any:
        self._buffer = self._inner.get_buffer(sizehint)
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        assert self._buffer is not None
        # Read before the inner protocol sees the bytes (it may grow and move its buffer).
        self._head += bytes(self._buffer[:nbytes])
        self._buffer = None
        verdict = request_line_verdict(self._head)
        if verdict is False:
            peer = self._transport.get_extra_info("peername")
            fault("not HTTP", "400 to %s, whose first bytes are %r", peer, self._head[:16])
            self._transport.write(BAD_REQUEST)
            self._transport.close()
            return
        if verdict:
            head, self._head = self._head, b""
            other = None if self._divert is None else self._divert(head)
            if other is not None:
                self._inner.connection_lost(None)  # picows' side of it ends here, unread
                self._transport.set_protocol(other)
                other.connection_made(self._transport)
                other.data_received(head)
                return
            self._transport.set_protocol(self._inner)
        self._inner.buffer_updated(nbytes)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def _is_websocket_key(key: str | None) -> bool:
    """RFC 6455 §4.1: the base64 encoding of 16 bytes."""
    if not key:
        return False
    try:
        return len(b64decode(key.encode("ascii"), validate=True)) == 16
    except (UnicodeEncodeError, binascii.Error):
        return False


def _tokens(value: str | None) -> set[str]:
    return {token.strip().lower() for token in (value or "").split(",")}


def is_handshake(headers: Mapping[str, str]) -> bool:
    """Whether a request on a WebSocket path asks for a WebSocket (else it is plain HTTP)."""
    return (
        headers.get("Upgrade") == "websocket"
        or "websocket" in _tokens(headers.get("Upgrade"))
        or "Sec-WebSocket-Key" in headers
        or "Sec-WebSocket-Version" in headers
    )


def refusal(headers: Mapping[str, str]) -> tuple[int, str, dict[str, str]] | None:
    """(status, body, headers) for a handshake RFC 6455 does not allow; None when it may go
    on. Call only when `is_handshake(headers)`. The key is checked here too, though picows
    would answer a bad one with 400 as well."""
    if (
        headers.get("Upgrade") == "websocket"
        and headers.get("Connection") == "Upgrade"
        and headers.get("Sec-WebSocket-Version") == "13"
    ):
        # What clients send (browsers, websockets): only the key is left to check.
        return None if _is_websocket_key(headers.get("Sec-WebSocket-Key")) else _bad_key(headers)
    if "websocket" not in _tokens(headers.get("Upgrade")):
        return 426, "missing Upgrade: websocket", {"Upgrade": "websocket"}
    if "upgrade" not in _tokens(headers.get("Connection")):
        return 426, "missing Connection: Upgrade", {"Upgrade": "websocket"}
    version = headers.get("Sec-WebSocket-Version")
    if version is None:
        return 400, "missing Sec-WebSocket-Version", {}
    if version.strip() != "13":
        return 426, f"unsupported Sec-WebSocket-Version: {version}", {"Sec-WebSocket-Version": "13"}
    return None if _is_websocket_key(headers.get("Sec-WebSocket-Key")) else _bad_key(headers)


def _bad_key(headers: Mapping[str, str]) -> tuple[int, str, dict[str, str]]:
    key = headers.get("Sec-WebSocket-Key")
    if key is None:
        return 400, "missing Sec-WebSocket-Key", {}
    return 400, f"invalid Sec-WebSocket-Key: {key!r}", {}
