"""`roomcast serve` and `roomcast emit`.

`serve`: flags map one-to-one onto ServeConfig, ServeConfig onto a running server. `emit`: one
message through the WebSocketEmitter, for shell scripts. `token`: a JWT to try a server with.

Every flag can also come from an environment variable `ROOMCAST_<FLAG>` (dashes become
underscores); a flag on the command line wins. Durations are in milliseconds on the command
line, as in the original, and in seconds everywhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import fnmatch
import importlib
import inspect
import logging
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from . import __version__, jwt
from .broker import REDIS_SCHEMES, BrokerUnavailable
from .constants import (
    INTERNAL_ROOM_PREFIX,
    LISTEN_BACKLOG,
    ROOM_NAME_MAX_LENGTH,
    SUBSCRIBE_TIMEOUT,
    WebSocketDefaults,
)
from .runner import until_signalled
from .token import TokenError, add_token_parser, token_command
from .token import non_negative_int as _non_negative_int

CALLBACKS = (
    "authenticate_fn",
    "validate_room_fn",
    "client_connected_fn",
    "client_disconnected_fn",
    "message_handler",
    "outbound_transformer",
    "handshake_fn",
    "encryption",
)


class CliError(Exception):
    """A one-line, user-facing error; `exit_code` 2 for bad configuration, 1 for the rest."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    path: str = WebSocketDefaults.PATH
    redis_url: str = "memory://"
    redis_timeout: float = 30.0
    app: str | None = None
    auth_timeout: float = WebSocketDefaults.AUTH_TIMEOUT
    heartbeat_interval: float = WebSocketDefaults.HEARTBEAT_INTERVAL
    heartbeat_timeout: float = WebSocketDefaults.HEARTBEAT_TIMEOUT
    default_rooms: list[str] = field(
        default_factory=lambda: [WebSocketDefaults.ROOM, WebSocketDefaults.NOTIFICATION_ROOM]
    )
    require_encryption: bool = False
    max_payload_length: int = WebSocketDefaults.MAX_PAYLOAD_LENGTH
    subscribe_timeout: float = SUBSCRIBE_TIMEOUT
    backlog: int = LISTEN_BACKLOG
    jwt_secret: str | None = None
    jwt_allow_short_secret: bool = False
    jwt_public_key: str | None = None
    jwks_url: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: float = 0.0
    jwt_user_claim: str = "sub"
    allow_rooms: str = "*"
    log_level: str = "info"
    workers: int = 1
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_keyfile_password: str | None = None
    ssl_ca_certs: str | None = None
    metrics_port: int | None = None
    log_format: str = "text"


# -- flag parsing ------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
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
        f"unsupported url {text!r} (use memory://, redis://, rediss:// or redis+cluster://)"
    )


def _emit_redis_url(text: str) -> str:
    if text.startswith(REDIS_SCHEMES):
        return text
    raise argparse.ArgumentTypeError(
        f"unsupported url {text!r} (use redis://, rediss:// or redis+cluster://)"
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
        "memory:// (default, one node), redis://, rediss://, redis+cluster://",
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
    ("--jwt-allow-short-secret", None, "accept a --jwt-secret shorter than 32 bytes (insecure)"),
    ("--jwt-public-key", str, "PEM public key or certificate file: RS*, PS*, ES*, EdDSA tokens"),
    ("--jwks-url", str, "identity provider's JWKS (https://.../.well-known/jwks.json)"),
    ("--jwt-audience", str, "required aud claim"),
    ("--jwt-issuer", str, "required iss claim"),
    ("--jwt-leeway-ms", _non_negative_int, "clock skew allowed on exp/nbf/iat (default 0)"),
    ("--jwt-user-claim", str, "claim that becomes the user id (default sub)"),
    ("--allow-rooms", str, "glob of room names clients may join (default '*')"),
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
        help="redis://, rediss://, redis+cluster:// [env ROOMCAST_REDIS_URL]",
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
    from .workers import cpu_count

    if config.workers == 0:
        config.workers = cpu_count()
    if config.workers > 1 and not config.redis_url.startswith(REDIS_SCHEMES):
        raise CliError(
            f"--workers {config.workers} needs a shared broker: give --redis-url "
            f"(redis://, rediss:// or redis+cluster://); {config.redis_url} is one process"
        )
    if (config.ssl_keyfile or config.ssl_ca_certs) and not config.ssl_certfile:
        raise CliError("--ssl-keyfile and --ssl-ca-certs need --ssl-certfile")
    if config.log_format.lower() not in ("text", "json"):
        raise CliError(f"unknown log format: {config.log_format}")
    return config


# -- the application object ----------------------------------------------------------------


def load_app(spec: str) -> Any:
    """Import MODULE:ATTR; call it when it is a class or a function (a factory)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CliError(f"--app must look like MODULE:ATTR, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise CliError(f"cannot import app {spec!r}: {exc}") from None
    try:
        app = getattr(module, attr)
    except AttributeError:
        raise CliError(
            f"cannot import app {spec!r}: module {module_name!r} has no {attr!r}"
        ) from None
    if inspect.isclass(app) or inspect.isfunction(app):
        try:
            app = app()
        except Exception as exc:
            raise CliError(f"app factory {spec!r} failed: {exc}") from None
    return app


def build_helper(config: ServeConfig, app: Any = None, out: Callable[[str], None] = print) -> Any:
    from .server import WebSocketServerHelper

    callbacks = {name: getattr(app, name, None) for name in CALLBACKS}
    if callbacks["authenticate_fn"] is None:
        callbacks["authenticate_fn"] = jwt_authenticator(config, out)
    if callbacks["validate_room_fn"] is None:
        callbacks["validate_room_fn"] = room_policy(config.allow_rooms)
    if (
        config.require_encryption
        and callbacks["handshake_fn"] is None
        and (callbacks["encryption"] is None)
    ):
        from .crypto import EcdhScheme

        callbacks["encryption"] = EcdhScheme()
        out("roomcast: --require-encryption: clients use the built-in ECDH P-256 scheme")
    redis_connection: Any = config.redis_url
    if config.redis_url.startswith(REDIS_SCHEMES):
        from .redis import connection_from_url

        redis_connection = connection_from_url(config.redis_url, ready_timeout=config.redis_timeout)
        out(f"roomcast: connecting to redis at {redis_connection.address}...")
    return WebSocketServerHelper(
        "roomcast",
        config.path,
        redis_connection,
        default_rooms=config.default_rooms,
        auth_timeout=config.auth_timeout,
        heartbeat_interval=config.heartbeat_interval,
        heartbeat_timeout=config.heartbeat_timeout,
        require_encryption=config.require_encryption,
        server_options={"max_payload_length": config.max_payload_length, "backlog": config.backlog},
        subscribe_timeout=config.subscribe_timeout,
        **callbacks,
    )


def demo_secret(config: ServeConfig, out: Callable[[str], None]) -> str:
    """A secret for this run; a demo token signed with it is printed with `out`."""
    secret = secrets.token_urlsafe(32)
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "demo", "iat": now, "exp": now + 86400}
    if config.jwt_audience:
        claims["aud"] = config.jwt_audience
    if config.jwt_issuer:
        claims["iss"] = config.jwt_issuer
    token = jwt.mint(claims, secret, "HS256")
    out("roomcast: no --jwt-secret given: generated a secret for this run")
    out(f"roomcast: demo token (sub=demo, valid 24 h): {token}")
    return secret


def jwt_authenticator(config: ServeConfig, out: Callable[[str], None] = print) -> Any:
    """The built-in authenticator from the --jwt-* flags; without a key, a secret for this run
    and a demo token printed with `out`."""
    given = [
        flag
        for flag, value in (
            ("--jwt-secret", config.jwt_secret),
            ("--jwt-public-key", config.jwt_public_key),
            ("--jwks-url", config.jwks_url),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise CliError(f"give one of {', '.join(given)}, not several")
    options: dict[str, Any] = {
        "audience": config.jwt_audience,
        "issuer": config.jwt_issuer,
        "leeway": config.jwt_leeway,
        "user_claim": config.jwt_user_claim,
    }
    flag = given[0] if given else "--jwt-secret"
    try:
        if config.jwt_public_key is not None:
            key = jwt.load_key_file(config.jwt_public_key)
            return jwt.JwtAuthenticator(public_key=key, **options)
        if config.jwks_url is not None:
            return jwt.JwtAuthenticator(jwks_url=config.jwks_url, **options)
        secret = config.jwt_secret
        if secret is None:
            secret = demo_secret(config, out)
        return jwt.JwtAuthenticator(
            secret, allow_short_secret=config.jwt_allow_short_secret, **options
        )
    except ValueError as exc:
        raise CliError(f"{flag}: {exc}") from None


# A client id (uuid4): its own-id room, on this node or any other, carries its messages.
_CLIENT_ID_SHAPE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


def room_policy(pattern: str) -> Callable[[str, str | None, list[str]], list[str]]:
    """The built-in validate_room_fn: rooms matching the `--allow-rooms` glob, except names
    starting with `ws:` and names shaped like a client id (any client's own room, on any
    node, other than the joiner's own)."""

    def validate_room_fn(client_id: str, user_id: str | None, rooms: list[str]) -> list[str]:
        return [
            room
            for room in rooms
            if fnmatch.fnmatchcase(room, pattern)
            and not room.startswith(INTERNAL_ROOM_PREFIX)
            and (room == client_id or not _CLIENT_ID_SHAPE.fullmatch(room))
        ]

    return validate_room_fn


async def serve(
    config: ServeConfig,
    *,
    shutdown_trigger: Awaitable[Any] | None = None,
    out: Callable[[str], None] = print,
) -> None:
    """Run until `shutdown_trigger` completes (default: SIGINT or SIGTERM), then shut down:
    stop accepting, close every client with 1001, run the callbacks, close the broker."""
    from .workers import connection_budget, raise_file_limit, worker_parent

    parent = worker_parent()
    if parent is not None:
        # Ctrl-C reaches the supervisor too, which sends SIGTERM: one signal, no race with
        # a second one arriving after the loop has closed.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    files = raise_file_limit()
    context = tls_context(config)
    app = load_app(config.app) if config.app else None
    helper = build_helper(config, app, out)
    setup = getattr(app, "setup", None)
    if callable(setup):
        result = setup(helper)
        if inspect.isawaitable(result):
            await result
    listening = False
    extra_servers: list[Any] = []

    async def on_listening(server: Any) -> None:
        nonlocal listening
        listening = True
        extra_servers.extend(await _metrics_servers(config, helper, parent is not None))
        scheme = "wss" if context is not None else "ws"
        out(
            f"roomcast: listening on {scheme}://{config.host}:{server.bound_port}{config.path}"
            f" ({config.redis_url})"
        )
        logging.getLogger("roomcast").info(
            "open file limit %d: room for about %d connections", files, connection_budget(files)
        )

    async def until_stopped() -> None:
        try:
            if shutdown_trigger is not None:
                await shutdown_trigger
            elif parent is None:
                await until_signalled()
            else:
                await _until_terminated_or_orphaned(parent)
        finally:
            out("roomcast: shutting down")
            for extra in extra_servers:
                await extra.stop()

    separate = config.metrics_port is not None
    try:
        await helper.run(
            config.host,
            config.port,
            getattr(app, "http_handler", None),
            shutdown_trigger=until_stopped(),
            on_listening=on_listening,
            ssl=context,
            health=True,
            metrics=not separate,
            reuse_port=parent is not None,
        )
    except BrokerUnavailable as exc:
        raise CliError(str(exc), 1) from None
    except OSError as exc:
        if listening:
            raise
        if exc.errno == errno.EADDRINUSE:
            raise CliError(
                f"cannot listen on {config.host}:{config.port}: address already in use", 1
            ) from None
        raise CliError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", 1
        ) from None


def tls_context(config: ServeConfig) -> Any:
    """The SSLContext the --ssl-* flags ask for, or None; CliError for unusable files."""
    if not config.ssl_certfile:
        return None
    from .tls import TlsError, server_context

    try:
        return server_context(
            config.ssl_certfile,
            config.ssl_keyfile,
            password=config.ssl_keyfile_password,
            ca_certs=config.ssl_ca_certs,
        )
    except TlsError as exc:
        raise CliError(str(exc)) from None


async def _metrics_servers(config: ServeConfig, helper: Any, worker: bool) -> list[Any]:
    """With --metrics-port: a worker feeds the supervisor's metrics port (which serves the
    sum); a single process listens there itself. Returns the servers to stop."""
    if config.metrics_port is None:
        return []
    from .endpoints import Endpoints
    from .http import WebServer
    from .metrics import Exporter

    if worker:
        Exporter(helper).start()
        return []
    metrics = WebServer(config.host, config.metrics_port, Endpoints(helper))
    await metrics.start()
    return [metrics]


async def _until_terminated_or_orphaned(parent: int) -> None:
    """A worker stops on SIGTERM (its supervisor's word) or when its supervisor is gone."""
    terminated = asyncio.ensure_future(until_signalled((signal.SIGTERM,)))
    try:
        while not terminated.done():
            if os.getppid() != parent:
                logging.getLogger("roomcast").error("supervisor %d is gone: shutting down", parent)
                return
            await asyncio.wait((terminated,), timeout=1.0)
    finally:
        terminated.cancel()


async def serve_workers(
    config: ServeConfig, argv: Sequence[str], out: Callable[[str], None]
) -> int:
    """`--workers N`: supervise N worker processes (see roomcast.workers)."""
    from .workers import supervise

    tls_context(config)  # bad files fail here, once, not in every worker
    extra_env: dict[str, str] = {}
    if config.jwt_secret is None and config.jwt_public_key is None and config.jwks_url is None:
        # One secret for every worker, so a token is good on whichever worker takes it.
        extra_env["ROOMCAST_JWT_SECRET"] = demo_secret(
            config, (lambda _line: None) if config.app else out
        )
    scheme = "wss" if config.ssl_certfile else "ws"

    def describe(port: int) -> str:
        return (
            f"roomcast: listening on {scheme}://{config.host}:{port}{config.path} "
            f"({config.workers} workers, {config.redis_url})"
        )

    try:
        return await supervise(
            config.workers,
            argv,
            config.host,
            config.port,
            extra_env,
            out,
            describe,
            config.metrics_port,
        )
    except OSError as exc:
        raise CliError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", 1
        ) from None


# -- roomcast emit ---------------------------------------------------------------------------


async def emit(
    args: argparse.Namespace, environ: dict[str, str], out: Callable[[str], None]
) -> None:
    """Publish one envelope through a WebSocketEmitter; errors become CliError."""
    from .emitter import WebSocketEmitter
    from .redis import connection_from_url

    url = args.redis_url
    if url is None:
        url = environ.get("ROOMCAST_REDIS_URL")
        if not url:
            raise CliError("emit needs --redis-url (or ROOMCAST_REDIS_URL)")
        try:
            url = _emit_redis_url(url)
        except argparse.ArgumentTypeError as exc:
            raise CliError(f"ROOMCAST_REDIS_URL: {exc}") from None
    timeout_ms = args.redis_timeout_ms
    if timeout_ms is None:
        raw = environ.get("ROOMCAST_REDIS_TIMEOUT_MS")
        try:
            timeout_ms = _positive_int(raw) if raw else 5000
        except argparse.ArgumentTypeError as exc:
            raise CliError(f"ROOMCAST_REDIS_TIMEOUT_MS: {exc}") from None
    from .protocol import MISSING

    data: Any = MISSING
    if args.data is not None:
        import orjson

        try:
            data = orjson.loads(args.data)
        except orjson.JSONDecodeError as exc:
            raise CliError(f"--data is not valid JSON: {exc}") from None
    try:
        helper = connection_from_url(url, ready_timeout=timeout_ms / 1000)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    emitter = WebSocketEmitter(helper, "roomcast-emit")
    try:
        await emitter.configure()
        if args.room is not None:
            target = f"room {args.room}"
            count = await emitter.to_room(args.room, args.event, data, args.exclude)
        elif args.user is not None:
            target = f"user {args.user}"
            count = await emitter.to_user(args.user, args.event, data)
        elif args.client is not None:
            target = f"client {args.client}"
            count = await emitter.to_client(args.client, args.event, data)
        else:
            target = "everyone"
            count = await emitter.broadcast(args.event, data, args.exclude)
    except BrokerUnavailable as exc:
        raise CliError(str(exc), 1) from None
    finally:
        await emitter.shutdown()
    out(f"roomcast: emitted {args.event!r} to {target} ({count} redis subscriptions got it)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        parser.print_usage(sys.stderr)
        print("roomcast: error: a command is required: serve, emit or token", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command == "token":
        try:
            token_command(args, dict(os.environ), print)
        except TokenError as exc:
            print(f"roomcast: error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "emit":
        logging.basicConfig(
            level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        try:
            import uvloop

            uvloop.run(emit(args, dict(os.environ), print))
        except CliError as exc:
            print(f"roomcast: error: {exc}", file=sys.stderr)
            return exc.exit_code
        return 0
    try:
        config = config_from_args(args, dict(os.environ))
        from . import log

        log.configure(config.log_level, config.log_format.lower())
        import uvloop

        def printer(line: str) -> None:
            print(line, flush=True)

        from .workers import worker_parent

        if config.workers > 1 and worker_parent() is None:
            return uvloop.run(serve_workers(config, argv, printer))
        uvloop.run(serve(config, out=printer))
    except CliError as exc:
        print(f"roomcast: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:
        print(f"roomcast: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0
