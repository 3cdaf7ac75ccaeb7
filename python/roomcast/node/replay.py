"""Paced writes for recoveries (SPEC §10, §12): a replay goes out at the client's pace.

A recovery can give a client far more than the backpressure limit at once (100 messages of
16 KiB against 1 MiB). Queued in one go, fan-out's backpressure skip would drop the tail and
`close_on_backpressure_limit` would close the client, so the replay is written in steps: at
most half the limit sits in the socket's buffer, and the next step waits until it drained
to a quarter of that (the transport's own pause and resume, read by the connection's paced
write, not counted as backpressure). A client that does not drain within the recovery's
timeout is too slow: the replay stops there, and the caller says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from .. import _core
from ..transport.connection import Client

# Bytes queued between two writes to the socket during a replay.
STEP = 64 * 1024


async def send_paced(
    hub: _core.Hub, client: Client, payloads: Sequence[bytes], limit: int, deadline: float
) -> int:
    """Queue `payloads` to the plaintext `client`, in order, each once, never more than half
    of `limit` (the backpressure limit) in its socket's buffer; `deadline` (loop time) bounds
    every wait for the socket to drain. How many were queued: all of them, or fewer when the
    client went away or did not drain in time (the others are not sent)."""
    loop = asyncio.get_running_loop()
    handle = client.handle
    if not client.begin_paced(max(1, limit // 2)):
        return 0
    queued = 0
    try:
        step = 0
        for payload in payloads:
            while client.paced_full() or hub.is_backpressured(handle):
                if not await client.drained(deadline - loop.time()):
                    return queued
                if not client.paced_full():
                    hub.set_backpressured(handle, False)  # drained: the socket says so
            if not hub.send(handle, payload):
                return queued  # gone (or skipped: never past the limit here)
            queued += 1
            step += len(payload)
            if step >= STEP:
                hub.flush_one(handle)  # to the socket: its buffer says when to wait
                step = 0
        hub.flush_one(handle)
        return queued
    finally:
        client.end_paced(limit)


__all__ = ["STEP", "send_paced"]
