"""WebSocketComponent: a WebSocketServerHelper wired from an application's bindings.

At binding time (application start) it checks the application and the runtime, resolves
every binding and validates the Redis helper and the authenticate handler; after the server
starts, a post-start hook creates the helper, configures it, binds it to
`WebSocketBindingKeys.WEBSOCKET_INSTANCE` and routes upgrades on its path to it.
"""

from __future__ import annotations

import platform
import sys
from typing import Any

from ..config import ALIASES, COMPONENT_SETTINGS, ServerConfig
from ..protocol.constants import WebSocketDefaults
from .app import Application, ApplicationError


class WebSocketBindingKeys:
    WEBSOCKET_INSTANCE = "@app/websocket/instance"
    SERVER_OPTIONS = "@app/websocket/server-options"
    REDIS_CONNECTION = "@app/websocket/redis-connection"
    AUTHENTICATE_HANDLER = "@app/websocket/authenticate-handler"
    VALIDATE_ROOM_HANDLER = "@app/websocket/validate-room-handler"
    CLIENT_CONNECTED_HANDLER = "@app/websocket/client-connected-handler"
    CLIENT_DISCONNECTED_HANDLER = "@app/websocket/client-disconnected-handler"
    MESSAGE_HANDLER = "@app/websocket/message-handler"
    OUTBOUND_TRANSFORMER = "@app/websocket/outbound-transformer"
    HANDSHAKE_HANDLER = "@app/websocket/handshake-handler"


# What may be bound to SERVER_OPTIONS (`roomcast.config.COMPONENT_SETTINGS`, snake_case or
# the original's camelCase), merged over these defaults (the original component's);
# `server_options` is the helper's own server_options dict.
DEFAULT_SERVER_OPTIONS: dict[str, Any] = {
    "identifier": "WEBSOCKET_SERVER",
    "path": WebSocketDefaults.PATH,
}
_OPTIONAL_HANDLERS = {
    "validate_room_fn": WebSocketBindingKeys.VALIDATE_ROOM_HANDLER,
    "client_connected_fn": WebSocketBindingKeys.CLIENT_CONNECTED_HANDLER,
    "client_disconnected_fn": WebSocketBindingKeys.CLIENT_DISCONNECTED_HANDLER,
    "message_handler": WebSocketBindingKeys.MESSAGE_HANDLER,
    "outbound_transformer": WebSocketBindingKeys.OUTBOUND_TRANSFORMER,
    "handshake_fn": WebSocketBindingKeys.HANDSHAKE_HANDLER,
}


def unsupported_runtime() -> str | None:
    """The name of this runtime when roomcast cannot serve on it, else None."""
    implementation = platform.python_implementation()
    if implementation != "CPython":
        return implementation
    if sys.platform not in ("linux", "darwin"):
        return f"CPython on {sys.platform}"
    try:
        import uvloop  # noqa: F401

        from .._core import Hub  # noqa: F401
    except ImportError:
        return "CPython without uvloop or the roomcast native core"
    return None


def _server_options(raw: Any) -> dict[str, Any]:
    options = dict(DEFAULT_SERVER_OPTIONS)
    for key, value in dict(raw or {}).items():
        name = ALIASES.get(key, key)
        if name not in COMPONENT_SETTINGS:
            raise ApplicationError(f"[WebSocketComponent] unknown server option: {key}")
        options[name] = value
    return options


class WebSocketComponent:
    """Hosts a WebSocketServerHelper in an `Application` (see the module docstring)."""

    def __init__(self, application: Application) -> None:
        self.application = application
        self.helper: Any = None
        self.server_options: dict[str, Any] = {}
        if application is not None:
            # Defaults, as the original's component declares them; bound values win.
            for key, value in (
                (WebSocketBindingKeys.SERVER_OPTIONS, DEFAULT_SERVER_OPTIONS),
                (WebSocketBindingKeys.REDIS_CONNECTION, None),
                (WebSocketBindingKeys.AUTHENTICATE_HANDLER, None),
                *((key, None) for key in _OPTIONAL_HANDLERS.values()),
            ):
                if not application.is_bound(key):
                    application.bind(key).to_value(value)

    def binding(self) -> None:
        if not self.application:
            raise ApplicationError("[binding] Invalid application to bind WebSocketComponent")
        runtime = unsupported_runtime()
        if runtime is not None:
            raise ApplicationError(
                f"[WebSocketComponent] {runtime} runtime is not supported yet. "
                "Please use CPython with uvloop on Linux or macOS."
            )
        resolved = self._resolve_bindings()
        self._register_hook(resolved)

    def _resolve_bindings(self) -> dict[str, Any]:
        from ..broker.redis.helper import DefaultRedisHelper

        app = self.application
        self.server_options = _server_options(
            app.get(WebSocketBindingKeys.SERVER_OPTIONS, is_optional=True)
        )
        redis_connection = app.get(WebSocketBindingKeys.REDIS_CONNECTION, is_optional=True)
        if not isinstance(redis_connection, DefaultRedisHelper):
            raise ApplicationError(
                "[WebSocketComponent][resolveBindings] Invalid instance of redisConnection | "
                "Please init connection with RedisHelper for single redis connection or "
                "RedisClusterHelper for redis cluster mode!"
            )
        authenticate_fn = app.get(WebSocketBindingKeys.AUTHENTICATE_HANDLER, is_optional=True)
        if not authenticate_fn:
            raise ApplicationError(
                "[WebSocketComponent] Invalid authenticateFn to setup WebSocket server!"
            )
        resolved = {"redis_connection": redis_connection, "authenticate_fn": authenticate_fn}
        for name, key in _OPTIONAL_HANDLERS.items():
            resolved[name] = app.get(key, is_optional=True) or None
        return resolved

    def _register_hook(self, resolved: dict[str, Any]) -> None:
        async def websocket_initialize() -> None:
            from ..node.server import WebSocketServerHelper

            server = self.application.get_server_instance()
            if server is None:
                raise ApplicationError("[WebSocketComponent] Server instance not available!")
            config = ServerConfig.from_settings(self.server_options)
            helper = WebSocketServerHelper(
                config.identifier, config.path, **resolved, config=config
            )
            await helper.configure()
            self.helper = helper
            self.application.bind(WebSocketBindingKeys.WEBSOCKET_INSTANCE).to_value(helper)
            server.route(helper)

        self.application.register_post_start_hook("websocket-initialize", websocket_initialize)

    async def stop(self) -> None:
        """Shut the helper down: 1001 to every client, callbacks, cleared maps, broker closed."""
        if self.helper is not None:
            await self.helper.shutdown()
            self.helper = None


class LazyWebSocket:
    """The helper for code built before the server starts: call it (or `.get()`) when needed.

    Raises RuntimeError("WebSocket not initialized") until the post-start hook has run.
    """

    def __init__(self, application: Application) -> None:
        self._application = application

    def get(self) -> Any:
        helper = self._application.get(WebSocketBindingKeys.WEBSOCKET_INSTANCE, is_optional=True)
        if helper is None:
            raise RuntimeError("WebSocket not initialized")
        return helper

    __call__ = get
