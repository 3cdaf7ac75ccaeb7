"""Per-client encryption over real sockets: handshake, refusals, delivery, inbound events.

Clients here decrypt with the `cryptography` package directly (`IndependentClient`), not with
roomcast's helper, so a mistake shared by both sides of roomcast.crypto would still show.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time

import pytest
from encryption_support import encrypted_client
from roomcast.crypto import EcdhClient, EcdhScheme
from support import (
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

# -- handshake ---------------------------------------------------------------------------------


@pytest.mark.parametrize("native", [True, False])
def test_handshake_puts_key_material_in_connected_and_messages_decrypt(native):
    scheme = EcdhScheme(native=native)

    async def body():
        async with running(encryption=scheme, require_encryption=True) as node:
            ws, data, crypto = await encrypted_client(node.url, "user:alice")
            assert set(data) == {"id", "userId", "time", "serverPublicKey", "salt"}
            assert data["serverPublicKey"] == scheme.public_key
            client = node.helper.get_clients(data["id"])
            assert client.encrypted and client.state == "authenticated"
            assert (client.server_public_key, client.salt) == (
                data["serverPublicKey"],
                data["salt"],
            )
            assert node.helper.send_to_client(data["id"], "dm", {"text": "héllo"}) == 1
            assert crypto.open(await recv(ws)) == {"event": "dm", "data": {"text": "héllo"}}
            node.helper.send_to_room("ws-default", "no-data")
            assert crypto.open(await recv(ws)) == {"event": "no-data"}
            node.helper.broadcast("null", None)
            assert crypto.open(await recv(ws)) == {"event": "null", "data": None}
            await ws.close()

    run(body())


def test_two_clients_get_different_salts_and_keys():
    async def body():
        async with running(encryption=EcdhScheme(), require_encryption=True) as node:
            a, da, ca = await encrypted_client(node.url, "user:a")
            b, db, cb = await encrypted_client(node.url, "user:b")
            assert da["salt"] != db["salt"]
            node.helper.send_to_client(da["id"], "only-a", 1)
            message = await recv(a)
            assert ca.open(message) == {"event": "only-a", "data": 1}
            with pytest.raises(Exception):  # noqa: B017 (InvalidTag)
                cb.open(message)
            await a.close()
            await b.close()

    run(body())


@pytest.mark.parametrize(
    "public_key",
    [None, "not base64!", base64.b64encode(b"\x04" + bytes(64)).decode(), "AAAA"],
)
def test_built_in_scheme_refuses_a_missing_or_bad_public_key_with_4004(public_key):
    async def body():
        async with running(encryption=EcdhScheme(), require_encryption=True) as node:
            ws = await open_client(node.url)
            data = {"token": "user:a"} | ({"publicKey": public_key} if public_key else {})
            await send(ws, {"event": "authenticate", "data": data})
            code, reason, messages = await closed_with(ws)
            assert messages == [
                {"event": "error", "data": {"message": "Encryption handshake failed"}}
            ]
            assert (code, reason) == (4004, "Encryption required")
            await eventually(lambda: node.helper.get_clients() == {})
            assert len(node.helper.encryption) == 0

    run(body())


def test_failed_authentication_never_runs_the_handshake():
    calls = []

    def handshake_fn(client_id, user_id, data):
        calls.append(client_id)
        return {"server_public_key": "k", "salt": "s"}

    async def body():
        async with running(
            handshake_fn=handshake_fn, outbound_transformer=lambda **kw: None
        ) as node:
            ws = await open_client(node.url)
            await send(ws, {"event": "authenticate", "data": {"token": "bad", "publicKey": "k"}})
            code, _, _ = await closed_with(ws)
            assert code == 4003 and calls == []

    run(body())


def test_handshake_fn_gets_the_authenticate_data_and_the_user_id():
    calls = []

    async def handshake_fn(client_id, user_id, data):
        calls.append((client_id, user_id, data))
        return {"server_public_key": "spk", "salt": "salt"}

    async def body():
        async with running(
            handshake_fn=handshake_fn,
            outbound_transformer=lambda client, event, data: {"event": "wrapped", "data": event},
            require_encryption=True,
        ) as node:
            ws = await open_client(node.url)
            auth = {"type": "Bearer", "token": "user:zed", "publicKey": "pk", "extra": 1}
            await send(ws, {"event": "authenticate", "data": auth})
            connected = await recv(ws)
            assert connected["data"]["serverPublicKey"] == "spk"
            assert connected["data"]["salt"] == "salt"
            assert calls == [(connected["data"]["id"], "zed", auth)]
            node.helper.send_to_client(connected["data"]["id"], "x", 1)
            assert await recv(ws) == {"event": "wrapped", "data": "x"}
            await ws.close()

    run(body())


def test_slow_handshake_counts_against_the_in_progress_auth_timeout_and_leaves_no_key():
    scheme = EcdhScheme()

    finished: list[bool] = []

    async def slow_handshake(client_id, user_id, data):
        await asyncio.sleep(0.8)  # past 3 x auth_timeout
        try:
            return scheme.handshake_fn(client_id, user_id, data)
        finally:
            finished.append(True)

    async def body():
        async with running(
            auth_timeout=0.1,
            encryption=scheme,
            handshake_fn=slow_handshake,
            require_encryption=True,
        ) as node:
            ws = await open_client(node.url)
            auth = EcdhClient().authenticate_data("user:slow")
            await send(ws, {"event": "authenticate", "data": auth})
            started = time.monotonic()
            code, reason, messages = await closed_with(ws)
            assert (code, reason, messages) == (4001, "Authentication timeout", [])
            assert time.monotonic() - started < 0.7
            await eventually(lambda: bool(finished))  # the handshake ends after the client left
            await asyncio.sleep(0)  # the helper acts on its outcome in the same task step
            assert len(scheme) == 0

    run(body())


def test_opt_in_encryption_only_for_clients_that_offer_a_public_key():
    async def body():
        async with running(encryption=EcdhScheme()) as node:
            plain, plain_data = await authed(node.url, "user:plain")
            assert "serverPublicKey" not in plain_data
            enc, _, crypto = await encrypted_client(node.url, "user:enc")
            node.helper.broadcast("news", 1)
            assert await recv(plain) == {"event": "news", "data": 1}
            assert crypto.open(await recv(enc)) == {"event": "news", "data": 1}
            assert not node.helper.get_clients(plain_data["id"]).encrypted
            await plain.close()
            await enc.close()

    run(body())


def test_require_encryption_alone_starts_and_closes_every_client_4004_only():
    async def body():
        async with running(require_encryption=True) as node:
            ws = await open_client(node.url)
            await send(ws, {"event": "authenticate", "data": {"token": "user:a"}})
            assert await closed_with(ws) == (4004, "Encryption required", [])

    run(body())


def test_encryption_configured_without_a_transformer_is_refused_at_start_up():
    async def body():
        with pytest.raises(ValueError, match="outbound_transformer is missing"):
            async with running(handshake_fn=lambda **kw: {}):
                pass

    run(body())


# -- delivery ------------------------------------------------------------------------------------


def test_mixed_room_each_client_gets_its_form_exactly_once():
    async def body():
        async with running(
            encryption=EcdhScheme(), validate_room_fn=lambda **kw: kw["rooms"]
        ) as node:
            plain = [await authed(node.url, f"user:p{i}") for i in range(3)]
            enc = [await encrypted_client(node.url, f"user:e{i}") for i in range(3)]
            for ws, *_ in plain + enc:
                await send(ws, {"event": "join", "data": {"rooms": ["mix"]}})
            await eventually(lambda: len(node.helper.get_clients_by_room("mix")) == 6)
            excluded = [plain[0][1]["id"], enc[0][1]["id"]]
            assert node.helper.send_to_room("mix", "room", {"n": 1}) == 6
            assert node.helper.send_to_room("mix", "room", {"n": 2}, exclude=excluded) == 4
            assert node.helper.broadcast("all", [3]) == 6
            node.helper.send_to_user("e1", "user", "u")
            node.helper.send_to_user("p1", "user", "u")

            def expected(i):
                out = [{"event": "room", "data": {"n": 1}}]
                out += [{"event": "room", "data": {"n": 2}}] if i else []
                out += [{"event": "all", "data": [3]}]
                return out + ([{"event": "user", "data": "u"}] if i == 1 else [])

            for i, (ws, _) in enumerate(plain):
                assert [await recv(ws) for _ in expected(i)] == expected(i)
            for i, (ws, _, crypto) in enumerate(enc):
                raw = [await recv(ws) for _ in expected(i)]
                assert all(m["event"] == "encrypted" for m in raw)
                assert [crypto.open(m) for m in raw] == expected(i)
            for ws, *_ in plain + enc:
                await nothing_more(ws, 0.2)
                await ws.close()

    run(body())


def test_encrypted_client_gets_messages_in_order_across_every_kind_of_send():
    async def body():
        async with running(encryption=EcdhScheme()) as node:
            ws, data, crypto = await encrypted_client(node.url)
            for i in range(60):
                kind = i % 4
                if kind == 0:
                    node.helper.broadcast("n", i)
                elif kind == 1:
                    node.helper.send_to_client(data["id"], "n", i)
                elif kind == 2:
                    node.helper.send_to_room("ws-default", "n", i)
                else:
                    node.helper.send(data["id"], {"topic": "n", "data": i})
                if i % 7 == 0:
                    await asyncio.sleep(0)
            got = [crypto.open(await recv(ws))["data"] for _ in range(60)]
            assert got == list(range(60))
            await ws.close()

    run(body())


def test_async_transformer_runs_at_most_batch_limit_at_once_and_none_drops():
    in_flight = 0
    peak = 0

    async def transformer(client, event, data):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        if event == "drop":
            return None
        return {"event": "sealed", "data": [event, data]}

    def handshake_fn(client_id, user_id, data):
        return {"server_public_key": "k", "salt": "s"}

    async def body():
        async with running(
            handshake_fn=handshake_fn,
            outbound_transformer=transformer,
            require_encryption=True,
            encrypted_batch_limit=3,
        ) as node:
            clients = []
            for i in range(12):
                ws = await open_client(node.url)
                await send(ws, {"event": "authenticate", "data": {"token": f"user:u{i}"}})
                assert (await recv(ws))["event"] == "connected"
                clients.append(ws)
            node.helper.broadcast("drop", 0)
            node.helper.broadcast("keep", 1)
            for ws in clients:
                assert await recv(ws) == {"event": "sealed", "data": ["keep", 1]}
            assert peak == 3
            for ws in clients:
                await ws.close()

    run(body())


def test_sealing_a_large_fan_out_gives_the_event_loop_back():
    scheme = EcdhScheme(native=False)  # the slower path, to have something to slice

    async def body():
        async with running(encryption=scheme, require_encryption=True) as node:
            clients = [await encrypted_client(node.url, f"user:u{i}") for i in range(60)]
            loop = asyncio.get_running_loop()
            ticks = []

            def tick():
                ticks.append(time.perf_counter())
                if len(ticks) < 100_000:
                    handle[0] = loop.call_soon(tick)

            handle = [loop.call_soon(tick)]
            pad = "x" * 100_000
            node.helper.broadcast("big", {"pad": pad})
            started = time.perf_counter()
            ticks.clear()
            await eventually(lambda: node.helper.sealing_idle, timeout=20)
            finished = time.perf_counter()
            handle[0].cancel()
            during = [t for t in ticks if t < finished]
            # Sealing 60 x 100 kB takes tens of ms; the loop kept turning throughout.
            assert len(during) >= 5, (len(during), finished - started)
            gaps = [b - a for a, b in zip([started, *during], during, strict=False)]
            assert max(gaps) < 0.05, max(gaps)
            for ws, _, crypto in clients:
                assert crypto.open(await recv(ws, 10)) == {"event": "big", "data": {"pad": pad}}
                await ws.close()

    run(body(), timeout=60)


def test_a_room_of_a_thousand_encrypted_clients_does_not_freeze_the_loop():
    """While one message is sealed for 1,000 clients, the loop keeps turning and a plaintext
    client's request is answered before the fan-out is over."""
    finished: list[float] = []
    helper_box = []

    def on_message(client_id, user_id, message):
        if message["event"] == "ping":
            helper_box[0].send_to_client(client_id, "pong", message["data"])

    async def body():
        async with running(encryption=EcdhScheme(), message_handler=on_message) as node:
            helper_box.append(node.helper)
            clients = await asyncio.gather(
                *(encrypted_client(node.url, f"user:e{i}") for i in range(1000))
            )
            probe, _ = await authed(node.url, "user:probe")
            loop = asyncio.get_running_loop()
            ticks: list[float] = []

            def tick():
                ticks.append(time.perf_counter())
                if not finished:
                    loop.call_soon(tick)

            async def watch():
                while not node.helper.sealing_idle:
                    await asyncio.sleep(0.001)
                finished.append(time.perf_counter())

            pad = "x" * 32_000
            started = time.perf_counter()
            assert node.helper.send_to_room("ws-default", "big", {"pad": pad}) == 1001
            loop.call_soon(tick)
            watcher = asyncio.ensure_future(watch())
            await send(probe, {"event": "ping", "data": 1})
            assert await recv(probe) == {"event": "big", "data": {"pad": pad}}
            assert await recv(probe) == {"event": "pong", "data": 1}
            ponged = time.perf_counter()
            await watcher
            # Sealing 1,000 x 32 kB and writing it takes ~100 ms; in one go it would block
            # the loop all that time.
            assert ponged < finished[0], (ponged - started, finished[0] - started)
            gaps = [b - a for a, b in zip([started, *ticks], ticks, strict=False)]
            # Relative, so a loaded machine (which slows both) cannot flip it: sealed in one
            # go, the longest stall would be the whole fan-out.
            assert max(gaps) < (finished[0] - started) / 3, (max(gaps), finished[0] - started)
            for ws, _, crypto in clients:
                assert crypto.open(await recv(ws, 20)) == {"event": "big", "data": {"pad": pad}}
            await asyncio.gather(*(ws.close() for ws, *_ in clients), probe.close())

    run(body(), timeout=120)


# -- inbound encrypted events ----------------------------------------------------------------------


def test_encrypted_custom_event_reaches_message_handler_in_clear():
    seen = []

    async def body():
        async with running(
            encryption=EcdhScheme(),
            message_handler=lambda **kw: seen.append((kw["client_id"], kw["message"])),
            validate_room_fn=lambda **kw: kw["rooms"],
        ) as node:
            ws, data, crypto = await encrypted_client(node.url)
            await send(ws, crypto.seal("chat", {"text": "secret"}))
            await send(ws, crypto.seal("join", {"rooms": ["hidden"]}))
            await send(ws, crypto.seal("heartbeat", None))
            await eventually(lambda: "hidden" in node.helper.get_clients(data["id"]).rooms)
            await eventually(lambda: len(seen) == 1)
            assert seen == [(data["id"], {"event": "chat", "data": {"text": "secret"}})]
            node.helper.send_to_room("hidden", "reply", "ok")
            assert crypto.open(await recv(ws)) == {"event": "reply", "data": "ok"}
            await ws.close()

    run(body())


def test_inner_system_events_are_handled_like_clear_ones():
    seen = []

    async def body():
        async with running(
            encryption=EcdhScheme(), message_handler=lambda **kw: seen.append(kw["message"])
        ) as node:
            ws, _, crypto = await encrypted_client(node.url)
            await send(ws, crypto.seal("authenticate", {"token": "user:x"}))
            assert crypto.open(await recv(ws)) == {
                "event": "error",
                "data": {"message": "Already authenticated"},
            }
            inner = crypto.seal("chat", 1)
            nested = crypto.seal("encrypted", inner["data"])
            for message in (crypto.seal("connected", {}), crypto.seal("error", {}), nested):
                await send(ws, message)
            await nothing_more(ws)
            assert seen == []
            await ws.close()

    run(body())


def test_encrypted_event_that_cannot_be_opened_gets_decryption_failed():
    seen = []

    async def body():
        async with running(
            encryption=EcdhScheme(), message_handler=lambda **kw: seen.append(kw["message"])
        ) as node:
            ws, _, crypto = await encrypted_client(node.url)
            good = crypto.seal("chat", 1)
            ct = bytearray(base64.b64decode(good["data"]["ct"]))
            ct[-1] ^= 1
            tampered = {"iv": good["data"]["iv"], "ct": base64.b64encode(bytes(ct)).decode()}
            for data in (tampered, {"iv": "AAAA", "ct": "AAAA"}, "junk", None):
                await send(ws, {"event": "encrypted", "data": data})
                assert crypto.open(await recv(ws)) == {
                    "event": "error",
                    "data": {"message": "Decryption failed"},
                }
            iv = os.urandom(12)
            assert crypto.aes is not None
            not_object = crypto.aes.encrypt(iv, b"[1,2]", None)
            b64 = base64.b64encode
            await send(
                ws,
                {
                    "event": "encrypted",
                    "data": {"iv": b64(iv).decode(), "ct": b64(not_object).decode()},
                },
            )
            assert crypto.open(await recv(ws)) == {
                "event": "error",
                "data": {"message": "Invalid message format"},
            }
            await send(ws, good)  # the connection is still usable
            await eventually(lambda: seen == [{"event": "chat", "data": 1}])
            plain, _ = await authed(node.url, "user:plain")
            await send(plain, good)
            assert await recv(plain) == {"event": "error", "data": {"message": "Decryption failed"}}
            await plain.close()
            await ws.close()

    run(body())


def test_without_a_scheme_inbound_encrypted_goes_to_message_handler_as_is():
    seen = []

    async def body():
        async with running(message_handler=lambda **kw: seen.append(kw["message"])) as node:
            ws, _ = await authed(node.url)
            await send(ws, {"event": "encrypted", "data": {"iv": "x", "ct": "y"}})
            await eventually(lambda: len(seen) == 1)
            assert seen == [{"event": "encrypted", "data": {"iv": "x", "ct": "y"}}]
            await ws.close()

    run(body())


# -- keys at disconnect ---------------------------------------------------------------------------


def test_keys_are_dropped_at_disconnect_and_at_shutdown():
    scheme = EcdhScheme()

    async def body():
        async with running(encryption=scheme) as node:
            a, *_ = await encrypted_client(node.url, "user:a")
            b, *_ = await encrypted_client(node.url, "user:b")
            assert len(scheme) == 2
            await a.close()
            await eventually(lambda: len(scheme) == 1)
        assert len(scheme) == 0
        await b.close()

    run(body())


def test_bound_scheme_methods_bring_the_scheme_along():
    scheme = EcdhScheme()

    async def body():
        async with running(
            handshake_fn=scheme.handshake_fn, outbound_transformer=scheme.outbound_transformer
        ) as node:
            assert node.helper.encryption is scheme
            ws, *_ = await encrypted_client(node.url)
            assert len(scheme) == 1
            await ws.close()
            await eventually(lambda: len(scheme) == 0)

    run(body())


def test_enable_client_encryption_without_a_transformer_is_refused():
    async def body():
        async with running() as node:
            ws, data = await authed(node.url)
            with pytest.raises(ValueError, match="outbound_transformer"):
                node.helper.enable_client_encryption(data["id"])
            await ws.close()

    run(body())
