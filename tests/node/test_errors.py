"""One test per row of the seed's error table that one node can show."""

from __future__ import annotations

import asyncio
import base64
import os

import pytest
from roomcast import WebSocketServerHelper
from support import (
    RawClient,
    authed,
    closed_with,
    eventually,
    nothing_more,
    open_client,
    recv,
    run,
    running,
    send,
)


def transformer(client, event, data):
    return {"event": "encrypted", "data": {"sealed": [event, data]}}


def test_invalid_json_gets_error_event_and_connection_stays_open():
    async def body():
        async with running() as node:
            ws = await open_client(node.url)
            await ws.send("{not json")
            assert await recv(ws) == {
                "event": "error",
                "data": {"message": "Invalid message format"},
            }
            await send(ws, {"event": "authenticate", "data": {"token": "user:a"}})
            assert (await recv(ws))["event"] == "connected"
            await ws.close()

    run(body())


@pytest.mark.parametrize("raw", ["null", "5", "[]", '"text"', "true"])
def test_json_that_is_not_an_object_gets_invalid_message_format(raw):
    async def body():
        async with running() as node:
            ws, _ = await authed(node.url)
            await ws.send(raw)
            assert await recv(ws) == {
                "event": "error",
                "data": {"message": "Invalid message format"},
            }
            await ws.close()

    run(body())


def test_message_without_event_is_dropped_silently():
    async def body():
        async with running() as node:
            ws = await open_client(node.url)
            await send(ws, {"data": {"x": 1}})
            await send(ws, {"event": "", "data": 1})
            await ws.send("{bad")  # the next thing the client hears must be this error
            assert await recv(ws) == {
                "event": "error",
                "data": {"message": "Invalid message format"},
            }
            await ws.close()

    run(body())


def test_authenticate_twice_gets_already_authenticated():
    async def body():
        async with running() as node:
            ws, _ = await authed(node.url)
            await send(ws, {"event": "authenticate", "data": {"token": "user:alice"}})
            assert await recv(ws) == {
                "event": "error",
                "data": {"message": "Already authenticated"},
            }
            await ws.close()

    run(body())


def test_authenticate_while_authenticating_gets_already_authenticated():
    gate = asyncio.Event()

    async def slow_auth(data):
        await gate.wait()
        return {"user_id": "u"}

    async def body():
        async with running(authenticate_fn=slow_auth) as node:
            ws = await open_client(node.url)
            await send(ws, {"event": "authenticate", "data": {"token": "x"}})
            await send(ws, {"event": "authenticate", "data": {"token": "x"}})
            assert await recv(ws) == {
                "event": "error",
                "data": {"message": "Already authenticated"},
            }
            gate.set()
            assert (await recv(ws))["event"] == "connected"
            await ws.close()

    run(body())


@pytest.mark.parametrize("event", ["join", "leave", "chat", "connected", "encrypted"])
def test_events_before_authentication_get_not_authenticated(event):
    async def body():
        async with running(validate_room_fn=lambda **kw: kw["rooms"]) as node:
            ws = await open_client(node.url)
            await send(ws, {"event": event, "data": {"rooms": ["a"]}})
            assert await recv(ws) == {"event": "error", "data": {"message": "Not authenticated"}}
            await ws.close()

    run(body())


def test_heartbeat_before_authentication_is_accepted_silently():
    async def body():
        async with running() as node:
            ws = await open_client(node.url)
            await send(ws, {"event": "heartbeat"})
            await nothing_more(ws)
            await ws.close()

    run(body())


@pytest.mark.parametrize("result", [None, False])
def test_refused_authentication_sends_error_then_closes_4003(result):
    async def body():
        async with running(authenticate_fn=lambda data: result) as node:
            ws = await open_client(node.url)
            await send(ws, {"event": "authenticate", "data": {"token": "bad"}})
            code, reason, messages = await closed_with(ws)
            assert messages == [{"event": "error", "data": {"message": "Authentication failed"}}]
            assert (code, reason) == (4003, "Authentication failed")

    run(body())


@pytest.mark.parametrize("is_async", [False, True])
def test_authenticate_fn_raising_sends_authentication_error_then_closes_4003(is_async):
    def boom(data):
        raise RuntimeError("database down")

    async def aboom(data):
        raise RuntimeError("database down")

    async def body():
        async with running(authenticate_fn=aboom if is_async else boom) as node:
            ws = await open_client(node.url)
            await send(ws, {"event": "authenticate", "data": {"token": "x"}})
            code, reason, messages = await closed_with(ws)
            assert messages == [{"event": "error", "data": {"message": "Authentication error"}}]
            assert (code, reason) == (4003, "Authentication failed")

    run(body())


@pytest.mark.parametrize("refusal", ["none", "false", "raises"])
def test_refused_handshake_sends_error_then_closes_4004(refusal):
    def handshake_fn(client_id, user_id, data):
        if refusal == "raises":
            raise ValueError("bad key")
        return None if refusal == "none" else False

    async def body():
        async with running(
            require_encryption=True, handshake_fn=handshake_fn, outbound_transformer=transformer
        ) as node:
            ws = await open_client(node.url)
            await send(ws, {"event": "authenticate", "data": {"token": "user:a", "publicKey": "k"}})
            code, reason, messages = await closed_with(ws)
            assert messages == [
                {"event": "error", "data": {"message": "Encryption handshake failed"}}
            ]
            assert (code, reason) == (4004, "Encryption required")

    run(body())


def test_require_encryption_without_handshake_fn_closes_4004_only():
    async def body():
        async with running(require_encryption=True, outbound_transformer=transformer) as node:
            ws = await open_client(node.url)
            await send(ws, {"event": "authenticate", "data": {"token": "user:a"}})
            code, reason, messages = await closed_with(ws)
            assert messages == []
            assert (code, reason) == (4004, "Encryption required")

    run(body())


def test_no_authenticate_within_auth_timeout_closes_4001_only():
    async def body():
        async with running(auth_timeout=0.3) as node:
            ws = await open_client(node.url)
            code, reason, messages = await closed_with(ws)
            assert messages == []
            assert (code, reason) == (4001, "Authentication timeout")
            assert node.helper.get_clients() == {}

    run(body())


def test_authenticate_still_running_after_three_auth_timeouts_closes_4001_only():
    async def never(data):
        await asyncio.sleep(30)

    async def body():
        async with running(authenticate_fn=never, auth_timeout=0.2) as node:
            ws = await open_client(node.url)
            loop = asyncio.get_running_loop()
            await send(ws, {"event": "authenticate", "data": {"token": "x"}})
            started = loop.time()
            code, reason, messages = await closed_with(ws)
            assert messages == []
            assert (code, reason) == (4001, "Authentication timeout")
            # Not the initial timeout (0.2 s): the in-progress one (3 x 0.2 s) fired.
            assert loop.time() - started >= 0.5

    run(body())


def test_slow_handshake_counts_against_the_in_progress_timeout():
    async def slow_handshake(client_id, user_id, data):
        await asyncio.sleep(30)
        return {"server_public_key": "k", "salt": "s"}

    async def body():
        async with running(
            auth_timeout=0.2,
            require_encryption=True,
            handshake_fn=slow_handshake,
            outbound_transformer=transformer,
        ) as node:
            ws = await open_client(node.url)
            await send(ws, {"event": "authenticate", "data": {"token": "user:a", "publicKey": "k"}})
            code, reason, messages = await closed_with(ws)
            assert (code, reason, messages) == (4001, "Authentication timeout", [])

    run(body())


def test_silent_authenticated_client_closes_4002_only():
    async def body():
        async with running(heartbeat_timeout=0.4) as node:
            ws, _ = await authed(node.url)
            code, reason, messages = await closed_with(ws)
            assert messages == []
            assert (code, reason) == (4002, "Heartbeat timeout")

    run(body())


def test_any_frame_keeps_an_authenticated_client_alive():
    async def body():
        async with running(
            heartbeat_timeout=0.5, validate_room_fn=lambda **kw: kw["rooms"]
        ) as node:
            ws, _ = await authed(node.url)
            for _ in range(8):  # 1.2 s in all, well past the timeout
                await asyncio.sleep(0.15)
                await send(ws, {"event": "custom", "data": 1})
            assert len(node.helper.get_clients()) == 1
            code, _, _ = await closed_with(ws)
            assert code == 4002

    run(body())


def test_shutdown_closes_every_client_with_1001():
    async def body():
        async with running() as node:
            first, _ = await authed(node.url)
            second = await open_client(node.url)  # not yet authenticated
            await node.helper.shutdown()
            for ws in (first, second):
                code, reason, _ = await closed_with(ws)
                assert (code, reason) == (1001, "Server shutting down")
            assert node.helper.get_clients() == {}

    run(body())


def test_missing_redis_connection_is_refused_at_construction():
    for missing in (None, ""):
        with pytest.raises(ValueError, match=r"^Invalid redis connection!$"):
            WebSocketServerHelper("t", "/ws", missing, lambda data: {})


def test_upgrade_that_cannot_complete_answers_500():
    async def body():
        async with running(server_options={"max_connections": 1}) as node:
            first = await open_client(node.url)
            raw, head = await RawClient.connect(node.port)
            assert head.startswith(b"HTTP/1.1 500")
            body_bytes = await raw.reader.read()
            assert body_bytes == b"WebSocket upgrade failed"
            await first.close()

    run(body())


def test_upgrade_after_shutdown_answers_500():
    async def body():
        async with running() as node:
            await node.helper.shutdown()
            raw, head = await RawClient.connect(node.port)
            assert head.startswith(b"HTTP/1.1 500")
            assert await raw.reader.read() == b"WebSocket upgrade failed"

    run(body())


def test_malformed_upgrade_request_answers_400():
    async def body():
        async with running() as node:
            _, head = await RawClient.connect(
                node.port, headers={"Upgrade": "websocket", "Connection": "Upgrade"}
            )
            assert head.startswith(b"HTTP/1.1 400")

    run(body())


def test_plain_http_request_gets_404_by_default():
    async def body():
        async with running() as node:
            _, head = await RawClient.connect(node.port, path="/health", headers={})
            assert head.startswith(b"HTTP/1.1 404")
            _, head = await RawClient.connect(node.port, path="/ws", headers={})
            assert head.startswith(b"HTTP/1.1 404")

    run(body())


def test_plain_http_request_goes_to_the_application_handler():
    from roomcast import HttpResponse

    def handler(request):
        if request.path == "/health":
            return HttpResponse.json({"status": "ok", "query": request.query})
        return None

    async def body():
        async with running(http_handler=handler) as node:
            raw, head = await RawClient.connect(node.port, path="/health?x=1", headers={})
            assert head.startswith(b"HTTP/1.1 200")
            assert b"application/json" in head
            assert await raw.reader.read() == b'{"status":"ok","query":"x=1"}'
            _, head = await RawClient.connect(node.port, path="/other", headers={})
            assert head.startswith(b"HTTP/1.1 404")

    run(body())


# -- frames: size, UTF-8, fragments, binary ------------------------------------------------


def test_message_over_max_payload_length_closes_1009():
    async def body():
        async with running(server_options={"max_payload_length": 1000}) as node:
            ws, _ = await authed(node.url)
            await ws.send("x" * 1001)
            code, _, _ = await closed_with(ws)
            assert code == 1009

    run(body())


def test_fragmented_message_over_max_payload_length_closes_1009():
    async def body():
        async with running(server_options={"max_payload_length": 1000}) as node:
            ws, _ = await authed(node.url)
            await ws.send(["x" * 600, "x" * 600])
            code, _, _ = await closed_with(ws)
            assert code == 1009

    run(body())


def test_fragmented_message_is_reassembled():
    seen = []

    async def body():
        async with running(message_handler=lambda **kw: seen.append(kw["message"])) as node:
            ws, _ = await authed(node.url)
            await ws.send(['{"event":"chat",', '"data":{"text":"', "héllo", '"}}'])
            await eventually(lambda: len(seen) == 1)
            assert seen == [{"event": "chat", "data": {"text": "héllo"}}]
            await ws.close()

    run(body())


def test_binary_message_is_accepted_as_json():
    seen = []

    async def body():
        async with running(message_handler=lambda **kw: seen.append(kw["message"])) as node:
            ws, _ = await authed(node.url)
            await ws.send(b'{"event":"chat","data":1}')
            await eventually(lambda: len(seen) == 1)
            assert seen == [{"event": "chat", "data": 1}]
            await ws.close()

    run(body())


def test_undecodable_binary_message_gets_invalid_message_format():
    async def body():
        async with running() as node:
            ws, _ = await authed(node.url)
            await ws.send(b'{"event":"\xff\xfe"}')
            assert await recv(ws) == {
                "event": "error",
                "data": {"message": "Invalid message format"},
            }
            await ws.close()

    run(body())


def test_text_message_with_invalid_utf8_closes_1007():
    async def body():
        async with running() as node:
            raw, head = await RawClient.connect(node.port)
            assert head.startswith(b"HTTP/1.1 101")
            raw.send_text(b'{"event":"heartbeat","data":"\xc3\x28"}')
            code, _ = await raw.read_close()
            assert code == 1007

    run(body())


def test_continuation_without_a_start_fails_the_connection():
    async def body():
        async with running() as node:
            raw, _ = await RawClient.connect(node.port)
            raw.send_frame(0x0, b"orphan")
            code, _ = await raw.read_close()
            assert code == 1002

    run(body())


def test_new_message_inside_a_fragmented_one_fails_the_connection():
    async def body():
        async with running() as node:
            raw, _ = await RawClient.connect(node.port)
            raw.send_frame(0x1, b'{"event":', fin=False)
            raw.send_frame(0x1, b'"heartbeat"}')
            code, _ = await raw.read_close()
            assert code == 1002

    run(body())


def test_ping_is_answered_and_control_frames_may_interleave_fragments():
    seen = []

    async def body():
        async with running(message_handler=lambda **kw: seen.append(kw["message"])) as node:
            raw, _ = await RawClient.connect(node.port)
            raw.send_text('{"event":"authenticate","data":{"token":"user:a"}}')
            opcode, payload = await raw.read_frame()
            assert opcode == 0x1 and b'"connected"' in payload
            raw.send_frame(0x1, b'{"event":"chat",', fin=False)
            raw.send_frame(0x9, b"p1")
            raw.send_frame(0x0, b'"data":2}')
            assert await raw.read_frame() == (0xA, b"p1")
            await eventually(lambda: len(seen) == 1)
            assert seen == [{"event": "chat", "data": 2}]
            raw.close()

    run(body())


def test_random_garbage_never_takes_the_server_down():
    async def body():
        async with running(validate_room_fn=lambda **kw: kw["rooms"]) as node:
            ws, _ = await authed(node.url)
            junk = [
                '{"event":"join","data":null}',
                '{"event":"join","data":{"rooms":"lobby"}}',
                '{"event":"join","data":{"rooms":[1,null,{},[]]}}',
                '{"event":"leave","data":5}',
                '{"event":5}',
                '{"event":null}',
                '{"event":"authenticate","data":"str"}',
                base64.b64encode(os.urandom(64)).decode(),
            ]
            for item in junk:
                await ws.send(item)
            await send(ws, {"event": "join", "data": {"rooms": ["ok"]}})
            [client] = node.helper.get_clients().values()
            await eventually(lambda: "ok" in client.rooms)
            await ws.close()

    run(body())
