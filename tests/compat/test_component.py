"""The application layer: bindings, WebSocketComponent and the seed's component errors."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from roomcast import WebSocketServerHelper
from roomcast.app import Application, ApplicationError
from roomcast.component import LazyWebSocket, WebSocketBindingKeys, WebSocketComponent
from roomcast.redis import RedisHelper
from support import (
    RawClient,
    authed,
    closed_with,
    eventually,
    nothing_more,
    open_client,
    recv,
    run,
    send,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))


@pytest.fixture
def redis_url(redis_server):
    return redis_server.url


def auth(data):
    return {"user_id": data.get("token")} if data.get("token") else None


def configured_app(redis_url: str, **bindings) -> Application:
    app = Application(port=0)
    app.bind(WebSocketBindingKeys.REDIS_CONNECTION).to_value(RedisHelper(url=redis_url))
    app.bind(WebSocketBindingKeys.AUTHENTICATE_HANDLER).to_value(auth)
    for key, value in bindings.items():
        app.bind(key).to_value(value)
    return app


def test_binding_keys_are_the_originals():
    keys = {k: v for k, v in vars(WebSocketBindingKeys).items() if k.isupper()}
    assert keys == {
        "WEBSOCKET_INSTANCE": "@app/websocket/instance",
        "SERVER_OPTIONS": "@app/websocket/server-options",
        "REDIS_CONNECTION": "@app/websocket/redis-connection",
        "AUTHENTICATE_HANDLER": "@app/websocket/authenticate-handler",
        "VALIDATE_ROOM_HANDLER": "@app/websocket/validate-room-handler",
        "CLIENT_CONNECTED_HANDLER": "@app/websocket/client-connected-handler",
        "CLIENT_DISCONNECTED_HANDLER": "@app/websocket/client-disconnected-handler",
        "MESSAGE_HANDLER": "@app/websocket/message-handler",
        "OUTBOUND_TRANSFORMER": "@app/websocket/outbound-transformer",
        "HANDSHAKE_HANDLER": "@app/websocket/handshake-handler",
    }


def test_bind_and_get_with_optional_keys():
    app = Application()
    assert app.bind("a").to_value(1).value == 1
    assert app.get("a") == 1
    assert app.get("missing", is_optional=True) is None
    with pytest.raises(KeyError, match="binding not found: missing"):
        app.get("missing")
    app.bind("none").to_value(None)
    assert app.is_bound("none") and app.get("none") is None


def test_missing_application_is_refused_at_binding():
    component = WebSocketComponent(None)  # type: ignore[arg-type]
    with pytest.raises(
        ApplicationError, match=r"^\[binding\] Invalid application to bind WebSocketComponent$"
    ):
        component.binding()


def test_unsupported_runtime_is_refused_at_binding(monkeypatch):
    import roomcast.compat.component as component_module

    monkeypatch.setattr(component_module, "unsupported_runtime", lambda: "PyPy")
    app = configured_app("redis://127.0.0.1:1")
    component = app.component(WebSocketComponent)
    with pytest.raises(ApplicationError) as info:
        component.binding()
    assert str(info.value) == (
        "[WebSocketComponent] PyPy runtime is not supported yet. "
        "Please use CPython with uvloop on Linux or macOS."
    )


@pytest.mark.parametrize("redis", [None, "redis://127.0.0.1:6379", object()])
def test_redis_binding_must_be_a_default_redis_helper(redis):
    app = Application(port=0)
    app.bind(WebSocketBindingKeys.AUTHENTICATE_HANDLER).to_value(auth)
    if redis is not None:
        app.bind(WebSocketBindingKeys.REDIS_CONNECTION).to_value(redis)
    app.component(WebSocketComponent)

    async def body():
        with pytest.raises(ApplicationError) as info:
            await app.start()
        assert str(info.value) == (
            "[WebSocketComponent][resolveBindings] Invalid instance of redisConnection | "
            "Please init connection with RedisHelper for single redis connection or "
            "RedisClusterHelper for redis cluster mode!"
        )
        assert app.get_server_instance() is None  # raised before the server started

    run(body())


@pytest.mark.parametrize("bound", [False, True])
def test_authenticate_handler_is_required(bound):
    app = Application(port=0)
    app.bind(WebSocketBindingKeys.REDIS_CONNECTION).to_value(RedisHelper(url="redis://127.0.0.1:1"))
    if bound:
        app.bind(WebSocketBindingKeys.AUTHENTICATE_HANDLER).to_value(None)
    component = app.component(WebSocketComponent)
    with pytest.raises(ApplicationError) as info:
        component.binding()
    assert (
        str(info.value) == "[WebSocketComponent] Invalid authenticateFn to setup WebSocket server!"
    )


def test_post_start_hook_without_a_server_is_refused():
    app = configured_app("redis://127.0.0.1:1")
    component = app.component(WebSocketComponent)
    component.binding()
    [(identifier, hook)] = app.post_start_hooks
    assert identifier == "websocket-initialize"

    async def body():
        with pytest.raises(ApplicationError) as info:
            await hook()
        assert str(info.value) == "[WebSocketComponent] Server instance not available!"

    run(body())


def test_instance_is_bound_only_after_start_and_lazy_accessor_follows(redis_url):
    app = configured_app(redis_url)
    app.component(WebSocketComponent)
    lazy = LazyWebSocket(app)
    with pytest.raises(RuntimeError, match=r"^WebSocket not initialized$"):
        lazy()
    assert app.get(WebSocketBindingKeys.WEBSOCKET_INSTANCE, is_optional=True) is None

    async def body():
        await app.start()
        try:
            helper = app.get(WebSocketBindingKeys.WEBSOCKET_INSTANCE)
            assert isinstance(helper, WebSocketServerHelper)
            assert lazy() is helper and lazy.get() is helper
        finally:
            await app.stop()

    run(body())


def test_optional_handlers_absent_or_bound_to_none_are_both_fine(redis_url):
    async def body():
        for bindings in (
            {},
            {
                WebSocketBindingKeys.MESSAGE_HANDLER: None,
                WebSocketBindingKeys.VALIDATE_ROOM_HANDLER: None,
            },
        ):
            app = configured_app(redis_url, **bindings)
            app.component(WebSocketComponent)
            await app.start()
            try:
                helper = app.get(WebSocketBindingKeys.WEBSOCKET_INSTANCE)
                assert helper.message_handler is None and helper.validate_room_fn is None
                ws, _ = await authed(f"ws://127.0.0.1:{app.bound_port}/ws", "u1")
                await send(ws, {"event": "chat", "data": 1})
                await send(ws, {"event": "join", "data": {"rooms": ["r"]}})
                await nothing_more(ws)
                await ws.close()
            finally:
                await app.stop()

    run(body())


def test_server_options_are_merged_over_the_defaults(redis_url):
    app = configured_app(
        redis_url,
        **{
            WebSocketBindingKeys.SERVER_OPTIONS: {
                "path": "/live",
                "defaultRooms": ["lobby"],
                "heartbeatTimeout": 7,
                "serverOptions": {"maxPayloadLength": 2048},
            }
        },
    )
    app.component(WebSocketComponent)

    async def body():
        await app.start()
        try:
            helper = app.get(WebSocketBindingKeys.WEBSOCKET_INSTANCE)
            assert helper.identifier == "WEBSOCKET_SERVER"
            assert helper.get_path() == "/live"
            assert helper.default_rooms == ["lobby"]
            assert helper.heartbeat_timeout == 7
            assert helper.server_options["max_payload_length"] == 2048
            ws, data = await authed(f"ws://127.0.0.1:{app.bound_port}/live", "u")
            assert helper.get_clients(data["id"]).rooms == {data["id"], "lobby"}
            await ws.close()
        finally:
            await app.stop()

    run(body())


def test_plain_http_gets_health_json_and_404(redis_url):
    app = configured_app(redis_url)
    app.component(WebSocketComponent)

    async def body():
        await app.start()
        try:
            raw, head = await RawClient.connect(app.bound_port, path="/health", headers={})
            assert head.startswith(b"HTTP/1.1 200") and b"application/json" in head
            assert await raw.reader.read() == b'{"status":"ok"}'
            _, head = await RawClient.connect(app.bound_port, path="/nope", headers={})
            assert head.startswith(b"HTTP/1.1 404")
        finally:
            await app.stop()

    run(body())


def test_health_follows_the_helpers_broker(redis_server):
    app = configured_app(redis_server.url)
    app.component(WebSocketComponent)

    async def status() -> bytes:
        raw, head = await RawClient.connect(app.bound_port, path="/health", headers={})
        return head.split(b"\r\n", 1)[0] + b" " + await raw.reader.read()

    async def body():
        await app.start()
        try:
            assert await status() == b'HTTP/1.1 200 OK {"status":"ok"}'
            redis_server.kill()
            degraded = (
                b'HTTP/1.1 503 Service Unavailable {"status":"degraded","broker":"reconnecting"}'
            )
            async with asyncio.timeout(10):
                while await status() != degraded:
                    await asyncio.sleep(0.02)
        finally:
            await app.stop()

    run(body())


def test_stop_shuts_the_helper_down_before_the_server(redis_url):
    calls = []
    app = configured_app(
        redis_url,
        **{
            WebSocketBindingKeys.CLIENT_DISCONNECTED_HANDLER: lambda client_id, user_id: (
                calls.append(("disconnected", app.get_server_instance() is not None))
            )
        },
    )
    app.component(WebSocketComponent)

    async def body():
        await app.start()
        ws, _ = await authed(f"ws://127.0.0.1:{app.bound_port}/ws", "u")
        helper = app.get(WebSocketBindingKeys.WEBSOCKET_INSTANCE)
        await app.stop()
        code, reason, _ = await closed_with(ws)
        assert (code, reason) == (1001, "Server shutting down")
        # The callback ran while the server was still up, and the maps are empty.
        assert calls == [("disconnected", True)]
        assert helper.get_clients() == {}
        assert app.get_server_instance() is None

    run(body())


def test_example_chat_app_end_to_end(redis_url):
    import chat_app

    async def body():
        app, chat = chat_app.build(redis_url, port=0)
        await app.start()
        try:
            url = f"ws://127.0.0.1:{app.bound_port}/chat"
            ann, _ = await authed(url, "token-ann")
            assert await recv(ann) == {"event": "welcome", "data": {"online": 1}}
            bob, _ = await authed(url, "token-bob")
            assert await recv(bob) == {"event": "welcome", "data": {"online": 2}}
            for ws in (ann, bob):
                await send(ws, {"event": "join", "data": {"rooms": ["chat-1", "secret"]}})
            helper = app.get(WebSocketBindingKeys.WEBSOCKET_INSTANCE)
            await eventually(lambda: len(helper.get_clients_by_room("chat-1")) == 2)
            assert helper.get_clients_by_room("secret") == []
            await send(ann, {"event": "say", "data": {"room": "chat-1", "text": "hi"}})
            for ws in (ann, bob):
                assert await recv(ws) == {"event": "said", "data": {"from": "ann", "text": "hi"}}
            await ann.close()
            await eventually(lambda: len(chat.online) == 1)
            refused = await open_client(url)
            await send(refused, {"event": "authenticate", "data": {"token": "nope"}})
            code, _, _ = await closed_with(refused)
            assert code == 4003
            await bob.close()
        finally:
            await app.stop()

    run(body())
