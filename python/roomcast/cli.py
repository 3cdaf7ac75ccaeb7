"""`roomcast serve` and `roomcast emit`.

`serve`: flags map one-to-one onto ServeConfig, ServeConfig onto a running server. `emit`: one
message through the WebSocketEmitter, for shell scripts.

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
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from . import jwt
from .broker import REDIS_SCHEMES, BrokerUnavailable
from .constants import LISTEN_BACKLOG, SUBSCRIBE_TIMEOUT, WebSocketDefaults

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
    allow_rooms: str = "*"
    log_level: str = "info"


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
    ("--default-rooms", _rooms, "comma-separated rooms joined after authentication ('' for none)"),
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
    ("--jwt-secret", str, "HS256 secret of the built-in authenticator"),
    ("--allow-rooms", str, "glob of room names clients may join (default '*')"),
    ("--log-level", str, "debug, info, warning or error (default info)"),
]


def _env_name(flag: str) -> str:
    return "ROOMCAST_" + flag.lstrip("-").replace("-", "_").upper()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="roomcast", description="Real-time WebSocket messaging server.")
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
    if config.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise CliError(f"unknown log level: {config.log_level}")
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
        secret = config.jwt_secret
        if not secret:
            secret = secrets.token_urlsafe(32)
            now = int(time.time())
            token = jwt.sign({"sub": "demo", "iat": now, "exp": now + 86400}, secret)
            out("roomcast: no --jwt-secret given: generated a secret for this run")
            out(f"roomcast: demo token (sub=demo, valid 24 h): {token}")
        callbacks["authenticate_fn"] = jwt.JwtAuthenticator(secret)
    if callbacks["validate_room_fn"] is None:
        pattern = config.allow_rooms

        def validate_room_fn(client_id: str, user_id: str | None, rooms: list[str]) -> list[str]:
            return [room for room in rooms if fnmatch.fnmatchcase(room, pattern)]

        callbacks["validate_room_fn"] = validate_room_fn
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


async def serve(
    config: ServeConfig,
    *,
    shutdown_trigger: Awaitable[Any] | None = None,
    out: Callable[[str], None] = print,
) -> None:
    """Run until `shutdown_trigger` completes (default: SIGINT or SIGTERM), then shut down:
    stop accepting, close every client with 1001, run the callbacks, close the broker."""
    app = load_app(config.app) if config.app else None
    helper = build_helper(config, app, out)
    setup = getattr(app, "setup", None)
    if callable(setup):
        result = setup(helper)
        if inspect.isawaitable(result):
            await result
    try:
        server = await helper.serve(config.host, config.port, getattr(app, "http_handler", None))
    except BrokerUnavailable as exc:
        await helper.shutdown()
        raise CliError(str(exc), 1) from None
    except OSError as exc:
        await helper.shutdown()
        if exc.errno == errno.EADDRINUSE:
            raise CliError(
                f"cannot listen on {config.host}:{config.port}: address already in use", 1
            ) from None
        raise CliError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", 1
        ) from None
    url = f"ws://{config.host}:{server.bound_port}{config.path}"
    out(f"roomcast: listening on {url} ({config.redis_url})")
    loop = asyncio.get_running_loop()
    if shutdown_trigger is None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        shutdown_trigger = stop.wait()
    try:
        await shutdown_trigger
    finally:
        out("roomcast: shutting down")
        await server.stop()
        await helper.shutdown()


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
    args = parser.parse_args(argv)
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
        logging.basicConfig(
            level=config.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        logging.getLogger("roomcast.picows").setLevel(logging.WARNING)
        import uvloop

        def printer(line: str) -> None:
            print(line, flush=True)

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
