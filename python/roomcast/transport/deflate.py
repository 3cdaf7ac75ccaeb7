"""permessage-deflate negotiation (RFC 7692 §5, §7.1), as a pure function of the request's
`Sec-WebSocket-Extensions` header lines.

The answer always carries `server_no_context_takeover` (every message is compressed from a
fresh window, so one compressed frame serves every recipient) and
`client_no_context_takeover` (so one inflater serves every connection): the extension costs
no memory per connection. A `server_max_window_bits=N` offer is accepted with the same N;
the hub then compresses only the messages of at most 2^N bytes for that client (a message
compressed from a fresh window refers back at most its own length) and sends the longer
ones uncompressed. `client_max_window_bits` needs no answer: the inflater's window is the
largest.

An offer the RFC says to decline (an unknown parameter, a parameter twice, a bad value) is
declined and the next one considered; a header that cannot be parsed declines only the
elements it garbles. Declining never fails the upgrade: the connection goes on without the
extension.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

EXTENSION = "permessage-deflate"
HEADER = "Sec-WebSocket-Extensions"

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_WINDOW_BITS = {str(bits): bits for bits in range(8, 16)}  # no leading zeros (§7.1.2.1)
MAX_WINDOW_BITS = 15

Param = tuple[str, str | None]


class Agreement(NamedTuple):
    """An accepted offer: the server window to honour and the response header value."""

    server_max_window_bits: int
    response: str


def _is_token(text: str) -> bool:
    return bool(text) and all(char in _TCHAR for char in text)


def _split(value: str, separator: str) -> list[str] | None:
    """`value` split on `separator` outside quoted strings; None when a quote is left open."""
    parts: list[str] = []
    start = 0
    quoted = escaped = False
    for index, char in enumerate(value):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(value[start:index])
            start = index + 1
    if quoted:
        return None
    parts.append(value[start:])
    return parts


def _unquote(value: str) -> str | None:
    """A parameter value (token or quoted-string) as text; None when malformed. RFC 6455
    §9.1: a quoted value must be a token once unescaped."""
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"'):
            return None
        inner = value[1:-1]
        out: list[str] = []
        escaped = False
        for char in inner:
            if escaped:
                out.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                return None
            else:
                out.append(char)
        if escaped:
            return None
        value = "".join(out)
    return value if _is_token(value) else None


def _params(pieces: list[str]) -> list[Param] | None:
    """An element's parameters (after its name); None when one is malformed."""
    params: list[Param] = []
    for piece in pieces:
        key, equals, raw = piece.partition("=")
        key = key.strip(" \t")
        if not _is_token(key):
            return None
        if not equals:
            params.append((key.lower(), None))
            continue
        value = _unquote(raw.strip(" \t"))
        if value is None:
            return None
        params.append((key.lower(), value))
    return params


def parse(lines: Iterable[str]) -> list[tuple[str, list[Param]] | None]:
    """Every extension element of the header lines, in order, as (name, params); None for
    an element that is not well-formed. Names are lowercased (tokens are case-insensitive)."""
    elements: list[tuple[str, list[Param]] | None] = []
    for line in lines:
        items = _split(line, ",")
        if items is None:
            elements.append(None)
            continue
        for item in items:
            if not item.strip(" \t"):
                continue  # empty list elements are allowed (RFC 7230 §7)
            pieces = _split(item, ";")
            assert pieces is not None  # quotes balance within a balanced item
            name = pieces[0].strip(" \t")
            if not _is_token(name):
                elements.append(None)
                continue
            params = _params(pieces[1:])
            elements.append(None if params is None else (name.lower(), params))
    return elements


def _accept(params: list[Param]) -> Agreement | None:
    """The agreement for one permessage-deflate offer, or None to decline it (§7.1)."""
    names = [name for name, _ in params]
    if len(set(names)) != len(names):
        return None  # the same parameter twice
    server_bits: int | None = None
    for name, value in params:
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None
        elif name == "server_max_window_bits":
            if value is None or value not in _WINDOW_BITS:
                return None
            server_bits = _WINDOW_BITS[value]
        elif name == "client_max_window_bits":
            if value is not None and value not in _WINDOW_BITS:
                return None
        else:
            return None  # not defined for an offer
    response = f"{EXTENSION}; server_no_context_takeover; client_no_context_takeover"
    if server_bits is not None:
        response += f"; server_max_window_bits={server_bits}"
    return Agreement(server_bits or MAX_WINDOW_BITS, response)


def negotiate(lines: Iterable[str]) -> Agreement | None:
    """The first permessage-deflate offer of the request that can be accepted, or None
    (no offer, or every one declined): the connection goes on without the extension."""
    for element in parse(lines):
        if element is None or element[0] != EXTENSION:
            continue
        agreement = _accept(element[1])
        if agreement is not None:
            return agreement
    return None
