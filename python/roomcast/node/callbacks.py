"""The keywords each application callback is called with, and a check made at construction.

Every callback is called with keyword arguments only, so a callback's parameter names matter:
`lambda cid, uid, rooms: rooms` as `validate_room_fn` would fail on every join. The helper
checks each callback's signature when it is built and raises a one-line TypeError instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

# name -> the keywords it is called with (README, Configuration).
CALLBACK_KEYWORDS: dict[str, tuple[str, ...]] = {
    "authenticate_fn": ("data",),
    "validate_room_fn": ("client_id", "user_id", "rooms"),
    "client_connected_fn": ("client_id", "user_id", "metadata"),
    "client_disconnected_fn": ("client_id", "user_id"),
    "message_handler": ("client_id", "user_id", "message"),
    "outbound_transformer": ("client", "event", "data"),
    "handshake_fn": ("client_id", "user_id", "data"),
}


def _describe(signature: inspect.Signature) -> str:
    names = []
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            names.append(f"*{parameter.name}")
        elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
            names.append(f"**{parameter.name}")
        elif parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            names.append(f"{parameter.name} (positional-only)")
        else:
            names.append(parameter.name)
    return "(" + ", ".join(names) + ")"


def check_callback(name: str, fn: Callable[..., Any], keywords: tuple[str, ...]) -> None:
    """Raise TypeError unless `fn(**{k: ... for k in keywords})` would bind.

    Functions, lambdas, coroutine functions, bound methods, functools.partial and callable
    objects are all checked; a callable whose signature Python cannot read is accepted.
    """
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(**dict.fromkeys(keywords))
    except TypeError:
        raise TypeError(
            f"{name} has parameters {_describe(signature)} but is called with keywords "
            f"({', '.join(keywords)})"
        ) from None


def check_callbacks(callbacks: dict[str, Callable[..., Any] | None]) -> None:
    """Check every given (non-None) callback named in CALLBACK_KEYWORDS."""
    for name, fn in callbacks.items():
        if fn is not None:
            check_callback(name, fn, CALLBACK_KEYWORDS[name])
