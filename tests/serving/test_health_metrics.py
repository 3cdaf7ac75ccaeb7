"""GET /health and GET /metrics: on `roomcast serve` (one process and workers, with a real
Redis that goes away and comes back) and on the library's server."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import orjson
import pytest
from roomcast import WebSocketServerHelper
from serving_support import (
    SECRET,
    STARTUP_TIMEOUT,
    WAIT,
    Served,
    connect_many,
    http_get,
    scrape,
    serve_workers,
    value,
    whoami,
)
from support import (
    authed,
    closed_with,
    eventually,
    open_client,
    recv,
    run,
    running,
    send,
    token_auth,
)

pytestmark = pytest.mark.timeout(120)


def test_health_turns_503_while_redis_is_down_and_200_when_it_is_back(redis_server, tmp_path):
    served = Served(
        ["--port", "0", "--redis-url", redis_server.url, "--jwt-secret", SECRET],
        tmp_path,
        tmp_path / "stderr.log",
    )
    try:
        port = served.listening_port()
        health = f"http://127.0.0.1:{port}/health"
        metrics = f"http://127.0.0.1:{port}/metrics"
        assert http_get(health) == (200, b'{"status":"ok"}')
        assert value(scrape(metrics), "roomcast_broker_connected") == 1

        async def wait_for(status: int, body: dict[str, Any]) -> None:
            seen: list[Any] = []

            def reached() -> bool:
                code, raw = http_get(health)
                seen[:] = [code, orjson.loads(raw)]
                return seen == [status, body]

            try:
                await eventually(reached, 30, f"/health {status} {body}")
            except AssertionError:
                raise AssertionError(f"last /health: {seen}") from None

        redis_server.kill()
        run(wait_for(503, {"status": "degraded", "broker": "reconnecting"}), timeout=40)
        samples = scrape(metrics)
        assert value(samples, "roomcast_broker_connected") == 0
        assert value(samples, "roomcast_healthy") == 0
        assert value(samples, "roomcast_broker_state", state="reconnecting") == 1
        assert value(samples, "roomcast_broker_state", state="connected") == 0
        redis_server.start()
        run(wait_for(200, {"status": "ok"}), timeout=40)
        assert value(scrape(metrics), "roomcast_broker_reconnects_total") == 1
        assert "open file limit" in served.stderr_text()  # and the connections it allows
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=STARTUP_TIMEOUT) == 0
    finally:
        served.close()


# (metric, labels) -> how much a scripted run moves it; see the script below.
def _expected(
    ok: int, failed: int, errors: int, silent: int
) -> dict[tuple[str, tuple[Any, ...]], int]:
    connects = ok + failed + errors + silent
    return {
        ("roomcast_connects_total", ()): connects,
        ("roomcast_authentications_total", (("outcome", "ok"),)): ok,
        ("roomcast_authentications_total", (("outcome", "failed"),)): failed,
        ("roomcast_authentications_total", (("outcome", "error"),)): errors,
        ("roomcast_authentications_total", (("outcome", "timeout"),)): silent,
        ("roomcast_closes_total", (("code", "4003"),)): failed + errors,
        ("roomcast_closes_total", (("code", "4001"),)): silent,
        ("roomcast_messages_received_total", (("kind", "authenticate"),)): ok + failed + errors,
        ("roomcast_messages_received_total", (("kind", "heartbeat"),)): 2 * ok,
        ("roomcast_messages_received_total", (("kind", "join"),)): ok,
        ("roomcast_messages_received_total", (("kind", "leave"),)): ok,
        ("roomcast_messages_received_total", (("kind", "custom"),)): ok,
        ("roomcast_messages_received_total", (("kind", "invalid"),)): ok,
        # connected + the whoami reply + "Invalid message format" per ok client, one error
        # event per refused one; every message is one frame (no pings in this run).
        ("roomcast_deliveries_total", ()): 3 * ok + failed + errors,
        ("roomcast_sent_frames_total", ()): 3 * ok + failed + errors,
        ("roomcast_deliveries_skipped_total", ()): 0,
    }


def test_metrics_counters_move_by_what_a_scripted_run_causes_summed_over_workers(
    redis_server, tmp_path
):
    served = serve_workers(tmp_path, redis_server.url, 3, "--auth-timeout-ms", "1500")
    try:
        port = served.listening_port()
        url = f"ws://127.0.0.1:{port}/ws"
        metrics = f"http://127.0.0.1:{port}/metrics"
        ok, failed, errors, silent = 30, 5, 4, 3
        expected = _expected(ok, failed, errors, silent)

        async def body() -> None:
            before = scrape(metrics)
            members = await connect_many(url, [f"s{i}" for i in range(ok)])
            await whoami(members)  # one custom event each, and a reply
            assert len({m.pid for m in members}) > 1
            for m in members:
                await send(m.ws, {"event": "heartbeat"})
                await send(m.ws, {"event": "heartbeat"})
                await send(m.ws, {"event": "join", "data": {"rooms": ["lobby"]}})
                await send(m.ws, {"event": "leave", "data": {"rooms": ["lobby"]}})
                await m.ws.send("not json")
            await eventually(
                lambda: all(any(x["event"] == "error" for x in m.inbox) for m in members),
                WAIT,
                "every invalid-format error event",
            )

            async def refused(token: str) -> int | None:
                ws = await open_client(url)
                await send(
                    ws, {"event": "authenticate", "data": {"type": "Bearer", "token": token}}
                )
                code, _, _ = await closed_with(ws)
                return code

            codes = await asyncio.gather(
                *(refused("bad") for _ in range(failed)), *(refused("raise") for _ in range(errors))
            )
            assert codes == [4003] * (failed + errors)
            silent_clients = [await open_client(url) for _ in range(silent)]
            for ws in silent_clients:
                assert (await closed_with(ws))[0] == 4001
            bytes_before = value(before, "roomcast_sent_bytes_total")
            moved: dict[Any, float] = {}

            def all_moved() -> bool:
                now = scrape(metrics)
                moved.clear()
                for key in expected:
                    moved[key] = now.get(key, 0.0) - before.get(key, 0.0)
                moved["bytes"] = value(now, "roomcast_sent_bytes_total") - bytes_before
                return all(moved[k] == v for k, v in expected.items())

            try:
                await eventually(all_moved, WAIT, "the counters to move by the script's amounts")
            except AssertionError:
                raise AssertionError(
                    {k: (moved.get(k), v) for k, v in expected.items() if moved.get(k) != v}
                ) from None
            assert moved["bytes"] > 0
            # Logins with Redis wait for their subscriptions (the join barrier): at least the
            # first one on each worker that took a client.
            waits = value(scrape(metrics), "roomcast_subscribe_waits_total")
            workers = len({m.pid for m in members})
            assert waits - value(before, "roomcast_subscribe_waits_total") >= workers
            lag = value(scrape(metrics), "roomcast_event_loop_lag_seconds_count")
            assert lag > 0
            for m in members:
                await m.ws.close()

        run(body(), timeout=90)
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=STARTUP_TIMEOUT) == 0
    finally:
        served.close()


def test_library_server_answers_health_and_metrics_when_asked():
    async def body() -> None:
        helper = WebSocketServerHelper("lib", "/ws", "memory://", token_auth)
        server = await helper.serve("127.0.0.1", 0, health=True, metrics=True)
        try:
            base = f"http://127.0.0.1:{server.bound_port}"
            url = f"ws://127.0.0.1:{server.bound_port}/ws"
            loop = asyncio.get_running_loop()

            def get(path: str) -> tuple[int, bytes]:
                return http_get(base + path)

            assert await loop.run_in_executor(None, get, "/health") == (200, b'{"status":"ok"}')
            ws, _ = await authed(url, "user:ann")
            await send(ws, {"event": "join", "data": {"rooms": ["x"]}})
            await send(ws, {"event": "chat"})
            await send(ws, {"event": "heartbeat"})
            samples = await loop.run_in_executor(None, scrape, base + "/metrics")
            # Read at scrape time, in this process: exact at once.
            assert value(samples, "roomcast_connects_total") == 1
            assert value(samples, "roomcast_connections", state="authenticated") == 1
            assert value(samples, "roomcast_authentications_total", outcome="ok") == 1
            assert value(samples, "roomcast_messages_received_total", kind="custom") == 1
            assert value(samples, "roomcast_users") == 1
            assert value(samples, "roomcast_deliveries_total") == 1  # connected
            await ws.close()
            # Other paths still reach the application's handler (here: none, 404).
            assert (await loop.run_in_executor(None, get, "/other"))[0] == 404
            helper.stop_accepting()  # what shutdown does first
            status, raw = await loop.run_in_executor(None, get, "/health")
            assert (status, orjson.loads(raw)) == (503, {"status": "degraded", "accepting": False})
        finally:
            await server.stop()
            await helper.shutdown()

    run(body())


def test_library_server_without_the_endpoints_leaves_them_to_the_application():
    async def body() -> None:
        async with running() as node:
            loop = asyncio.get_running_loop()
            for path in ("/health", "/metrics"):
                url = f"http://127.0.0.1:{node.port}{path}"
                assert (await loop.run_in_executor(None, http_get, url))[0] == 404

    run(body())


def test_single_process_metrics_port_serves_metrics_and_health(tmp_path):
    from redis_support import free_port

    metrics_port = free_port()
    served = Served(
        ["--port", "0", "--jwt-secret", SECRET, "--metrics-port", str(metrics_port)],
        tmp_path,
        tmp_path / "stderr.log",
    )
    try:
        port = served.listening_port()
        assert http_get(f"http://127.0.0.1:{port}/metrics")[0] == 404
        assert http_get(f"http://127.0.0.1:{metrics_port}/health") == (200, b'{"status":"ok"}')

        async def body() -> None:
            ws = await open_client(f"ws://127.0.0.1:{port}/ws")
            await send(ws, {"event": "authenticate", "data": {"token": "nope"}})
            assert (await recv(ws))["data"] == {"message": "Authentication failed"}
            await ws.close()

        run(body())
        samples = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert value(samples, "roomcast_authentications_total", outcome="failed") == 1
        assert value(samples, "roomcast_closes_total", code="4003") == 1
    finally:
        served.close()


def test_the_limits_counters_are_in_metrics():
    async def body() -> None:
        # 5 messages at once, then one a second: the sends below take far less than a second
        options = {"max_rooms_per_client": 2, "rate_limit_messages": 1, "rate_limit_burst": 5}
        helper = WebSocketServerHelper(
            "lib",
            "/ws",
            "memory://",
            token_auth,
            validate_room_fn=lambda client_id, user_id, rooms: rooms,
            default_rooms=[],
            server_options=options,
        )
        server = await helper.serve("127.0.0.1", 0, metrics=True)
        try:
            base = f"http://127.0.0.1:{server.bound_port}"
            ws, _ = await authed(f"ws://127.0.0.1:{server.bound_port}/ws", "user:ann")
            await send(ws, {"event": "join", "data": {"rooms": ["a", "b"]}})
            assert await recv(ws) == {"event": "error", "data": {"message": "Room limit reached"}}
            # authenticate, join and 3 heartbeats pass (5 in the burst); 3 more are dropped,
            # the first of them answered
            for _ in range(6):
                await send(ws, {"event": "heartbeat"})
            assert await recv(ws) == {"event": "error", "data": {"message": "Rate limit exceeded"}}
            loop = asyncio.get_running_loop()
            samples = await loop.run_in_executor(None, scrape, base + "/metrics")
            assert value(samples, "roomcast_room_limit_refused_total") == 1
            assert value(samples, "roomcast_rate_limited_total") == 3
            assert value(samples, "roomcast_presence_coalesced_total") == 0
            await ws.close()
        finally:
            await server.stop()
            await helper.shutdown()

    run(body())
