"""The wire, with no I/O: the protocol's constants (`constants`), messages and envelopes
(`messages`), the per-connection state machine (`session`) and the protocol path's counters
(`counters`).

`roomcast.protocol` itself offers the message functions (`roomcast.protocol.messages`), as it
did when it was one module.
"""

from .messages import (
    MISSING,
    Envelope,
    InvalidMessage,
    InvalidText,
    RoomGlob,
    decode,
    decode_envelope,
    encode,
    encode_at,
    encode_envelope,
    error_payload,
    history_frame,
    iso_now,
    recover_request,
    requested_rooms,
    sanitize_rooms,
)

__all__ = [
    "MISSING",
    "Envelope",
    "InvalidMessage",
    "InvalidText",
    "RoomGlob",
    "decode",
    "decode_envelope",
    "encode",
    "encode_at",
    "encode_envelope",
    "error_payload",
    "history_frame",
    "iso_now",
    "recover_request",
    "requested_rooms",
    "sanitize_rooms",
]
