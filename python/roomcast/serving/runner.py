"""Run a helper until it is told to stop: serve, wait for SIGINT/SIGTERM, shut down.

The one way to run a server, used by `WebSocketServerHelper.run` and by `roomcast serve`:
stop accepting, close every client with 1001 "Server shutting down" and run the disconnect
callbacks, close the broker, then return.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator
from ssl import SSLContext
from typing import Any, Protocol, TypedDict, Unpack

from ..transport.http import HttpHandler, WebServer
from ..transport.httpapi import Api

logger = logging.getLogger("roomcast")

SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)

CPYTHON_GC_THRESHOLDS = (700, 10, 10)
GC_THRESHOLDS = (20_000, 20, 10)
"""What `tune_gc` sets: the youngest generation is collected every 20,000 allocations (not
700) and the middle one every 20 of those: a connection's short-lived objects (tasks,
futures, frames) are freed by reference counting long before, and the full collections that
walk every connection's objects (tens of ms with thousands of clients) come ~57 times less
often. The oldest generation still runs only once it grew by a quarter (CPython's rule)."""


def tune_gc() -> bool:
    """Garbage collection for a long-running server, once it is up: what is alive then
    (modules, configuration, the application) is moved out of the collector's sight for good
    (`gc.freeze`), and the thresholds become `GC_THRESHOLDS`. Left alone (False) when the
    application set thresholds of its own, or disabled the collector."""
    if not gc.isenabled() or gc.get_threshold() != CPYTHON_GC_THRESHOLDS:
        return False
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return True


class ServeOptions(TypedDict, total=False):
    """The options of `WebSocketServerHelper.serve` that `run` passes on."""

    ssl: SSLContext | None
    health: bool
    metrics: bool
    reuse_port: bool
    api: Api | None


class Servable(Protocol):
    """What `run` drives (a `WebSocketServerHelper`)."""

    @property
    def identifier(self) -> str: ...
    def get_path(self) -> str: ...
    async def serve(
        self,
        host: str = ...,
        port: int = ...,
        http_handler: HttpHandler | None = None,
        *,
        ssl: SSLContext | None = None,
        health: bool = False,
        metrics: bool = False,
        reuse_port: bool = False,
        api: Api | None = None,
    ) -> WebServer: ...
    async def shutdown(self) -> None: ...


@contextlib.contextmanager
def catching(signals: tuple[signal.Signals, ...] = SHUTDOWN_SIGNALS) -> Iterator[asyncio.Event]:
    """An event set when one of `signals` arrives, while the block runs; the handlers are
    removed afterwards. Outside the main thread (where Python cannot install handlers) the
    event is never set: stop by cancelling."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for sig in signals:
        try:
            loop.add_signal_handler(sig, stop.set)
        except (ValueError, RuntimeError, NotImplementedError):
            logger.debug("cannot handle %s here: stop by cancelling", sig.name)
            continue
        installed.append(sig)
    try:
        yield stop
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def until_signalled(signals: tuple[signal.Signals, ...] = SHUTDOWN_SIGNALS) -> None:
    """Return when one of `signals` arrives; their handlers are restored afterwards.

    Outside the main thread (where Python cannot install handlers) it waits until cancelled.
    """
    with catching(signals) as stop:
        await stop.wait()


async def run(
    helper: Servable,
    host: str = "127.0.0.1",
    port: int = 8080,
    http_handler: HttpHandler | None = None,
    *,
    shutdown_trigger: Awaitable[Any] | None = None,
    on_listening: Callable[[WebServer], Any] | None = None,
    **serve_options: Unpack[ServeOptions],
) -> None:
    """Serve `helper` on host:port until `shutdown_trigger` completes (default: SIGINT or
    SIGTERM) or the calling task is cancelled; then shut down gracefully and return.
    `serve_options` go to `helper.serve` (`ssl`, `health`, `metrics`, `reuse_port`, `api`);
    `on_listening(server)` runs once the port is bound (awaited if it is a coroutine).

    Errors of start-up (BrokerUnavailable, OSError for a port in use) propagate after the
    helper was shut down. Once listening, the garbage collector is tuned for a server
    (`tune_gc`), unless the application tuned it itself.
    """
    with contextlib.ExitStack() as stack:
        # Handlers first: a SIGTERM that arrives while starting, or right after the port is
        # announced, still shuts down gracefully instead of killing the process.
        signalled = stack.enter_context(catching()) if shutdown_trigger is None else None
        try:
            server = await helper.serve(host, port, http_handler, **serve_options)
        except BaseException:
            if inspect.iscoroutine(shutdown_trigger):
                shutdown_trigger.close()  # never awaited: say so quietly
            await helper.shutdown()
            raise
        try:
            tune_gc()
            logger.info(
                "%s listening on ws://%s:%d%s",
                helper.identifier,
                host,
                server.bound_port,
                helper.get_path(),
            )
            if on_listening is not None:
                result = on_listening(server)
                if inspect.isawaitable(result):
                    await result
            if signalled is not None:
                await signalled.wait()
            else:
                assert shutdown_trigger is not None
                await shutdown_trigger
        finally:
            logger.info("%s shutting down", helper.identifier)
            await server.stop()
            await helper.shutdown()
