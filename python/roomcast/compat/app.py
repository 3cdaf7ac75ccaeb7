"""A small application container: bindings, components, a start/stop lifecycle.

It exists to host components such as `WebSocketComponent`, not to be a web framework:
values are bound to string keys, components read them when the application starts, and
post-start hooks run once the HTTP server listens.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..transport.http import HttpHandler, HttpRequest, HttpResponse, WebServer

logger = logging.getLogger("roomcast")

_UNBOUND = object()


class ApplicationError(Exception):
    """An error of the application layer, with the HTTP status it stands for."""

    def __init__(self, message: str, status_code: int = 500) -> None:
        super().__init__(message)
        self.status_code = status_code


class Binding:
    """A key and the value bound to it: `app.bind(key).to_value(value)`."""

    __slots__ = ("_value", "key")

    def __init__(self, key: str) -> None:
        self.key = key
        self._value: Any = _UNBOUND

    def to_value(self, value: Any) -> Binding:
        self._value = value
        return self

    @property
    def bound(self) -> bool:
        return self._value is not _UNBOUND

    @property
    def value(self) -> Any:
        return self._value


class Component(Protocol):
    """What `Application.component` hosts: `binding()` runs at start, before the server
    listens; `stop()` runs at stop, before the server closes."""

    def binding(self) -> Awaitable[None] | None: ...

    async def stop(self) -> None: ...


PostStartHook = Callable[[], Any]


def health(request: HttpRequest) -> HttpResponse | None:
    """JSON on /health, 404 for everything else (an application without a WebSocket)."""
    if request.path == "/health":
        return HttpResponse.json({"status": "ok"})
    return None


class Application:
    """Bindings, components and the HTTP/WebSocket server of one process."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 8080, http_handler: HttpHandler | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.http_handler = http_handler or self._health
        self._bindings: dict[str, Binding] = {}
        self._components: list[Component] = []
        self._post_start_hooks: list[tuple[str, PostStartHook]] = []
        self._server: WebServer | None = None

    # -- bindings ------------------------------------------------------------------------

    def bind(self, key: str) -> Binding:
        """The binding for `key`, created (unbound) if new; chain `.to_value(v)`."""
        binding = self._bindings.get(key)
        if binding is None:
            binding = self._bindings[key] = Binding(key)
        return binding

    def is_bound(self, key: str) -> bool:
        binding = self._bindings.get(key)
        return binding is not None and binding.bound

    def get(self, key: str, is_optional: bool = False) -> Any:
        """The value bound to `key`; None for a missing optional key, else KeyError."""
        binding = self._bindings.get(key)
        if binding is None or not binding.bound:
            if is_optional:
                return None
            raise KeyError(f"binding not found: {key}")
        return binding.value

    # -- components and hooks --------------------------------------------------------------

    def component(self, cls: Callable[[Application], Component]) -> Component:
        """Create a component for this application; it binds when the application starts."""
        instance = cls(self)
        self._components.append(instance)
        return instance

    @property
    def post_start_hooks(self) -> list[tuple[str, PostStartHook]]:
        """The registered post-start hooks, (identifier, hook), in order (a copy)."""
        return list(self._post_start_hooks)

    def register_post_start_hook(self, identifier: str, hook: PostStartHook) -> None:
        """Run `hook()` (sync or async) after the server listens, in registration order."""
        self._post_start_hooks.append((identifier, hook))

    def get_server_instance(self) -> WebServer | None:
        """The running server, or None before `start()` (or after `stop()`)."""
        return self._server

    @property
    def bound_port(self) -> int:
        return self._server.bound_port if self._server is not None else self.port

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every component, listen, then run the post-start hooks."""
        for component in self._components:
            result = component.binding()
            if inspect.isawaitable(result):
                await result
        server = WebServer(self.host, self.port, self._handle_http)
        await server.start()
        self._server = server
        try:
            for identifier, hook in self._post_start_hooks:
                logger.debug("post-start hook %s", identifier)
                result = hook()
                if inspect.isawaitable(result):
                    await result
        except BaseException:
            await self.stop()
            raise

    async def run(self, shutdown_trigger: Awaitable[Any] | None = None) -> None:
        """Start (unless started already), wait for SIGINT/SIGTERM (or `shutdown_trigger`, or
        cancellation), then stop: every client gets 1001."""
        from ..serving.runner import catching

        with contextlib.ExitStack() as stack:
            # From the start: a signal while starting counts too.
            signalled = stack.enter_context(catching()) if shutdown_trigger is None else None
            if self._server is None:
                await self.start()
            try:
                if signalled is not None:
                    await signalled.wait()
                elif shutdown_trigger is not None:
                    await shutdown_trigger
            finally:
                await self.stop()

    async def stop(self) -> None:
        """Stop the components first (they close their clients), then the server."""
        for component in reversed(self._components):
            try:
                await component.stop()
            except Exception:
                logger.exception("stopping %s failed", type(component).__name__)
        if self._server is not None:
            await self._server.stop()
            self._server = None

    def _health(self, request: HttpRequest) -> HttpResponse | None:
        """The default HTTP handler: /health of the bound WebSocket helper (503 while its
        broker is away, as `roomcast serve` answers), 404 for everything else."""
        helper = self.get("@app/websocket/instance", is_optional=True)
        if helper is None or request.path != "/health":
            return health(request)
        from ..serving.endpoints import health_response

        return health_response(helper)

    def _handle_http(self, request: HttpRequest) -> HttpResponse | None:
        return self.http_handler(request)
