"""`helper.run()`: serve until told to stop, then shut down gracefully and return."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket

import pytest
from roomcast import WebSocketServerHelper
from roomcast.serving.runner import CPYTHON_GC_THRESHOLDS, GC_THRESHOLDS
from support import authed, closed_with, eventually, run, token_auth


def helper(**kwargs) -> WebSocketServerHelper:
    kwargs.setdefault("authenticate_fn", token_auth)
    return WebSocketServerHelper("run-test", "/ws", "memory://", **kwargs)


async def started(h: WebSocketServerHelper, **kwargs) -> tuple[asyncio.Future, str]:
    """`h.run(...)` as a task, once it listens, and the URL it listens on."""
    ports: list[int] = []
    task = asyncio.ensure_future(
        h.run("127.0.0.1", 0, on_listening=lambda s: ports.append(s.bound_port), **kwargs)
    )
    await eventually(lambda: bool(ports))
    return task, f"ws://127.0.0.1:{ports[0]}/ws"


def test_run_returns_when_the_trigger_completes_and_clients_get_1001():
    disconnected: list[str] = []

    async def body():
        stop = asyncio.Event()
        h = helper(client_disconnected_fn=lambda client_id, user_id: disconnected.append(user_id))
        task, url = await started(h, shutdown_trigger=stop.wait())
        ws, _ = await authed(url, "user:ann")
        stop.set()
        code, reason, _ = await closed_with(ws)
        assert (code, reason) == (1001, "Server shutting down")
        await asyncio.wait_for(task, 5)
        assert disconnected == ["ann"]

    run(body())


def test_run_stops_on_sigterm_and_sigint_and_restores_the_handlers():
    async def body():
        for sig in (signal.SIGTERM, signal.SIGINT):
            before = signal.getsignal(sig)
            task, url = await started(helper())
            ws, _ = await authed(url, "user:bo")
            os.kill(os.getpid(), sig)
            code, _, _ = await closed_with(ws)
            assert code == 1001
            await asyncio.wait_for(task, 5)
            assert signal.getsignal(sig) == before

    run(body())


def test_a_cancelled_run_still_closes_clients_with_1001():
    async def body():
        task, url = await started(helper(), shutdown_trigger=asyncio.Event().wait())
        ws, _ = await authed(url, "user:cy")
        task.cancel()
        code, _, _ = await closed_with(ws)
        assert code == 1001
        with pytest.raises(asyncio.CancelledError):
            await task

    run(body())


def test_a_start_up_error_propagates_after_the_helper_was_shut_down():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        h = helper()

        async def trigger() -> None:
            raise AssertionError("never awaited")

        async def body():
            with pytest.raises(OSError):
                await h.run("127.0.0.1", port, shutdown_trigger=trigger())

        run(body())  # filterwarnings=error: an un-awaited trigger would fail here
    assert h.shut_down


def test_invalid_default_rooms_are_refused_at_construction():
    for room in ("", "ws:x", "x" * 257):
        with pytest.raises(ValueError, match="invalid default room"):
            helper(default_rooms=["ok", room])
    assert helper(default_rooms=["x" * 256]).default_rooms == ["x" * 256]


def test_run_tunes_the_garbage_collector_once_listening_unless_the_application_did():
    """Once listening, what is alive is frozen out of the collector's sight and the
    thresholds become GC_THRESHOLDS; an application's own thresholds are left alone."""

    async def body():
        stop = asyncio.Event()
        task, url = await started(helper(), shutdown_trigger=stop.wait())
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 1000  # modules, the helper, the loop...
        ws, _ = await authed(url, "user:ann")  # serves as before
        stop.set()
        await asyncio.wait_for(task, 5)
        await ws.close()

        gc.unfreeze()
        gc.set_threshold(5000, 10, 10)
        stop = asyncio.Event()
        task, url = await started(helper(), shutdown_trigger=stop.wait())
        assert gc.get_threshold() == (5000, 10, 10)
        assert gc.get_freeze_count() == 0
        stop.set()
        await asyncio.wait_for(task, 5)

    assert gc.get_threshold() == CPYTHON_GC_THRESHOLDS
    try:
        run(body())
    finally:
        gc.unfreeze()
        gc.set_threshold(*CPYTHON_GC_THRESHOLDS)
