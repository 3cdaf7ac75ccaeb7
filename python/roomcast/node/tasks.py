"""The node's loop, the tasks it owns (cancelled at shutdown), and the application's callbacks
called so that what they raise is logged, never raised into the caller."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger("roomcast")

Callback = Callable[..., Any]


class Tasks:
    """One helper's loop (known once it is configured, or from the first call made in it)
    and background tasks."""

    __slots__ = ("_tasks", "loop")

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Future[Any]] = set()

    def start(self) -> asyncio.AbstractEventLoop:
        """At configure: the running loop is the helper's from now on."""
        loop = self.loop = asyncio.get_running_loop()
        return loop

    def schedule(self, callback: Callable[[], None]) -> None:
        """`callback()` at the next loop iteration."""
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        loop.call_soon(callback)

    def schedule_later(self, delay: float, callback: Callable[[], None]) -> None:
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        loop.call_later(delay, callback)

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run `coro` as a task of the helper's (its failure is logged)."""
        assert self.loop is not None
        task = asyncio.ensure_future(coro, loop=self.loop)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task failed", exc_info=task.exception())

    def invoke(self, name: str, fn: Callback, **kwargs: Any) -> None:
        """Call an application callback; log (never raise) what it raises, sync or async."""
        try:
            result = fn(**kwargs)
        except Exception:
            logger.exception("%s raised", name)
            return
        if inspect.isawaitable(result):
            self.spawn(_guard(name, result))

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()


async def _guard(name: str, awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:
        logger.exception("%s raised", name)
