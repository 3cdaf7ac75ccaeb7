"""The flags of `roomcast serve` and `roomcast emit`, and `ServeConfig`, what they make.

Every serve flag can also come from an environment variable `ROOMCAST_<FLAG>` (dashes become
underscores); a flag on the command line wins. Durations are in milliseconds on the command
line, as in the original, and in seconds everywhere else.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from .. import __version__
from ..broker import REDIS_SCHEMES
from ..config import ServerConfig
from ..protocol.constants import INTERNAL_ROOM_PREFIX, ROOM_NAME_MAX_LENGTH
from ..serving.api import DEFAULT_BODY_LIMIT
from .token import add_token_parser
from .token import non_negative_int as _non_negative_int


class CliError(Exception):
    """A one-line, user-facing error; `exit_code` 2 for bad configuration, 1 for the rest."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# The helper's defaults, which the flags' defaults are (`roomcast.config`).
_SERVER = ServerConfig()


@dataclass
class ServeConfig:
    """The settings of `roomcast serve`, flag by flag (`_SERVE_FLAGS`); `server_config()`
    gives the helper's part."""

    host: str = "127.0.0.1"
    port: int = 8080
    path: str = _SERVER.path
    redis_url: str = "memory://"
    redis_timeout: float = 30.0
    app: str | None = None
    auth_timeout: float = _SERVER.auth_timeout
    heartbeat_interval: float = _SERVER.heartbeat_interval
    heartbeat_timeout: float = _SERVER.heartbeat_timeout
    default_rooms: list[str] = field(default_factory=lambda: list(_SERVER.default_rooms))
    require_encryption: bool = _SERVER.require_encryption
    max_payload_length: int = _SERVER.options["max_payload_length"]
    subscribe_timeout: float = _SERVER.subscribe_timeout
    backlog: int = _SERVER.options["backlog"]
    jwt_secret: str | None = None
    jwt_secret_file: str | None = None
    jwt_allow_short_secret: bool = False
    jwt_public_key: str | None = None
    jwks_url: str | None = None
    jwks_allow_http: bool = False
    jwt_require_exp: bool = False
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: float = 0.0
    jwt_user_claim: str = "sub"
    allow_rooms: str = "*"
    history_rooms: str | None = None
    history_size: int = _SERVER.options["history_size"]
    history_ttl: float = _SERVER.options["history_ttl"]
    history_timeout: float = _SERVER.options["history_timeout"]
    history_queue_limit: int = _SERVER.options["history_queue_limit"]
    recovery_timeout: float = _SERVER.options["recovery_timeout"]
    presence_rooms: str | None = None
    presence_ttl: float = _SERVER.options["presence_ttl"]
    presence_events: bool = False
    presence_limit: int = _SERVER.options["presence_limit"]
    max_fragments: int = _SERVER.options["max_fragments"]
    max_rooms_per_client: int = _SERVER.options["max_rooms_per_client"]
    room_changes_per_second: float = _SERVER.options["room_changes_per_second"]
    join_queue_limit: int = _SERVER.options["join_queue_limit"]
    validate_room_timeout: float = _SERVER.options["validate_room_timeout"]
    max_handler_tasks_per_client: int = _SERVER.options["max_handler_tasks_per_client"]
    rate_limit_messages: float | None = None
    rate_limit_bytes: float | None = None
    rate_limit_burst: float = _SERVER.options["rate_limit_burst"]
    public_client_rooms: bool = False
    log_level: str = "info"
    workers: int = 1
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_keyfile_password: str | None = None
    ssl_ca_certs: str | None = None
    metrics_port: int | None = None
    log_format: str = "text"
    api_key: str | None = None
    api_key_file: str | None = None
    api_body_limit: int = DEFAULT_BODY_LIMIT

    def server_config(self) -> ServerConfig:
        """The helper's configuration these settings give."""
        return ServerConfig(
            identifier="roomcast",
            path=self.path,
            default_rooms=tuple(self.default_rooms),
            auth_timeout=self.auth_timeout,
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout=self.heartbeat_timeout,
            require_encryption=self.require_encryption,
            subscribe_timeout=self.subscribe_timeout,
            options={
                "max_payload_length": self.max_payload_length,
                "backlog": self.backlog,
                "history_rooms": self.history_rooms,
                "history_size": self.history_size,
                "history_ttl": self.history_ttl,
                "history_timeout": self.history_timeout,
                "history_queue_limit": self.history_queue_limit,
                "recovery_timeout": self.recovery_timeout,
                "presence_rooms": self.presence_rooms,
                "presence_ttl": self.presence_ttl,
                "presence_events": self.presence_events,
                "presence_limit": self.presence_limit,
                "max_fragments": self.max_fragments,
                "max_rooms_per_client": self.max_rooms_per_client,
                "room_changes_per_second": self.room_changes_per_second,
                "join_queue_limit": self.join_queue_limit,
                "validate_room_timeout": self.validate_room_timeout,
                "max_handler_tasks_per_client": self.max_handler_tasks_per_client,
                "rate_limit_messages": self.rate_limit_messages,
                "rate_limit_bytes": self.rate_limit_bytes,
                "rate_limit_burst": self.rate_limit_burst,
                "private_client_rooms": not self.public_client_rooms,
            },
        )


# -- flag parsing ------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0-65535: {text}")
    return value


def _path(text: str) -> str:
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(f"must start with '/': {text!r}")
    return text


def _rooms(text: str) -> list[str]:
    return [room.strip() for room in text.split(",") if room.strip()]


def _default_rooms(text: str) -> list[str]:
    """Comma-separated room names a client could join itself; '' for none."""
    if not text.strip():
        return []
    rooms = [room.strip() for room in text.split(",")]
    for room in rooms:
        if not room:
            raise argparse.ArgumentTypeError(f"empty room name in {text!r}")
        if room.startswith(INTERNAL_ROOM_PREFIX):
            raise argparse.ArgumentTypeError(
                f"room names may not start with {INTERNAL_ROOM_PREFIX!r}: {room!r}"
            )
        if len(room) > ROOM_NAME_MAX_LENGTH:
            raise argparse.ArgumentTypeError(
                f"room name longer than {ROOM_NAME_MAX_LENGTH} characters: {room[:20]!r}..."
            )
    return rooms


def _glob(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("a room glob must not be empty")
    return text


def _flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def _redis_url(text: str) -> str:
    if text == "memory:" or text.startswith(("memory://", *REDIS_SCHEMES)):
        return text
    raise argparse.ArgumentTypeError(
        f"unsupported url {text!r} (use memory://, redis://, rediss://, redis+cluster:// "
        "or redis+sentinel://)"
    )


def _emit_redis_url(text: str) -> str:
    if text.startswith(REDIS_SCHEMES):
        return text
    raise argparse.ArgumentTypeError(
        f"unsupported url {text!r} (use redis://, rediss://, redis+cluster:// or redis+sentinel://)"
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"roomcast: error: {message}\n")


# (flag, type, help); every flag also reads ROOMCAST_<FLAG>.
_SERVE_FLAGS: list[tuple[str, Callable[[str], Any] | None, str]] = [
    ("--host", str, "address to listen on (default 127.0.0.1)"),
    ("--port", _port, "port to listen on (default 8080; 0 picks a free one)"),
    ("--path", _path, "WebSocket path (default /ws)"),
    (
        "--redis-url",
        _redis_url,
        "memory:// (default, one node), redis://, rediss://, redis+cluster://h:p,h:p, "
        "redis+sentinel://h:p,h:p/service (valkey:// ... too)",
    ),
    ("--redis-timeout-ms", _positive_int, "ms to wait for redis at start (default 30000)"),
    ("--app", str, "MODULE:ATTR supplying callbacks (and optionally setup(helper))"),
    ("--auth-timeout-ms", _positive_int, "ms to send authenticate (default 5000)"),
    (
        "--heartbeat-interval-ms",
        _positive_int,
        "expected client heartbeat interval (default 30000)",
    ),
    ("--heartbeat-timeout-ms", _positive_int, "ms of silence before close 4002 (default 90000)"),
    (
        "--default-rooms",
        _default_rooms,
        "comma-separated rooms joined after authentication ('' for none)",
    ),
    (
        "--require-encryption",
        None,
        "refuse clients without an encrypted session (the built-in ECDH scheme unless --app "
        "gives handshake_fn or encryption)",
    ),
    ("--max-payload-length", _positive_int, "largest accepted message in bytes (default 131072)"),
    (
        "--subscribe-timeout-ms",
        _positive_int,
        "longest a login or join waits for redis to confirm its subscriptions (default 1000)",
    ),
    (
        "--backlog",
        _positive_int,
        "connections waiting to be accepted (default 4096, capped by the kernel's somaxconn)",
    ),
    ("--jwt-secret", str, "HS256/384/512 secret of the built-in authenticator (>= 32 bytes)"),
    (
        "--jwt-secret-file",
        str,
        "file holding the --jwt-secret (one trailing newline ignored), so it is not on argv",
    ),
    ("--jwt-allow-short-secret", None, "accept a --jwt-secret shorter than 32 bytes (insecure)"),
    ("--jwt-public-key", str, "PEM public key or certificate file: RS*, PS*, ES*, EdDSA tokens"),
    ("--jwks-url", str, "identity provider's JWKS (https://.../.well-known/jwks.json)"),
    ("--jwks-allow-http", None, "accept a plain http:// --jwks-url (keys could be swapped)"),
    ("--jwt-require-exp", None, "refuse tokens without an exp claim"),
    ("--jwt-audience", str, "required aud claim"),
    ("--jwt-issuer", str, "required iss claim"),
    ("--jwt-leeway-ms", _non_negative_int, "clock skew allowed on exp/nbf/iat (default 0)"),
    ("--jwt-user-claim", str, "claim that becomes the user id (default sub)"),
    ("--allow-rooms", str, "glob of room names clients may join (default '*')"),
    ("--history-rooms", _glob, "glob of rooms that keep history (default none)"),
    ("--history-size", _positive_int, "messages a history room keeps (default 100)"),
    ("--history-ttl-ms", _positive_int, "ms a history room keeps a message (default 300000)"),
    (
        "--history-timeout-ms",
        _positive_int,
        "ms any Redis call of the history may take; past it messages go out without an "
        "offset and recoveries answer recovered: false (default 1000)",
    ),
    (
        "--history-queue-limit",
        _positive_int,
        "bytes waiting for the history writer; past it messages go out without an offset "
        "(default 8388608)",
    ),
    (
        "--recovery-timeout-ms",
        _positive_int,
        "ms a recovery's replay may wait for the client to read; then recovered: false "
        "(default 10000)",
    ),
    ("--presence-rooms", _glob, "glob of rooms with cluster-wide presence (default none)"),
    (
        "--presence-ttl-ms",
        _positive_int,
        "ms a dead node's members stay in presence at most (default 30000)",
    ),
    ("--presence-events", None, "presence-join/presence-leave events to presence room members"),
    ("--presence-limit", _positive_int, "most members a presence answer lists (default 1000)"),
    # Limits one client meets (the README's "Limits" table).
    ("--max-fragments", _positive_int, "frames one message may span (default 1024; 1008 past)"),
    (
        "--max-rooms-per-client",
        _positive_int,
        "rooms one client may be in (default 10000; 'Room limit reached' past it)",
    ),
    (
        "--room-changes-per-second",
        _positive_int,
        "room names a client joins or leaves per second before reading pauses (default 1000)",
    ),
    (
        "--join-queue-limit",
        _positive_int,
        "bytes a client may queue behind a join barrier before reading pauses (default 1048576)",
    ),
    (
        "--validate-room-timeout-ms",
        _positive_int,
        "ms an async validate_room_fn may take before the join is refused (default 5000)",
    ),
    (
        "--max-handler-tasks-per-client",
        _positive_int,
        "async message_handler calls in flight per client before reading pauses (default 16)",
    ),
    (
        "--rate-limit-messages",
        _positive_number,
        "messages per second a connection may send (default: no limit)",
    ),
    ("--rate-limit-bytes", _positive_number, "bytes per second a connection may send (no limit)"),
    (
        "--rate-limit-burst",
        _positive_number,
        "seconds' worth of the rate limits a connection may send at once (default 2)",
    ),
    (
        "--public-client-rooms",
        None,
        "let clients join rooms named like another client's id (its own-id room)",
    ),
    ("--log-level", str, "trace, debug, info, warning or error (default info)"),
    ("--log-format", str, "text, or json for one JSON object per line (default text)"),
    (
        "--workers",
        _non_negative_int,
        "worker processes sharing the port (default 1; 0: one per CPU); >1 needs --redis-url",
    ),
    ("--ssl-certfile", str, "PEM certificate (chain) file: serve wss:// and https://"),
    ("--ssl-keyfile", str, "PEM private key file (default: in --ssl-certfile)"),
    ("--ssl-keyfile-password", str, "password of an encrypted --ssl-keyfile"),
    ("--ssl-ca-certs", str, "PEM CA file: require client certificates signed by these CAs"),
    ("--metrics-port", _port, "serve /metrics (and /health) on this port, not the main one"),
    (
        "--api-key",
        str,
        "turn on the server HTTP API under /api/ with this key (header X-API-Key); "
        "without a key /api/ answers 404",
    ),
    ("--api-key-file", str, "read the API key from this file (keeps it off the command line)"),
    ("--api-body-limit", _positive_int, "largest API request body in bytes (default 1048576)"),
]


def _env_name(flag: str) -> str:
    return "ROOMCAST_" + flag.lstrip("-").replace("-", "_").upper()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="roomcast", description="Real-time WebSocket messaging server.")
    parser.add_argument("--version", action="version", version=f"roomcast {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser("serve", help="run a server")
    for flag, kind, text in _SERVE_FLAGS:
        help_text = f"{text} [env {_env_name(flag)}]"
        if kind is None:
            serve.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            serve.add_argument(flag, type=kind, default=None, help=help_text)
    emit = commands.add_parser(
        "emit", help="send one message to clients on every node (through redis)"
    )
    emit.add_argument(
        "--redis-url",
        type=_emit_redis_url,
        default=None,
        help="redis://, rediss://, redis+cluster://h:p,h:p, redis+sentinel://h:p,h:p/service "
        "(valkey:// ... too) [env ROOMCAST_REDIS_URL]",
    )
    to = emit.add_mutually_exclusive_group(required=True)
    to.add_argument("--room", help="every member of this room")
    to.add_argument("--user", help="every session of this user id")
    to.add_argument("--client", help="this client id")
    to.add_argument("--broadcast", action="store_true", help="every authenticated client")
    emit.add_argument("--event", required=True, help="event name")
    emit.add_argument("--data", default=None, help="JSON payload (absent: no data key)")
    emit.add_argument("--exclude", type=_rooms, default=None, help="client ids to skip (a,b)")
    emit.add_argument(
        "--history-rooms",
        type=_glob,
        default=None,
        help="messages to these rooms go through their history (default: the servers' "
        "--history-rooms, which they publish in redis) [env ROOMCAST_HISTORY_ROOMS]",
    )
    emit.add_argument(
        "--history-size", type=_positive_int, default=None, help="default: the servers'"
    )
    emit.add_argument(
        "--history-ttl-ms", type=_positive_int, default=None, help="default: the servers'"
    )
    emit.add_argument(
        "--redis-timeout-ms",
        type=_positive_int,
        default=None,
        help="ms to wait for redis (default 5000) [env ROOMCAST_REDIS_TIMEOUT_MS]",
    )
    add_token_parser(commands)
    return parser


def config_from_args(args: argparse.Namespace, environ: dict[str, str]) -> ServeConfig:
    """Flags first, then ROOMCAST_* variables, then defaults."""
    config = ServeConfig()
    for flag, kind, _ in _SERVE_FLAGS:
        dest = flag.lstrip("-").replace("-", "_")
        value = getattr(args, dest)
        if value is None and _env_name(flag) in environ:
            raw = environ[_env_name(flag)]
            try:
                value = (kind or _flag)(raw)
            except argparse.ArgumentTypeError as exc:
                raise CliError(f"{_env_name(flag)}: {exc}") from None
        if value is None:
            continue
        if dest.endswith("_ms"):
            setattr(config, dest.removesuffix("_ms"), value / 1000)
        else:
            setattr(config, dest, value)
    if config.log_level.lower() not in ("trace", "debug", "info", "warning", "error"):
        raise CliError(f"unknown log level: {config.log_level}")
    from ..serving.workers import cpu_count

    if config.workers == 0:
        config.workers = cpu_count()
    if config.workers > 1 and not config.redis_url.startswith(REDIS_SCHEMES):
        raise CliError(
            f"--workers {config.workers} needs a shared broker: give --redis-url "
            f"(redis://, rediss://, redis+cluster:// or redis+sentinel://); "
            f"{config.redis_url} is one process"
        )
    if (config.ssl_keyfile or config.ssl_ca_certs) and not config.ssl_certfile:
        raise CliError("--ssl-keyfile and --ssl-ca-certs need --ssl-certfile")
    if config.log_format.lower() not in ("text", "json"):
        raise CliError(f"unknown log format: {config.log_format}")
    _api_key(config)
    return config


def _api_key(config: ServeConfig) -> None:
    """Take the key from --api-key-file; refuse an empty one, or two ways of giving it."""
    if config.api_key_file is not None:
        if config.api_key is not None:
            raise CliError("give --api-key or --api-key-file (or ROOMCAST_API_KEY), not both")
        try:
            with open(config.api_key_file, encoding="utf-8") as file:
                config.api_key = file.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"--api-key-file: cannot read {config.api_key_file}: {exc}") from None
    if config.api_key is not None and not config.api_key:
        raise CliError("the API key is empty")
