"""`roomcast emit`: one message through the WebSocketEmitter, for shell scripts."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..broker import BrokerUnavailable
from .flags import CliError, _emit_redis_url, _positive_int


async def emit(
    args: argparse.Namespace, environ: dict[str, str], out: Callable[[str], None]
) -> None:
    """Publish one envelope through a WebSocketEmitter; errors become CliError."""
    from ..broker.redis.helper import connection_from_url
    from ..emitter import WebSocketEmitter

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
    from ..protocol.messages import MISSING

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
    try:
        emitter = WebSocketEmitter(helper, "roomcast-emit", **history_settings(args, environ))
    except ValueError as exc:
        raise CliError(str(exc)) from None
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


def history_settings(args: argparse.Namespace, environ: dict[str, str]) -> dict[str, Any]:
    """The emitter's history settings: flags first, then ROOMCAST_HISTORY_*."""
    settings: dict[str, Any] = {}
    for name, parse in (("rooms", str), ("size", _positive_int), ("ttl_ms", _positive_int)):
        value = getattr(args, f"history_{name}")
        variable = f"ROOMCAST_HISTORY_{name.upper()}"
        if value is None and environ.get(variable):
            try:
                value = parse(environ[variable])
            except argparse.ArgumentTypeError as exc:
                raise CliError(f"{variable}: {exc}") from None
        if value is not None:
            if name == "ttl_ms":
                settings["history_ttl"] = value / 1000
            else:
                settings[f"history_{name}"] = value
    return settings
