"""Typed surface of the Rust extension ``roomcast._core``.

Lifetime and threading rules: a ``Hub`` belongs to one event loop thread and is not
thread-safe. Handles are plain ints; a handle is dead after ``remove`` and any call
with a dead handle is a no-op (or returns an empty/False result).
"""

from collections.abc import Callable
from typing import Any, Self, final

__all__ = [
    "DEFAULT_DEFLATE_LEVEL",
    "DEFAULT_DEFLATE_THRESHOLD",
    "EXPIRED_AUTH",
    "EXPIRED_HEARTBEAT",
    "EXPIRED_IDLE",
    "INTEREST_CLIENT",
    "INTEREST_ROOM",
    "INTEREST_USER",
    "Hub",
    "InflatedTooBig",
    "Inflater",
    "InvalidDeflate",
    "frame_text",
    "seal_messages",
]

# Reasons returned by Hub.sweep().
EXPIRED_AUTH: int  # auth deadline passed (initial or in-progress) -> close 4001
EXPIRED_HEARTBEAT: int  # authenticated and silent for heartbeat_timeout -> close 4002
EXPIRED_IDLE: int  # nothing at all received for idle_timeout -> close (idle)

# Kinds returned by Hub.drain_interest().
INTEREST_ROOM: int  # a room got its first member / lost its last
INTEREST_USER: int  # a user got its first local session / lost its last
INTEREST_CLIENT: int  # a client authenticated / an authenticated client went away

# permessage-deflate: messages shorter than this go uncompressed; zlib's level.
DEFAULT_DEFLATE_THRESHOLD: int
DEFAULT_DEFLATE_LEVEL: int

def frame_text(payload: bytes) -> bytes:
    """One unmasked, final server-to-client text frame carrying ``payload``."""

def seal_messages(keys: bytes, ivs: bytes, plaintext: bytes) -> list[bytes]:
    """``plaintext`` sealed with AES-256-GCM once per key, each as the wire message
    ``{"event":"encrypted","data":{"iv":<b64>,"ct":<b64>}}`` (ct ends with the 16-byte tag).

    ``keys``: n concatenated 32-byte keys; ``ivs``: n concatenated fresh 12-byte IVs.
    Runs with the GIL released; raises ValueError when the counts do not match.
    """

@final
class Hub:
    """Connection registry, room and user indices, fan-out and deadlines.

    ``schedule`` is called with one zero-argument callable (``hub.flush``) the first time
    data is queued after a flush; pass ``loop.call_soon``. ``on_overflow`` is called with a
    connection's owner when its queued data passes ``backpressure_limit`` and
    ``close_on_backpressure_limit`` is set. ``on_interest`` (no arguments), when given,
    turns interest tracking on: it is called once when the first change is recorded
    after a ``drain_interest()``; pass something that schedules the drain.
    ``direct_writes``: connections whose ``write`` is a plain uvloop TCP transport's get
    their batches sent straight to the socket when uvloop holds nothing unsent for them
    (the rest, and every other case, still goes through ``write``); a flush submits them
    all in one io_uring call where the kernel allows it, else one ``send(2)`` each.
    A scheduled flush (``flush()``) writes at most ``pass_sockets`` connections or
    ``pass_bytes`` bytes (after the connection that reaches it), then calls ``resume``
    (default: ``schedule``) with ``hub.flush`` for the rest, which comes first in the
    next pass; ``flush(whole=True)`` writes everything now.
    """

    def __new__(
        cls,
        schedule: Callable[[Callable[[], None]], Any],
        *,
        backpressure_limit: int = 1048576,
        close_on_backpressure_limit: bool = False,
        heartbeat_timeout: float = 90.0,
        idle_timeout: float = 0.0,
        send_pings: bool = False,
        on_overflow: Callable[[Any], Any] | None = None,
        on_interest: Callable[[], Any] | None = None,
        direct_writes: bool = False,
        pass_sockets: int = 256,
        pass_bytes: int = 4194304,
        resume: Callable[[Callable[[], None]], Any] | None = None,
        deflate_threshold: int = ...,
        deflate_level: int = ...,
    ) -> Self: ...
    # -- registry ----------------------------------------------------------------
    def add(self, client_id: str, write: Callable[[bytes], Any], owner: Any) -> int: ...
    def remove(self, handle: int) -> None: ...
    def __len__(self) -> int: ...
    def authenticate(self, handle: int, user_id: str | None) -> None: ...
    def set_auth_deadline(self, handle: int, timeout: float | None) -> None: ...
    def touch(self, handle: int) -> None: ...
    def touch_recv(self, handle: int) -> None: ...
    def set_encrypted(self, handle: int, encrypted: bool) -> None: ...
    def set_deflate(self, handle: int, window_bits: int | None) -> None:
        """The connection negotiated permessage-deflate with server window ``window_bits``
        (8-15), or with None did not: its messages of at least ``deflate_threshold`` bytes
        are compressed from now on, once per message for every such recipient (sealed
        messages to an encrypted connection excepted)."""
    def is_deflate(self, handle: int) -> bool: ...
    def set_backpressured(self, handle: int, backpressured: bool) -> None: ...
    def is_backpressured(self, handle: int) -> bool: ...
    def skipped(self, handle: int) -> int: ...
    def last_activity(self, handle: int) -> float: ...
    # -- rooms and users ---------------------------------------------------------
    def join(self, handle: int, room: str) -> bool: ...
    def leave(self, handle: int, room: str) -> bool: ...
    def rooms_of(self, handle: int) -> list[str]: ...
    def room_count(self, handle: int) -> int: ...  # 0 once the connection is gone
    def in_room(self, handle: int, room: str) -> bool: ...
    def has_room(self, room: str) -> bool: ...
    def room_members(self, room: str) -> list[str]: ...
    def user_members(self, user_id: str) -> list[str]: ...
    def room_names(self) -> list[str]: ...
    def drain_interest(self) -> list[tuple[int, str, bool]]:
        """``(kind, name, present)`` per change since the last drain, in order; the last
        change of a name is its current state."""
    def drain_interest_channels(
        self, room_prefix: str, user_prefix: str, client_prefix: str
    ) -> tuple[list[str], list[str]]:
        """The same changes as channel names (the kind's prefix + the name): those gained,
        then those lost; applying every gain, then every loss, equals replaying them."""
    # -- delivery ----------------------------------------------------------------
    def send(self, handle: int, payload: bytes) -> bool: ...
    def send_room(self, room: str, payload: bytes, exclude: list[str] | None = None) -> int: ...
    def send_user(self, user_id: str, payload: bytes) -> int: ...
    def send_history(
        self,
        room: str,
        epoch: str,
        offset: int,
        payload: bytes,
        exclude: list[str] | None = None,
        encrypted: list[Any] | None = None,
    ) -> int:
        """Message ``offset`` of history room ``room`` to its members, in the room's offset
        order (held for recovering members, skipped for floored ones); the owners of the
        encrypted members that get it are appended to ``encrypted`` when given. Returns how
        many it was queued for, or -1 when the room's offset went back under the same epoch
        (delivered to no one: the caller starts a new epoch)."""
    def hold_history(self, handle: int, room: str, hold: bool = True) -> bool:
        """Holds the member's live messages of ``room`` from now on (its recovery is being
        read); ``hold=False`` stops and drops them. False if not a member."""
    def held_first(
        self, handle: int, room: str, epoch: str | None = None
    ) -> tuple[str, int] | None:
        """``(epoch, offset)`` of the first live message held for the member in ``room`` (of
        ``epoch``, when given)."""
    def held_epoch(self, handle: int, room: str) -> str | None:
        """Epoch of the last live message held for the member in ``room``."""
    def held_bytes(self, handle: int, room: str) -> int:
        """Bytes held for the member in ``room`` (0 when not recovering)."""
    def take_held(
        self, handle: int, room: str, epoch: str, offset: int, budget: int
    ) -> list[tuple[int, bytes]]:
        """``[(offset, payload), ...]``: the messages held for the member in ``room`` of
        ``epoch`` above ``offset``, in offset order, each once, up to ``budget`` bytes (at
        least one), taken while still holding; ``[]`` when none is left."""
    def release_history(self, handle: int, room: str, epoch: str, offset: int) -> list[bytes]:
        """Ends the member's recovery once its replay and ``joined`` are queued: queues the
        held messages of ``epoch`` above ``offset`` in offset order, each once, and returns
        ``[]``; for an encrypted member, returns their payloads for the caller to seal
        instead. An empty ``epoch`` (unreadable history) stands for the epoch of the first
        held message."""
    def broadcast(self, payload: bytes, exclude: list[str] | None = None) -> int: ...
    def encrypted_owners(
        self, room: str | None, user_id: str | None, exclude: list[str] | None = None
    ) -> list[Any]: ...
    def flush(self, whole: bool = False) -> None: ...
    def flush_one(self, handle: int) -> None: ...
    # -- deadlines ---------------------------------------------------------------
    def sweep(self) -> list[tuple[Any, int]]: ...
    def stats(self) -> dict[str, int]:
        """connections, authenticated, rooms, users, memberships, pending_bytes,
        backpressured, wheel_entries (now); skipped, delivered, frames_out, bytes_out,
        direct_writes (batches sent straight to a socket), ring_submits (flushes whose
        direct writes went to the kernel through io_uring: 16 or more of them; fewer go
        by ``send(2)``), passes_split (flushes that stopped at their bound and resumed)
        (counted since the hub
        was created); io_uring (1 when this hub submits through io_uring: the kernel
        supports it and ``ROOMCAST_IO_URING`` is not ``0``; 0 for good once a submission
        failed, after which every direct write goes by ``send(2)``)."""

class InflatedTooBig(ValueError):
    """The message inflates to more than the limit (inflation stopped there)."""

class InvalidDeflate(ValueError):
    """The message is not valid deflate data."""

@final
class Inflater:
    """Inflates compressed messages (RFC 7692 payloads, no context takeover) to at most
    ``limit`` bytes each; nothing past the limit is allocated. One per server."""

    def __new__(cls) -> Self: ...
    def inflate(self, payload: bytes, limit: int) -> bytes:
        """The message whose compressed payload is ``payload``; raises InflatedTooBig or
        InvalidDeflate."""
