"""`roomcast serve`: the application object, the helper from a `ServeConfig`, and the run
(one process, or a supervisor of `--workers N`)."""

from __future__ import annotations

import asyncio
import contextlib
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
from pathlib import Path
from typing import Any

from ..broker import REDIS_SCHEMES, BrokerUnavailable
from ..node import jwt
from ..node.limits import CLIENT_ID_SHAPE
from ..protocol.constants import INTERNAL_ROOM_PREFIX
from ..serving.runner import SHUTDOWN_SIGNALS, catching
from .flags import CliError, ServeConfig

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
    from ..node.server import WebSocketServerHelper

    callbacks: dict[str, Any] = {name: getattr(app, name, None) for name in CALLBACKS}
    if callbacks["authenticate_fn"] is None:
        callbacks["authenticate_fn"] = jwt_authenticator(config, out)
    if callbacks["validate_room_fn"] is None:
        callbacks["validate_room_fn"] = room_policy(
            config.allow_rooms, private_client_rooms=not config.public_client_rooms
        )
    if (
        config.require_encryption
        and callbacks["handshake_fn"] is None
        and (callbacks["encryption"] is None)
    ):
        from ..encryption.ecdh import EcdhScheme

        callbacks["encryption"] = EcdhScheme()
        out("roomcast: --require-encryption: clients use the built-in ECDH P-256 scheme")
    redis_connection: Any = config.redis_url
    if config.redis_url.startswith(REDIS_SCHEMES):
        from ..broker.redis.helper import connection_from_url

        redis_connection = connection_from_url(config.redis_url, ready_timeout=config.redis_timeout)
        out(f"roomcast: connecting to redis at {redis_connection.address}...")
    server_config = config.server_config()
    helper = WebSocketServerHelper(
        server_config.identifier,
        server_config.path,
        redis_connection,
        config=server_config,
        **callbacks,
    )
    helper.validate_presence_fn = getattr(app, "validate_presence_fn", None)
    return helper


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
    given = _jwt_keys_given(config)
    options: dict[str, Any] = {
        "audience": config.jwt_audience,
        "issuer": config.jwt_issuer,
        "leeway": config.jwt_leeway,
        "user_claim": config.jwt_user_claim,
        "require_exp": config.jwt_require_exp,
    }
    flag = given[0] if given else "--jwt-secret"
    try:
        if config.jwt_public_key is not None:
            key = jwt.load_key_file(config.jwt_public_key)
            return jwt.JwtAuthenticator(public_key=key, **options)
        if config.jwks_url is not None:
            if config.jwks_url.lower().startswith("http://") and not config.jwks_allow_http:
                raise CliError(
                    f"--jwks-url: plain http:// refused: {config.jwks_url!r} (anyone on the way "
                    "could hand out their own keys; use https://, or --jwks-allow-http)"
                )
            return jwt.JwtAuthenticator(
                jwks_url=config.jwks_url, jwks_allow_http=config.jwks_allow_http, **options
            )
        secret: str | bytes | None = config.jwt_secret
        if config.jwt_secret_file is not None:
            secret = read_secret_file(config.jwt_secret_file)
        if secret is None:
            secret = demo_secret(config, out)
        return jwt.JwtAuthenticator(
            secret, allow_short_secret=config.jwt_allow_short_secret, **options
        )
    except ValueError as exc:
        raise CliError(f"{flag}: {exc}") from None


def _jwt_keys_given(config: ServeConfig) -> list[str]:
    """The key flags given (at most one may be); CliError when several are."""
    given = [
        flag
        for flag, value in (
            ("--jwt-secret", config.jwt_secret),
            ("--jwt-secret-file", config.jwt_secret_file),
            ("--jwt-public-key", config.jwt_public_key),
            ("--jwks-url", config.jwks_url),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise CliError(f"give one of {', '.join(given)}, not several")
    return given


def read_secret_file(path: str) -> bytes:
    """The secret in `path`, without one trailing newline; ValueError naming the file."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    secret = raw.removesuffix(b"\n").removesuffix(b"\r")
    if not secret:
        raise ValueError(f"{path!r} is empty")
    return secret


def room_policy(
    pattern: str, private_client_rooms: bool = True
) -> Callable[[str, str | None, list[str]], list[str]]:
    """The built-in validate_room_fn: rooms matching the `--allow-rooms` glob, except names
    starting with `ws:` and (unless `--public-client-rooms`) names shaped like a client id
    (any client's own room, on any node, other than the joiner's own; the helper leaves
    those out before asking, this says so for a policy used on its own)."""

    def validate_room_fn(client_id: str, user_id: str | None, rooms: list[str]) -> list[str]:
        return [
            room
            for room in rooms
            if fnmatch.fnmatchcase(room, pattern)
            and not room.startswith(INTERNAL_ROOM_PREFIX)
            and (
                not private_client_rooms or room == client_id or not CLIENT_ID_SHAPE.fullmatch(room)
            )
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
    from ..serving.workers import worker_parent

    parent = worker_parent()
    if parent is not None:
        # Ctrl-C reaches the supervisor too, which sends SIGTERM: one signal, no race with
        # a second one arriving after the loop has closed.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The handlers from the start: a SIGTERM while starting, or right after the listening
    # line, still shuts down gracefully instead of killing the process.
    signals = (signal.SIGTERM,) if parent is not None else SHUTDOWN_SIGNALS
    with contextlib.ExitStack() as stack:
        signalled = stack.enter_context(catching(signals)) if shutdown_trigger is None else None
        await _serve(config, out, parent, shutdown_trigger, signalled)


async def _serve(
    config: ServeConfig,
    out: Callable[[str], None],
    parent: int | None,
    shutdown_trigger: Awaitable[Any] | None,
    signalled: asyncio.Event | None,
) -> None:
    from ..serving.workers import connection_budget, raise_file_limit

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
                assert signalled is not None
                await signalled.wait()
            else:
                assert signalled is not None
                await _until_terminated_or_orphaned(parent, signalled)
        finally:
            out("roomcast: shutting down")
            for extra in extra_servers:
                await extra.stop()

    separate = config.metrics_port is not None
    from ..serving.api import Api

    # Always there, so /api/ answers 404 without a key rather than reaching the app's handler.
    api = Api(helper, config.api_key, body_limit=config.api_body_limit)
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
            api=api,
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
    from ..transport.tls import TlsError, server_context

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
    from ..serving.endpoints import Endpoints
    from ..serving.metrics import Exporter
    from ..transport.http import WebServer

    if worker:
        Exporter(helper).start()
        return []
    metrics = WebServer(config.host, config.metrics_port, Endpoints(helper))
    await metrics.start()
    return [metrics]


async def _until_terminated_or_orphaned(parent: int, signalled: asyncio.Event) -> None:
    """A worker stops on SIGTERM (its supervisor's word, `signalled`) or when its
    supervisor is gone."""
    terminated = asyncio.ensure_future(signalled.wait())
    try:
        while not terminated.done():
            if os.getppid() != parent:
                logging.getLogger("roomcast").error("supervisor %d is gone: shutting down", parent)
                return
            await asyncio.wait((terminated,), timeout=1.0)
    finally:
        terminated.cancel()


def without_flag(argv: Sequence[str], flag: str) -> list[str]:
    """`argv` without `flag VALUE` and `flag=VALUE` (argparse takes no abbreviation of
    --jwt-secret: every one is also a prefix of --jwt-secret-file)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


async def serve_workers(
    config: ServeConfig, argv: Sequence[str], out: Callable[[str], None]
) -> int:
    """`--workers N`: supervise N worker processes (see roomcast.workers)."""
    from ..serving.workers import supervise

    tls_context(config)  # bad files fail here, once, not in every worker
    extra_env: dict[str, str] = {}
    if not config.app and _jwt_keys_given(config):
        jwt_authenticator(config)  # and bad keys too
    if config.jwt_secret is not None:
        # Never on a worker's command line (which any local user can read): in its
        # environment, which only its user can.
        argv = without_flag(argv, "--jwt-secret")
        extra_env["ROOMCAST_JWT_SECRET"] = config.jwt_secret
    elif not _jwt_keys_given(config):
        # One secret for every worker, so a token is good on whichever worker takes it.
        extra_env["ROOMCAST_JWT_SECRET"] = demo_secret(
            config, (lambda _line: None) if config.app else out
        )
    if config.api_key is not None and config.api_key_file is None:
        # Workers read it from their environment, never from their command line.
        extra_env["ROOMCAST_API_KEY"] = config.api_key
        argv = without_flag(argv, "--api-key")
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
