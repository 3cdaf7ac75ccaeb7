"""The package's layout rules: no import cycle (imports under TYPE_CHECKING and inside
functions count too), layers that import downward only, the node's parts never reach back to
the helper they make up, the helper is composed (no mixins), and every documented import
path offers its names."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "python" / "roomcast"
HELPER = "roomcast.node.server"


def modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts.pop()
        found[".".join(parts)] = (path, package)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, (path, package) in mods.items():
        here = name.split(".") if package else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    # `from . import _core`: the extension module (a stub), not the package.
                    native = ROOT.parent.joinpath(*sub.split(".")).with_suffix(".pyi").exists()
                    targets.append(sub if sub in mods or native else module)
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            graph[name].update(t for t in targets if t in mods and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    graph = import_graph()
    assert graph["roomcast.node.server"] >= {"roomcast.node.inbound", "roomcast.node.delivery"}
    assert cycles(graph) == []


# Each module's layer, lowest first: a module may import its own layer and those below.
LAYERS = {
    "roomcast.log": 0,
    "roomcast.aio": 0,
    "roomcast.protocol": 1,
    "roomcast.transport": 2,
    "roomcast.encryption": 3,
    "roomcast.broker": 4,
    "roomcast.serving": 5,
    "roomcast.node": 6,
    "roomcast.config": 6,
    "roomcast.emitter": 6,
    "roomcast.cli": 7,
    "roomcast.compat": 7,
}
FACE = 8  # roomcast/__init__.py, __main__.py and the documented re-exports
# `roomcast --version` reads the package's own __version__.
UPWARD_ALLOWED = {"roomcast.cli.flags -> roomcast"}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(".".join(parts[:2]), FACE)


def test_layers_import_downward():
    graph = import_graph()
    upward = sorted(
        f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer(b) > layer(a)
    )
    assert sorted(set(upward) - UPWARD_ALLOWED) == []
    assert layer("roomcast.node.rooms") > layer("roomcast.protocol.session")  # the table is read


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for other in graph[todo.pop()]:
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


def test_no_part_of_the_node_reaches_the_helper():
    """A part gets what it needs at construction: none imports the helper's module, directly
    or through another module."""
    graph = import_graph()
    parts = sorted(n for n in graph if n.startswith("roomcast.node.") and n != HELPER)
    assert {"roomcast.node.rooms", "roomcast.node.barrier", "roomcast.node.sender"} <= set(parts)
    assert [part for part in parts if HELPER in reachable(graph, part)] == []


def test_the_helper_is_composed_not_mixed():
    from roomcast import WebSocketServerHelper

    assert WebSocketServerHelper.__mro__ == (WebSocketServerHelper, object)


# The import paths the README, the examples and the original's users rely on, and the names
# each must offer; each name is the object its module in the layered layout defines.
DOCUMENTED = {
    "roomcast.app": ("roomcast.compat.app", ["Application", "ApplicationError", "Binding"]),
    "roomcast.component": (
        "roomcast.compat.component",
        ["LazyWebSocket", "WebSocketBindingKeys", "WebSocketComponent"],
    ),
    "roomcast.redis": (
        "roomcast.broker.redis.helper",
        ["DefaultRedisHelper", "RedisClusterHelper", "RedisHelper", "connection_from_url"],
    ),
    "roomcast.crypto": (
        "roomcast.encryption.ecdh",
        ["DecryptionError", "EcdhClient", "EcdhScheme", "open_sealed", "seal"],
    ),
    "roomcast.tls": ("roomcast.transport.tls", ["TlsError", "server_context"]),
    "roomcast.log": ("roomcast.log", ["JsonFormatter", "TRACE"]),
    "roomcast.server": ("roomcast.node.server", ["WebSocketServerHelper"]),
    "roomcast.protocol": (
        "roomcast.protocol.messages",
        ["MISSING", "decode", "decode_envelope", "encode", "encode_envelope"],
    ),
    "roomcast.constants": (
        "roomcast.protocol.constants",
        ["CloseCode", "ErrorMessages", "WebSocketChannels", "WebSocketDefaults", "WebSocketEvents"],
    ),
    "roomcast.metrics": ("roomcast.serving.metrics", ["Exporter", "samples"]),
    "roomcast.http": (
        "roomcast.transport.http",
        ["HttpHandler", "HttpRequest", "HttpResponse", "WebServer"],
    ),
    "roomcast.config": ("roomcast.config", ["ALIASES", "ServerConfig"]),
    "roomcast.emitter": ("roomcast.emitter", ["WebSocketEmitter"]),
    "roomcast.cli": ("roomcast.cli", ["ServeConfig", "build_helper", "build_parser", "main"]),
    "roomcast.broker": ("roomcast.broker", ["Broker", "BrokerUnavailable", "create_broker"]),
    "roomcast.broker.memory": ("roomcast.broker.memory", ["MemoryBroker"]),
    "roomcast.broker.redis": ("roomcast.broker.redis.broker", ["RedisBroker"]),
    "roomcast.broker.history": ("roomcast.broker.history", ["HistoryStore", "MemoryHistory"]),
    "roomcast.broker.redis.history": ("roomcast.broker.redis.history", ["RedisHistory"]),
}


@pytest.mark.parametrize("path", sorted(DOCUMENTED))
def test_documented_import_path_offers_its_names(path):
    home, names = DOCUMENTED[path]
    module, defining = importlib.import_module(path), importlib.import_module(home)
    for name in names:
        assert getattr(module, name) is getattr(defining, name), f"{path}.{name}"


def test_the_package_offers_every_name_it_lists():
    import roomcast

    missing = [name for name in roomcast.__all__ if getattr(roomcast, name, None) is None]
    assert missing == []
    assert roomcast.RedisHelper is importlib.import_module("roomcast.redis").RedisHelper
