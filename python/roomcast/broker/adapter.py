"""`PlainBroker`: a full `Broker` around an object that offers only start, publish and close
(what roomcast accepted as a broker before the protocol declared every ability)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from .protocol import OneProcess, OnMessage


@runtime_checkable
class _Plain(Protocol):
    async def start(self, on_message: OnMessage) -> None: ...

    def publish(self, channel: str, message: bytes) -> None: ...

    async def close(self) -> None: ...


def is_plain_broker(candidate: object) -> bool:
    return isinstance(candidate, _Plain)


class PlainBroker(OneProcess):
    """The abilities the wrapped broker lacks take their one-process meaning: no interest,
    every channel live, always connected, no counters."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def start(self, on_message: OnMessage | None) -> None:
        await self.inner.start(on_message)

    def publish(self, channel: str, message: bytes) -> None:
        self.inner.publish(channel, message)

    async def publish_wait(self, channel: str, message: bytes) -> int:
        self.inner.publish(channel, message)
        return 0

    async def close(self) -> None:
        await self.inner.close()

    def __repr__(self) -> str:
        return f"PlainBroker({self.inner!r})"
