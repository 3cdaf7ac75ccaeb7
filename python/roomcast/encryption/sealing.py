"""Encrypted delivery: the queue of messages for encrypted clients and the task that seals them.

The hub's plaintext fan-out skips encrypted clients; the helper queues each such message
here with its recipients. Deliveries run one after another in one task, so every client
gets its messages in order, and the task gives the loop back often, so a fan-out to many
encrypted clients never stalls other connections for long.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from .._core import Hub
from ..log import client_extra
from ..protocol.messages import MISSING, encode, encode_at
from ..protocol.session import State
from ..transport.connection import Client
from .scheme import BatchSealer, EncryptionScheme, batch_sealer, takes_position

logger = logging.getLogger("roomcast")

_AUTHENTICATED = State.AUTHENTICATED

# Encrypted delivery gives the event loop back after this much work (seconds) or this many
# recipients (whose writes the next flush makes).
ENCRYPTED_SLICE = 0.002
ENCRYPTED_SLICE_CLIENTS = 32
# Bytes of plaintext sealed per call of a scheme's `seal_batch` (many keys, one message).
ENCRYPTED_CHUNK_BYTES = 256 * 1024

Transformer = Callable[..., Any]
# A history room's message's stream position (room, offset), sealed with it; None for others.
Position = tuple[str, int] | None


class Sealer:
    """The encrypted delivery queue of one helper. `spawn` runs a coroutine as a task the
    helper owns (cancelled at shutdown)."""

    def __init__(
        self,
        hub: Hub,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        scheme: EncryptionScheme | None,
        transformer: Transformer | None,
        batch_limit: int,
    ) -> None:
        self._hub = hub
        self._spawn = spawn
        self._scheme = scheme
        self._batch: BatchSealer | None = None
        self._transformer: Transformer | None = None
        # Whether the transformer / batch sealer take `room` and `offset` keywords.
        self._positioned = self._batch_positioned = False
        self.transformer = transformer
        self.batch_limit = batch_limit
        self._queue: deque[tuple[list[Client], str, Any, Position]] = deque()
        self._running = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def transformer(self) -> Transformer | None:
        return self._transformer

    @transformer.setter
    def transformer(self, transformer: Transformer | None) -> None:
        self._transformer = transformer
        self._batch = batch_sealer(self._scheme, transformer)
        self._positioned = transformer is not None and takes_position(transformer)
        self._batch_positioned = self._batch is not None and takes_position(self._batch.seal_batch)

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being sealed."""
        return not self._running

    async def wait_idle(self) -> None:
        """Return once every queued delivery has been sealed and handed to the hub."""
        await self._idle.wait()

    def deliver(
        self, clients: list[Client], event: str, data: Any, position: Position = None
    ) -> None:
        """Queue one message for `clients` (encrypted ones); `position`: a history room's
        message's (room, offset), sealed with it (SPEC §10)."""
        if self._transformer is None:
            logger.warning("encrypted clients skipped for %r: no outbound_transformer", event)
            return
        if not clients:
            return
        self._queue.append((clients, event, data, position))
        if not self._running:
            self._running = True
            self._idle.clear()
            self._spawn(self._run())

    def clear(self) -> None:
        self._queue.clear()

    async def _run(self) -> None:
        try:
            while self._queue:
                clients, event, data, position = self._queue.popleft()
                transformer = self._transformer
                batch = self._batch
                try:
                    if batch is not None:
                        await self._seal_batched(batch, clients, event, data, position)
                    elif transformer is not None:
                        await self._transform_each(transformer, clients, event, data, position)
                except Exception:
                    logger.exception("encrypted delivery of %r failed", event)
        finally:
            self._running = False
            self._idle.set()

    async def _seal_batched(
        self,
        batch: BatchSealer,
        clients: list[Client],
        event: str,
        data: Any,
        position: Position = None,
    ) -> None:
        """The scheme seals chunks of clients at once; the loop gets control between chunks
        (and flushes what the previous chunk queued)."""
        size = len(encode(event, data))
        at = {} if position is None or not self._batch_positioned else _keywords(position)
        chunk = max(1, min(ENCRYPTED_SLICE_CLIENTS, ENCRYPTED_CHUNK_BYTES // max(size, 1)))
        hub = self._hub
        for first in range(0, len(clients), chunk):
            if first:
                await asyncio.sleep(0)
            part = [c for c in clients[first : first + chunk] if c.state is _AUTHENTICATED]
            try:
                payloads = batch.seal_batch(part, event, data, **at)
            except Exception:
                logger.exception("seal_batch raised for %r", event)
                continue
            if len(payloads) != len(part):
                logger.error("seal_batch gave %d messages for %d clients", len(payloads), len(part))
                continue
            for client, payload in zip(part, payloads, strict=True):
                if payload is not None:
                    hub.send(client.handle, payload)
                else:
                    logger.debug("no key for %s: %r dropped", client.id, event)

    async def _transform_each(
        self,
        transformer: Transformer,
        clients: list[Client],
        event: str,
        data: Any,
        position: Position = None,
    ) -> None:
        """outbound_transformer per client, at most `batch_limit` awaiting at once (with
        `room` and `offset` for a history room's message when it takes them)."""
        at = {} if position is None or not self._positioned else _keywords(position)
        in_flight: set[asyncio.Future[None]] = set()
        started = time.perf_counter()
        done = 0
        try:
            for client in clients:
                done += 1
                if (
                    done > ENCRYPTED_SLICE_CLIENTS
                    or time.perf_counter() - started > ENCRYPTED_SLICE
                ):
                    await asyncio.sleep(0)
                    started = time.perf_counter()
                    done = 1
                if client.state is not _AUTHENTICATED:
                    continue
                try:
                    result = transformer(client=client, event=event, data=data, **at)
                except Exception:
                    logger.exception(
                        "outbound_transformer raised for %s", client.id, extra=client_extra(client)
                    )
                    continue
                if not inspect.isawaitable(result):
                    self._send_transformed(client, event, result)
                    continue
                in_flight.add(asyncio.ensure_future(self._finish_transform(client, event, result)))
                if len(in_flight) >= self.batch_limit:
                    _, in_flight = await asyncio.wait(
                        in_flight, return_when=asyncio.FIRST_COMPLETED
                    )
                    started = time.perf_counter()
                    done = 0
            if in_flight:
                await asyncio.wait(in_flight)
        except asyncio.CancelledError:
            for task in in_flight:
                task.cancel()
            raise

    async def _finish_transform(self, client: Client, event: str, result: Awaitable[Any]) -> None:
        try:
            transformed = await result
        except Exception:
            logger.exception(
                "outbound_transformer raised for %s", client.id, extra=client_extra(client)
            )
            return
        self._send_transformed(client, event, transformed)

    def _send_transformed(self, client: Client, event: str, result: Any) -> None:
        if not isinstance(result, Mapping) or "event" not in result:
            # Never fall back to plaintext for an encrypted client.
            logger.warning(
                "outbound_transformer gave nothing for %s (%r): dropped", client.id, event
            )
            return
        if client.state is _AUTHENTICATED:
            data, room = result.get("data", MISSING), result.get("room")
            message = encode_at(result["event"], data, room, result.get("offset"))
            self._hub.send(client.handle, message)


def _keywords(position: tuple[str, int]) -> dict[str, Any]:
    return {"room": position[0], "offset": position[1]}
