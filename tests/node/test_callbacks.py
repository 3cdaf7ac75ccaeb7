"""Callbacks are checked against the keywords they are called with when the helper is built."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from roomcast import WebSocketServerHelper
from roomcast.crypto import EcdhScheme
from roomcast.node.callbacks import CALLBACK_KEYWORDS
from support import allow_all, authed, recv, run, running, send


def build(**callbacks: Any) -> WebSocketServerHelper:
    callbacks.setdefault("authenticate_fn", lambda data: {})
    return WebSocketServerHelper("t", "/ws", "memory://", **callbacks)


MISMATCHES = [
    (
        "authenticate_fn",
        lambda token: None,
        "authenticate_fn has parameters (token) but is called with keywords (data)",
    ),
    (
        "validate_room_fn",
        lambda cid, uid, rooms: rooms,
        "validate_room_fn has parameters (cid, uid, rooms) but is called with keywords "
        "(client_id, user_id, rooms)",
    ),
    (
        "client_connected_fn",
        lambda client_id, user_id: None,
        "client_connected_fn has parameters (client_id, user_id) but is called with keywords "
        "(client_id, user_id, metadata)",
    ),
    (
        "client_disconnected_fn",
        lambda client_id, user_id, reason: None,
        "client_disconnected_fn has parameters (client_id, user_id, reason) but is called with "
        "keywords (client_id, user_id)",
    ),
    (
        "message_handler",
        lambda client_id, user_id, msg: None,
        "message_handler has parameters (client_id, user_id, msg) but is called with keywords "
        "(client_id, user_id, message)",
    ),
    (
        "outbound_transformer",
        lambda client_id, event, data: None,
        "outbound_transformer has parameters (client_id, event, data) but is called with "
        "keywords (client, event, data)",
    ),
    (
        "handshake_fn",
        lambda client_id, user_id, public_key: None,
        "handshake_fn has parameters (client_id, user_id, public_key) but is called with "
        "keywords (client_id, user_id, data)",
    ),
]


@pytest.mark.parametrize(("name", "fn", "message"), MISMATCHES, ids=[m[0] for m in MISMATCHES])
def test_a_mismatched_callback_raises_one_line_naming_what_it_has_and_needs(name, fn, message):
    kwargs = {name: fn}
    if name == "handshake_fn":
        kwargs["outbound_transformer"] = lambda client, event, data: None
    with pytest.raises(TypeError) as info:
        build(**kwargs)
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_every_callback_of_the_table_is_covered():
    assert {m[0] for m in MISMATCHES} == set(CALLBACK_KEYWORDS)


def test_positional_only_and_starred_parameters_are_named_in_the_message():
    def positional(data, /):
        return {}

    with pytest.raises(TypeError, match=r"parameters \(data \(positional-only\)\)"):
        build(authenticate_fn=positional)

    def only_args(*args):
        return args

    with pytest.raises(TypeError, match=r"parameters \(\*args\) but is called"):
        build(message_handler=only_args)
    with pytest.raises(TypeError, match="validate_room_fn must be callable, got str"):
        build(validate_room_fn="rooms")


class Rooms:
    def allowed(self, client_id: str, user_id: str | None, rooms: list[str]) -> list[str]:
        return rooms

    def __call__(self, client_id: str, user_id: str | None, rooms: list[str]) -> list[str]:
        return rooms


def test_kwargs_defaults_bound_methods_partials_and_callable_objects_are_accepted():
    def with_kwargs(**kwargs: Any) -> list[str]:
        return kwargs["rooms"]

    def with_defaults(client_id, user_id, rooms, extra=1):
        return rooms

    def prefixed(prefix, client_id, user_id, rooms):
        return [r for r in rooms if r.startswith(prefix)]

    async def coroutine(client_id, user_id, rooms):
        return rooms

    for fn in (
        with_kwargs,
        with_defaults,
        Rooms().allowed,
        Rooms(),
        functools.partial(prefixed, "chat-"),
        coroutine,
        lambda client_id, user_id, rooms, *rest: rooms,
    ):
        assert build(validate_room_fn=fn).validate_room_fn is fn
    # A scheme's bound hooks fit too.
    scheme = EcdhScheme()
    helper = build(encryption=scheme)
    assert helper.handshake_fn == scheme.handshake_fn


def test_a_keyword_only_authenticate_fn_and_partial_callbacks_work_over_the_wire():
    """Every callback is called by keyword, authenticate_fn included (`data=`)."""
    seen: list[tuple[str, Any]] = []

    def authenticate(*, data):
        return {"user_id": data["token"]}

    def on_message(tag, *, client_id, user_id, message):
        seen.append((tag, message["data"]))
        holder[0].helper.send_to_client(client_id, "ok", message["data"])

    holder: list[Any] = []

    async def body():
        async with running(
            authenticate_fn=authenticate,
            validate_room_fn=allow_all,
            message_handler=functools.partial(on_message, "tagged"),
        ) as node:
            holder.append(node)
            ws, data = await authed(node.url, "zed")
            assert data["userId"] == "zed"
            await send(ws, {"event": "say", "data": 5})
            assert await recv(ws) == {"event": "ok", "data": 5}
            await ws.close()

    run(body())
    assert seen == [("tagged", 5)]
