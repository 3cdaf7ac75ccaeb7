"""Protocol constants: the original's values, close codes and their reasons in one place."""

from __future__ import annotations

import enum


class WebSocketEvents:
    AUTHENTICATE = "authenticate"
    CONNECTED = "connected"
    DISCONNECT = "disconnect"
    JOIN = "join"
    LEAVE = "leave"
    ERROR = "error"
    HEARTBEAT = "heartbeat"
    ENCRYPTED = "encrypted"

    SCHEME_SET = frozenset(
        {AUTHENTICATE, CONNECTED, DISCONNECT, JOIN, LEAVE, ERROR, HEARTBEAT, ENCRYPTED}
    )

    @classmethod
    def is_valid(cls, value: object) -> bool:
        return value in cls.SCHEME_SET


class WebSocketChannels:
    BROADCAST = "ws:broadcast"
    ROOM_PREFIX = "ws:room:"
    CLIENT_PREFIX = "ws:client:"
    USER_PREFIX = "ws:user:"

    @classmethod
    def for_room(cls, room: str) -> str:
        return cls.ROOM_PREFIX + room

    @classmethod
    def for_client(cls, client_id: str) -> str:
        return cls.CLIENT_PREFIX + client_id

    @classmethod
    def for_user(cls, user_id: str) -> str:
        return cls.USER_PREFIX + user_id

    @classmethod
    def for_room_pattern(cls) -> str:
        return cls.ROOM_PREFIX + "*"

    @classmethod
    def for_client_pattern(cls) -> str:
        return cls.CLIENT_PREFIX + "*"

    @classmethod
    def for_user_pattern(cls) -> str:
        return cls.USER_PREFIX + "*"


class WebSocketDefaults:
    """Defaults. Durations are in seconds (the original uses ms for the last four)."""

    PATH = "/ws"
    ROOM = "ws-default"
    NOTIFICATION_ROOM = "ws-notification"
    BROADCAST_TOPIC = "ws:internal:broadcast"
    MAX_PAYLOAD_LENGTH = 128 * 1024
    IDLE_TIMEOUT = 60.0
    BACKPRESSURE_LIMIT = 1024 * 1024
    SEND_PINGS = True
    PUBLISH_TO_SELF = False
    AUTH_TIMEOUT = 5.0
    HEARTBEAT_INTERVAL = 30.0
    HEARTBEAT_TIMEOUT = 90.0
    ENCRYPTED_BATCH_LIMIT = 10


# Ours, beyond the original's defaults:
SUBSCRIBE_TIMEOUT = 1.0
"""Seconds a login or join may wait for Redis to confirm its subscriptions before it goes
ahead anyway (the join barrier's bound)."""
LISTEN_BACKLOG = 4096
"""Connections the listening socket queues before accepting (capped by the kernel): a burst
beyond it waits for SYN retransmits, a second each."""


class WebSocketMessageTypes:
    CLIENT = "client"
    USER = "user"
    ROOM = "room"
    BROADCAST = "broadcast"

    SCHEME_SET = frozenset({CLIENT, USER, ROOM, BROADCAST})

    @classmethod
    def is_valid(cls, value: object) -> bool:
        return value in cls.SCHEME_SET


class ClientState(enum.StrEnum):
    """Where a connection is (`roomcast.protocol.session`); equal to the original's strings."""

    UNAUTHORIZED = "unauthorized"
    AUTHENTICATING = "authenticating"
    AUTHENTICATED = "authenticated"
    DISCONNECTED = "disconnected"


class WebSocketClientStates:
    # The members themselves: `client.state is WebSocketClientStates.AUTHENTICATED` holds,
    # and each equals its string.
    UNAUTHORIZED = ClientState.UNAUTHORIZED
    AUTHENTICATING = ClientState.AUTHENTICATING
    AUTHENTICATED = ClientState.AUTHENTICATED
    DISCONNECTED = ClientState.DISCONNECTED

    SCHEME_SET = frozenset({UNAUTHORIZED, AUTHENTICATING, AUTHENTICATED, DISCONNECTED})

    @classmethod
    def is_valid(cls, value: object) -> bool:
        return value in cls.SCHEME_SET


class CloseCode:
    """Close codes the server sends, each with its reason (see the README's table)."""

    GOING_AWAY = 1001  # server shutdown, idle timeout
    INVALID_TEXT = 1007  # a text message that is not UTF-8
    # backpressure limit passed with close_on_backpressure_limit; also max_fragments and the
    # inbound rate limit, with their own reasons
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009  # message larger than max_payload_length
    AUTH_TIMEOUT = 4001
    HEARTBEAT_TIMEOUT = 4002
    AUTH_FAILED = 4003
    ENCRYPTION_REQUIRED = 4004

    REASONS = {
        AUTH_TIMEOUT: "Authentication timeout",
        HEARTBEAT_TIMEOUT: "Heartbeat timeout",
        AUTH_FAILED: "Authentication failed",
        ENCRYPTION_REQUIRED: "Encryption required",
        GOING_AWAY: "Server shutting down",
        INVALID_TEXT: "Invalid UTF-8 text",
        POLICY_VIOLATION: "Backpressure limit exceeded",
        MESSAGE_TOO_BIG: "Message too big",
    }
    IDLE_REASON = "Idle timeout"
    # Also 1008, for the inbound limits (README, "Limits").
    FRAGMENTS_REASON = "Too many fragments"
    RATE_LIMIT_REASON = "Rate limit exceeded"


class ErrorMessages:
    """Texts of the error events (exact, from the original's error table)."""

    INVALID_FORMAT = "Invalid message format"
    ALREADY_AUTHENTICATED = "Already authenticated"
    NOT_AUTHENTICATED = "Not authenticated"
    AUTH_FAILED = "Authentication failed"
    AUTH_ERROR = "Authentication error"
    HANDSHAKE_FAILED = "Encryption handshake failed"
    # Ours (the original has no inbound decryption): an `encrypted` event that cannot be opened.
    DECRYPTION_FAILED = "Decryption failed"
    # Ours: the per-client limits (SPEC §12).
    ROOM_LIMIT = "Room limit reached"
    RATE_LIMIT = "Rate limit exceeded"
    INVALID_REDIS = "Invalid redis connection!"
    UPGRADE_FAILED = "WebSocket upgrade failed"


ROOM_NAME_MAX_LENGTH = 256
INTERNAL_ROOM_PREFIX = "ws:"
EMITTER_SERVER_ID = "emitter"
API_SERVER_ID = "api"
"""The serverId of the HTTP API's envelopes (`roomcast.api`): no node's own, so every node
delivers them, the one that published them too."""
DISCONNECT_TYPE = "disconnect"
"""Ours: an envelope that closes a client or a user's sessions (`protocol.disconnect_of`);
the original's nodes drop envelope types they do not know."""
CLOSE_REASON_LIMIT = 123
"""Bytes of a close reason: a close frame's payload is at most 125 bytes, 2 of them the code."""
