"""asyncio helpers shared by the server and its brokers."""

from __future__ import annotations

import asyncio
from typing import Any


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (when there is one) and wait until it has ended; the cancellation it
    ends with is what was asked for, not an error."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
