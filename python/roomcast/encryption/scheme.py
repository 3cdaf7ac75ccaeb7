"""What an encryption scheme offers the helper, as protocols (`roomcast.crypto.EcdhScheme`
is both)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class EncryptionScheme(Protocol):
    """What `encryption=` takes.

    Besides the two hooks: `open_inbound(client_id, data) -> bytes` opens the `data` of an
    `encrypted` event from a client (raising ValueError when it cannot), `forget(client_id)`
    drops the client's key when it is gone.
    """

    def handshake_fn(self, client_id: str, user_id: str | None, data: Any) -> Any: ...
    def outbound_transformer(self, client: Any, event: str, data: Any) -> Any: ...
    def open_inbound(self, client_id: str, data: Any) -> bytes: ...
    def forget(self, client_id: str) -> None: ...


@runtime_checkable
class BatchSealer(Protocol):
    """A scheme that seals one message for many clients at once (used for fan-out when the
    scheme's own `outbound_transformer` is the one in use): one wire message per client, or
    None for a client it holds no key for. A `seal_batch` (or transformer) that takes `room`
    and `offset` keywords gets them for a history room's message (SPEC §10), to seal them in."""

    def outbound_transformer(self, client: Any, event: str, data: Any) -> Any: ...
    def seal_batch(self, clients: Sequence[Any], event: str, data: Any) -> list[bytes | None]: ...


def scheme_of(hook: Any) -> EncryptionScheme | None:
    """The scheme a bound hook method belongs to, if it is one (so passing a scheme's
    methods as `handshake_fn` / `outbound_transformer` brings the scheme along)."""
    owner = getattr(hook, "__self__", None)
    return owner if isinstance(owner, EncryptionScheme) else None


def batch_sealer(scheme: EncryptionScheme | None, transformer: Any) -> BatchSealer | None:
    """The scheme when it seals batches and `transformer` is its own (the batch path only
    stands in for the scheme's own transformer)."""
    if isinstance(scheme, BatchSealer) and transformer == scheme.outbound_transformer:
        return scheme
    return None


def takes_position(fn: Callable[..., Any]) -> bool:
    """Whether `fn` can be called with `room=` and `offset=` keywords."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    names = {p.name for p in parameters if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    keywords = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    return keywords or {"room", "offset"} <= names
