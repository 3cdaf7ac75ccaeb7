"""The server HTTP API (SPEC §13) on two `roomcast serve` nodes sharing a real redis-server:
every endpoint, every target reaching every node exactly once, batch order, each error
answer, the key; every answer checked against the OpenAPI description."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import KEY, ApiClient, request_valid
from redis.asyncio import Redis
from redis_support import RedisServer
from serving_support import RELAY_APP, Served, http_get
from support import authed, closed_with, nothing_more, recv, run, send
from websockets.asyncio.client import ClientConnection

pytestmark = pytest.mark.timeout(120)

NODE_FLAGS = ["--history-rooms", "h-*", "--presence-rooms", "p-*", "--log-level", "warning"]


class Cluster:
    def __init__(self, redis: RedisServer, nodes: list[Served], ports: list[int]) -> None:
        self.redis = redis
        self.nodes = nodes
        self.ports = ports
        self.urls = [f"ws://127.0.0.1:{port}/ws" for port in ports]


def start_node(tmp: Path, name: str, *args: str) -> Served:
    return Served(
        ["--port", "0", "--app", "relay_app:app", *NODE_FLAGS, *args],
        tmp,
        tmp / f"{name}.stderr",
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Redis and two nodes: A with --api-key, B with --api-key-file."""
    tmp = tmp_path_factory.mktemp("api")
    (tmp / "relay_app.py").write_text(RELAY_APP)
    (tmp / "key").write_text(KEY + "\n")
    redis = RedisServer(tmp / "redis").start()
    nodes: list[Served] = []
    try:
        url = redis.url
        nodes.append(start_node(tmp, "a", "--redis-url", url, "--api-key", KEY))
        nodes.append(start_node(tmp, "b", "--redis-url", url, "--api-key-file", str(tmp / "key")))
        yield Cluster(redis, nodes, [node.listening_port() for node in nodes])
    finally:
        for node in nodes:
            node.close()
        redis.kill()


_open: list[ClientConnection] = []


def run_closing(body: Any) -> None:
    """`run(body())`, closing every client `client()` opened, whatever happened."""

    async def closing() -> None:
        try:
            await body()
        finally:
            while _open:
                await _open.pop().close()

    run(closing())


async def client(url: str, user: str) -> tuple[ClientConnection, dict[str, Any]]:
    ws, data = await authed(url, user)
    _open.append(ws)
    return ws, data


async def member(url: str, user: str, *rooms: str) -> tuple[ClientConnection, str]:
    """An authenticated client of `user` whose joins (and `joined`, for history rooms) are
    done."""
    ws, data = await client(url, user)
    if rooms:
        await send(ws, {"event": "join", "data": {"rooms": list(rooms)}})
    await send(ws, {"event": "whoami"})
    waiting = {room for room in rooms if room.startswith("h-")}
    me = False
    while waiting or not me:
        message = await recv(ws)
        if message["event"] == "me":
            me = True
        elif message["event"] == "joined":
            waiting.discard(message["data"]["room"])
        else:
            raise AssertionError(message)
    return ws, data["id"]


async def got(ws: ClientConnection, event: str) -> dict[str, Any]:
    message = await recv(ws)
    assert message["event"] == event, message
    return message


async def quiet(*sockets: ClientConnection) -> None:
    await asyncio.gather(*(nothing_more(ws, 0.3) for ws in sockets))


def test_publish_reaches_a_room_user_or_client_on_every_node_exactly_once(cluster):
    async def body() -> None:
        a, b = cluster.urls
        api = ApiClient(cluster.ports[0])
        try:
            in_a, _ = await member(a, "u-room-a", "lobby")
            in_b, _ = await member(b, "u-room-b", "lobby")
            out_a, _ = await member(a, "u-out-a")
            out_b, out_b_id = await member(b, "u-out-b")
            user_a, _ = await member(a, "u-both")
            user_b, _ = await member(b, "u-both")

            answer = await api.ok("/api/publish", {"room": "lobby", "event": "news", "data": 1})
            assert answer == {"subscribers": 2}  # one subscription per node with a member
            for ws in (in_a, in_b):
                assert await recv(ws) == {"event": "news", "data": 1}
            await quiet(in_a, in_b, out_a, out_b, user_a, user_b)

            await api.ok("/api/publish", {"user": "u-both", "event": "dm", "data": {"x": [1]}})
            for ws in (user_a, user_b):
                assert await recv(ws) == {"event": "dm", "data": {"x": [1]}}
            await quiet(in_a, in_b, out_a, out_b, user_a, user_b)

            # A client on the other node; no data key: none delivered.
            assert await api.ok("/api/publish", {"client": out_b_id, "event": "ping"}) == {
                "subscribers": 1
            }
            assert await recv(out_b) == {"event": "ping"}
            await quiet(in_a, in_b, out_a, out_b, user_a, user_b)
        finally:
            api.close()

    run_closing(body)


def test_broadcast_reaches_every_authenticated_client_on_both_nodes_except_excluded(cluster):
    async def body() -> None:
        a, b = cluster.urls
        api = ApiClient(cluster.ports[1])  # through node B this time
        try:
            clients = [await member(url, f"u-bc-{i}") for i, url in enumerate((a, b, a, b))]
            skipped_ws, skipped_id = clients[1]
            answer = await api.ok(
                "/api/broadcast", {"event": "all", "data": "hi", "exclude": [skipped_id]}
            )
            assert answer["subscribers"] == 2  # ws:broadcast: every node
            for ws, _ in clients:
                if ws is not skipped_ws:
                    assert await recv(ws) == {"event": "all", "data": "hi"}
            await quiet(*(ws for ws, _ in clients))
        finally:
            api.close()

    run_closing(body)


def test_room_exclude_skips_those_clients_on_every_node(cluster):
    async def body() -> None:
        a, b = cluster.urls
        api = ApiClient(cluster.ports[0])
        try:
            keep_a, _ = await member(a, "u-ex-1", "ex-room")
            skip_a, skip_a_id = await member(a, "u-ex-2", "ex-room")
            skip_b, skip_b_id = await member(b, "u-ex-3", "ex-room")
            keep_b, _ = await member(b, "u-ex-4", "ex-room")
            body = {"room": "ex-room", "event": "e", "exclude": [skip_a_id, skip_b_id]}
            await api.ok("/api/publish", body)
            for ws in (keep_a, keep_b):
                assert await recv(ws) == {"event": "e"}
            await quiet(keep_a, skip_a, skip_b, keep_b)
        finally:
            api.close()

    run_closing(body)


def test_batch_is_applied_in_order_on_every_node_with_one_result_per_command(cluster):
    async def body() -> None:
        a, b = cluster.urls
        api = ApiClient(cluster.ports[0])
        try:
            members = [
                await member(a, "u-batch", "b-room", "h-batch"),
                await member(b, "u-batch", "b-room", "h-batch"),
            ]
            commands: list[dict[str, Any]] = []
            for i in range(120):
                kind = i % 4
                if kind == 0:
                    commands.append({"publish": {"room": "b-room", "event": "n", "data": i}})
                elif kind == 1:
                    commands.append({"publish": {"user": "u-batch", "event": "n", "data": i}})
                elif kind == 2:
                    commands.append({"broadcast": {"event": "n", "data": i}})
                else:
                    commands.append({"publish": {"room": "h-batch", "event": "n", "data": i}})
            assert request_valid("/api/batch", {"commands": commands})
            answer = await api.ok("/api/batch", {"commands": commands})
            results = answer["results"]
            assert len(results) == len(commands)
            offsets = [r["offset"] for r in results if "offset" in r]
            assert offsets == list(range(offsets[0], offsets[0] + 30))  # the h-batch ones
            for ws, _ in members:
                seen = [(await got(ws, "n"))["data"] for _ in commands]
                assert seen == list(range(120))
            await quiet(*(ws for ws, _ in members))
        finally:
            api.close()

    run_closing(body)


def test_history_room_publish_is_numbered_and_history_reads_it_back(cluster):
    async def body() -> None:
        api = ApiClient(cluster.ports[1])
        try:
            listener, _ = await client(cluster.urls[0], "u-hist")
            await send(listener, {"event": "join", "data": {"rooms": ["h-news"]}})
            joined = (await got(listener, "joined"))["data"]
            offsets = []
            for i in range(3):
                answer = await api.ok(
                    "/api/publish", {"room": "h-news", "event": "story", "data": {"n": i}}
                )
                offsets.append(answer["offset"])
                epoch = answer["epoch"]
            assert offsets == [joined["offset"] + 1, joined["offset"] + 2, joined["offset"] + 3]
            for i, offset in enumerate(offsets):
                assert await recv(listener) == {
                    "event": "story",
                    "data": {"n": i},
                    "room": "h-news",
                    "offset": offset,
                }

            kept = await api.ok("/api/history", {"room": "h-news"})
            assert kept["epoch"] == epoch and kept["offset"] == offsets[-1]
            assert "recovered" not in kept
            assert [m["offset"] for m in kept["messages"]][-3:] == offsets
            assert kept["messages"][-1] == {
                "event": "story",
                "data": {"n": 2},
                "offset": offsets[2],
            }

            since = {"epoch": epoch, "offset": offsets[0]}
            after = await api.ok("/api/history", {"room": "h-news", "since": since})
            assert after["recovered"] is True
            assert [m["data"]["n"] for m in after["messages"]] == [1, 2]
            first = await api.ok("/api/history", {"room": "h-news", "since": since, "limit": 1})
            assert [m["data"]["n"] for m in first["messages"]] == [1]
            last = await api.ok("/api/history", {"room": "h-news", "limit": 1})
            assert [m["data"]["n"] for m in last["messages"]] == [2]

            stale = {"epoch": "not-the-epoch", "offset": 0}
            lost = await api.ok("/api/history", {"room": "h-news", "since": stale})
            assert lost["recovered"] is False and lost["messages"] == []

            status, error = await api.call("/api/history", {"room": "lobby"})
            assert status == 400 and error["error"]["message"] == "not a history room: lobby"
        finally:
            api.close()

    run_closing(body)


def test_presence_lists_the_members_on_every_node(cluster):
    async def body() -> None:
        a, b = cluster.urls
        api = ApiClient(cluster.ports[0])
        try:
            _, id_a = await member(a, "u-pres-a", "p-room")
            _, id_b = await member(b, "u-pres-b", "p-room")
            expected = [
                {"clientId": id_a, "userId": "u-pres-a"},
                {"clientId": id_b, "userId": "u-pres-b"},
            ]

            async def members() -> list[dict[str, str]]:
                answer = await api.ok("/api/presence", {"room": "p-room"})
                assert answer["room"] == "p-room"
                return sorted(answer["clients"], key=lambda m: m["userId"])

            # Node B's members reach Redis with its next presence refresh.
            async with asyncio.timeout(15):
                while await members() != expected:
                    await asyncio.sleep(0.2)
            status, error = await api.call("/api/presence", {"room": "lobby"})
            assert status == 400 and error["error"]["message"] == "not a presence room: lobby"
        finally:
            api.close()

    run_closing(body)


def test_disconnect_closes_a_client_or_every_session_of_a_user_on_any_node(cluster):
    async def body() -> None:
        a, b = cluster.urls
        api = ApiClient(cluster.ports[0])
        try:
            target, target_id = await member(b, "u-dc-one")
            bystander, _ = await member(b, "u-dc-other")
            answer = await api.ok(
                "/api/disconnect", {"client": target_id, "code": 4321, "reason": "kicked"}
            )
            assert answer == {"subscribers": 1}
            assert await closed_with(target) == (4321, "kicked", [])

            sessions = [await member(url, "u-dc-user") for url in (a, b, b)]
            await api.ok("/api/disconnect", {"user": "u-dc-user", "code": 4000})
            for ws, _ in sessions:
                assert await closed_with(ws) == (4000, "", [])
            await nothing_more(bystander)
            await send(bystander, {"event": "whoami"})
            assert (await recv(bystander))["event"] == "me"  # still connected
        finally:
            api.close()

    run_closing(body)


def test_info_lists_both_nodes_with_their_connections(cluster):
    async def body() -> None:
        a, b = cluster.urls
        api = ApiClient(cluster.ports[0])
        try:
            clients = [await member(url, "u-info") for url in (a, b, b)]

            async def info() -> dict[str, Any]:
                return await api.ok("/api/info", method="GET")

            # Each node refreshes its entry every 5 s: wait for both, with B's figure.
            async with asyncio.timeout(20):
                while True:
                    answer = await info()
                    nodes = answer["nodes"]
                    if len(nodes) == 2 and all(n["connections"] >= 1 for n in nodes):
                        break
                    await asyncio.sleep(0.3)
            assert answer["connections"] == sum(n["connections"] for n in nodes)
            assert len({n["id"] for n in nodes}) == 2
            assert await api.ok("/api/info", {}) is not None  # POST with {} too
            for ws, _ in clients:
                await ws.close()
        finally:
            api.close()

    run_closing(body)


# -- errors -----------------------------------------------------------------------------

BAD_REQUESTS: list[tuple[str, Any, int, str, str]] = [
    ("/api/publish", b"{not json", 400, "bad_json", "the body is not JSON"),
    ("/api/publish", b"", 400, "bad_json", "the body must be a JSON object"),
    ("/api/publish", [1, 2], 400, "bad_request", "the body must be a JSON object"),
    ("/api/publish", {"room": "lobby", "event": "e", "colour": 1}, 400, "bad_request",
     "unknown field: colour"),
    ("/api/publish", {"room": "lobby"}, 400, "bad_request", "missing field: event"),
    ("/api/publish", {"event": "e"}, 400, "bad_request",
     "give exactly one of room, user or client"),
    ("/api/publish", {"room": "lobby", "user": "u", "event": "e"}, 400, "bad_request",
     "give exactly one of room, user or client"),
    ("/api/publish", {"room": "", "event": "e"}, 400, "bad_request",
     "room must be a non-empty string"),
    ("/api/publish", {"room": "lobby", "event": 5}, 400, "bad_request",
     "event must be a non-empty string"),
    ("/api/publish", {"room": "lobby", "event": "e", "exclude": "x"}, 400, "bad_request",
     "exclude must be a list of client ids"),
    ("/api/publish", {"user": "u", "event": "e", "exclude": ["x"]}, 400, "bad_request",
     "exclude applies to a room (or a broadcast), not a user"),
    ("/api/broadcast", {"event": "e", "room": "lobby"}, 400, "bad_request", "unknown field: room"),
    ("/api/batch", {"commands": "x"}, 400, "bad_request", "commands must be a list"),
    ("/api/batch", {}, 400, "bad_request", "missing field: commands"),
    ("/api/batch", {"commands": [{"publish": {"room": "lobby", "event": "ok"}},
                                 {"publish": {"room": "lobby"}}]},
     400, "bad_request", "commands[1].publish: missing field: event"),
    ("/api/batch", {"commands": [{"emit": {}}]}, 400, "bad_request",
     "commands[0]: unknown command: emit"),
    ("/api/disconnect", {"client": "c", "code": 1001}, 400, "bad_request",
     "code must be 1000 or 3000-4999, got 1001"),
    ("/api/disconnect", {"client": "c", "reason": "x" * 124}, 400, "bad_request",
     "reason longer than 123 bytes"),
    ("/api/disconnect", {"code": 4000}, 400, "bad_request", "give exactly one of client or user"),
    ("/api/history", {"room": "h-x", "since": {"epoch": "e"}}, 400, "bad_request",
     "since.offset must be a whole number >= 0"),
    ("/api/history", {"room": "h-x", "limit": 0}, 400, "bad_request",
     "limit must be a whole number >= 1"),
    ("/api/info", {"x": 1}, 400, "bad_request", "unknown field: x"),
]  # fmt: skip


async def listen_for_envelopes(port: int) -> tuple[Redis, Any]:
    redis = Redis(port=port)
    pubsub = redis.pubsub()
    await pubsub.subscribe("ws:broadcast")
    await pubsub.psubscribe("ws:room:*", "ws:user:*", "ws:client:*")
    return redis, pubsub


async def no_envelope(pubsub: Any, wait: float = 0.5) -> None:
    deadline = asyncio.get_running_loop().time() + wait
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        assert message is None, message


async def next_envelope(pubsub: Any, timeout: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
            if message is not None:
                return dict(message)


def test_each_bad_request_gets_its_error_and_nothing_reaches_redis(cluster):
    async def body() -> None:
        api = ApiClient(cluster.ports[0])
        redis, pubsub = await listen_for_envelopes(cluster.redis.port)
        try:
            for path, sent, status, code, message in BAD_REQUESTS:
                raw = sent if isinstance(sent, bytes) else json.dumps(sent).encode()
                got_status, _, answer = await api.raw(path, raw)
                assert (got_status, answer["error"]["code"]) == (status, code), (sent, answer)
                assert answer["error"]["message"].startswith(message), (sent, answer)
                if not isinstance(sent, bytes) and path != "/api/info":
                    assert not request_valid(path, sent), sent  # the description agrees
            await no_envelope(pubsub)
            # The same connection still works, and a good request does reach Redis.
            await api.ok("/api/publish", {"room": "lobby", "event": "fine"})
            message = await next_envelope(pubsub)
            assert message["channel"] == b"ws:room:lobby"
        finally:
            api.close()
            await pubsub.aclose()
            await redis.aclose()

    run_closing(body)


def test_the_key_is_checked_before_anything_else_and_nothing_reaches_redis(cluster):
    async def body() -> None:
        redis, pubsub = await listen_for_envelopes(cluster.redis.port)
        good = json.dumps({"room": "lobby", "event": "e"}).encode()
        try:
            wrong = "wrong API key"
            keys = [(None, "missing X-API-Key header"), ("nope", wrong), (KEY + "x", wrong)]
            for key, message in [*keys, (KEY[:-1], wrong)]:
                api = ApiClient(cluster.ports[1], key=key)
                try:
                    for path in ("/api/publish", "/api/info", "/api/nothing-here"):
                        status, _, answer = await api.raw(path, good)
                        if path == "/api/nothing-here":
                            assert status == 404
                            continue
                        assert status == 401, answer
                        assert answer["error"] == {"code": "unauthorized", "message": message}
                finally:
                    api.close()
            api = ApiClient(cluster.ports[1])
            try:
                status, headers, answer = await api.raw("/api/publish", None, "GET")
                assert status == 405 and headers["Allow"] == "POST"
                assert answer["error"]["code"] == "method_not_allowed"
            finally:
                api.close()
            await no_envelope(pubsub)
        finally:
            await pubsub.aclose()
            await redis.aclose()

    run_closing(body)


def test_a_body_over_the_limit_is_413_from_its_length_or_as_it_streams(tmp_path, redis_server):
    (tmp_path / "relay_app.py").write_text(RELAY_APP)
    node = start_node(
        tmp_path, "n", "--redis-url", redis_server.url, "--api-key", KEY,
        "--api-body-limit", "1000",
    )  # fmt: skip

    async def body() -> None:
        port = node.listening_port()
        redis, pubsub = await listen_for_envelopes(redis_server.port)
        try:
            big = json.dumps({"room": "lobby", "event": "e", "data": "x" * 1000}).encode()
            api = ApiClient(port)
            status, headers, answer = await api.raw("/api/publish", big)
            assert status == 413 and answer["error"]["code"] == "too_large"
            assert headers.get("Connection") == "close"
            api.close()
            # Chunked, no Content-Length: answered once the chunks pass the limit.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode() +
                b"\r\nTransfer-Encoding: chunked\r\n\r\n"
            )  # fmt: skip
            for _ in range(3):
                writer.write(b"200\r\n" + b"x" * 512 + b"\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 413 "), head
            assert await asyncio.wait_for(reader.read(), 5)  # the body, then EOF
            writer.close()
            small = json.dumps({"room": "lobby", "event": "e", "data": "x" * 100}).encode()
            api = ApiClient(port)
            status, _, _ = await api.raw("/api/publish", small)
            assert status == 200
            api.close()
            message = await next_envelope(pubsub)
            assert b'"' + b"x" * 100 + b'"' in message["data"]  # the small one, only
            await no_envelope(pubsub)
        finally:
            await pubsub.aclose()
            await redis.aclose()

    try:
        run_closing(body)
    finally:
        node.close()


def test_without_a_key_every_api_path_is_404_and_the_rest_still_works(tmp_path):
    (tmp_path / "relay_app.py").write_text(RELAY_APP)
    node = start_node(tmp_path, "n")  # memory://, no key

    async def body() -> None:
        port = node.listening_port()
        api = ApiClient(port)
        try:
            for path in ("/api/publish", "/api/info", "/api/batch", "/api/x"):
                for method in ("POST", "GET"):
                    status, _, answer = await api.raw(path, b"{}", method)
                    assert status == 404 and answer["error"]["code"] == "not_found", answer
        finally:
            api.close()
        status, health = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/health")
        assert status == 200 and json.loads(health) == {"status": "ok"}

    try:
        run_closing(body)
    finally:
        node.close()


def test_broker_unavailable_is_503(tmp_path):
    (tmp_path / "relay_app.py").write_text(RELAY_APP)
    redis = RedisServer(tmp_path / "redis").start()
    node = start_node(tmp_path, "n", "--redis-url", redis.url, "--api-key", KEY)

    async def body() -> None:
        port = node.listening_port()
        api = ApiClient(port)
        try:
            await api.ok("/api/publish", {"room": "lobby", "event": "e"})
            redis.kill()
            async with asyncio.timeout(15):
                while (await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/health"))[
                    0
                ] != 503:
                    await asyncio.sleep(0.1)
            for path, sent in (
                ("/api/publish", {"room": "lobby", "event": "e"}),
                ("/api/broadcast", {"event": "e"}),
                ("/api/batch", {"commands": [{"broadcast": {"event": "e"}}]}),
                ("/api/disconnect", {"user": "u"}),
                ("/api/history", {"room": "h-1"}),
                ("/api/info", {}),
            ):
                status, answer = await api.call(path, sent)
                assert status == 503 and answer["error"]["code"] == "unavailable", (path, answer)
            # A bad request is still 400: it is checked before the broker.
            status, answer = await api.call("/api/publish", {"room": "lobby"})
            assert status == 400
        finally:
            api.close()

    try:
        run_closing(body)
    finally:
        node.close()
        redis.kill()


def test_workers_get_the_key_from_their_environment_not_their_argv(tmp_path, redis_server):
    (tmp_path / "relay_app.py").write_text(RELAY_APP)
    node = start_node(
        tmp_path, "w", "--redis-url", redis_server.url, "--api-key", KEY, "--workers", "2"
    )

    async def body() -> None:
        port = node.listening_port()
        children = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and _parent(p) == node.proc.pid
        ]
        assert len(children) == 2, children
        for pid in children:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert KEY.encode() not in b" ".join(argv), argv
            assert b"--api-key" not in argv
        api = ApiClient(port)
        try:
            for _ in range(4):  # new connections spread over the workers
                api.close()
                await api.ok("/api/broadcast", {"event": "e"})
        finally:
            api.close()

    try:
        run_closing(body)
    finally:
        node.proc.send_signal(signal.SIGTERM)
        node.close()


def _parent(proc: Path) -> int | None:
    try:
        for line in (proc / "status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def test_the_api_on_a_redis_cluster_publishes_numbers_history_and_lists_both_nodes(
    tmp_path, redis_cluster
):
    (tmp_path / "relay_app.py").write_text(RELAY_APP)
    url = redis_cluster.url
    nodes = [
        start_node(tmp_path, name, "--redis-url", url, "--api-key", KEY) for name in ("a", "b")
    ]

    async def body() -> None:
        ports = [node.listening_port() for node in nodes]
        a, b = (f"ws://127.0.0.1:{port}/ws" for port in ports)
        api = ApiClient(ports[0])
        try:
            in_a, _ = await member(a, "u-c-a", "c-room", "h-c")
            in_b, _ = await member(b, "u-c-b", "c-room", "h-c")
            await api.ok("/api/publish", {"room": "c-room", "event": "e", "data": 1})
            numbered = await api.ok("/api/publish", {"room": "h-c", "event": "h", "data": 2})
            for ws in (in_a, in_b):
                assert await recv(ws) == {"event": "e", "data": 1}
                assert await recv(ws) == {
                    "event": "h",
                    "data": 2,
                    "room": "h-c",
                    "offset": numbered["offset"],
                }
            await quiet(in_a, in_b)
            kept = await api.ok("/api/history", {"room": "h-c"})
            assert kept["messages"][-1]["offset"] == numbered["offset"]
            async with asyncio.timeout(20):
                while len((await api.ok("/api/info", method="GET"))["nodes"]) != 2:
                    await asyncio.sleep(0.3)
        finally:
            api.close()

    try:
        run_closing(body)
    finally:
        for node in nodes:
            node.close()
