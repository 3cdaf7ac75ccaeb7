"""`roomcast serve` and `roomcast emit`.

`serve`: flags map one-to-one onto ServeConfig, ServeConfig onto a running server. `emit`: one
message through the WebSocketEmitter, for shell scripts. `token`: a JWT to try a server with.

Every flag can also come from an environment variable `ROOMCAST_<FLAG>` (dashes become
underscores); a flag on the command line wins. Durations are in milliseconds on the command
line, as in the original, and in seconds everywhere else.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from .emit import emit
from .flags import CliError, ServeConfig, build_parser, config_from_args
from .serve import (
    CALLBACKS,
    build_helper,
    jwt_authenticator,
    load_app,
    room_policy,
    serve,
    serve_workers,
    tls_context,
)
from .token import TokenError, token_command

__all__ = [
    "CALLBACKS",
    "CliError",
    "ServeConfig",
    "build_helper",
    "build_parser",
    "config_from_args",
    "emit",
    "jwt_authenticator",
    "load_app",
    "main",
    "room_policy",
    "serve",
    "serve_workers",
    "tls_context",
]


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
        from .. import log

        log.configure(config.log_level, config.log_format.lower())
        import uvloop

        def printer(line: str) -> None:
            print(line, flush=True)

        from ..serving.workers import worker_parent

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
