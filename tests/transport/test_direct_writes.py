"""Batches sent straight to the socket from the Rust hub (plain uvloop TCP transports only):
order, exactly-once and backpressure stay what `transport.write` gave."""

from __future__ import annotations

import asyncio
import socket
import ssl

import orjson
import pytest
from roomcast import WebSocketServerHelper
from roomcast.transport.tls import server_context
from serving_support import make_certificates
from support import RawClient, authed, recv, run, running, token_auth


@pytest.fixture(autouse=True, params=["io_uring", "send"])
def write_path(request, monkeypatch):
    """Every test runs with a flush's direct writes submitted through io_uring (when there are
    16 or more; fewer go by send(2)), and with one send(2) each (the fallback where io_uring
    is missing or forbidden)."""
    monkeypatch.setenv("ROOMCAST_IO_URING", "1" if request.param == "io_uring" else "0")
    return request.param


def uses_ring(helper: WebSocketServerHelper, write_path: str) -> None:
    stats = helper.stats()
    if write_path == "io_uring" and not stats["io_uring"]:
        pytest.skip("io_uring is not available to this process")
    assert stats["io_uring"] == (write_path == "io_uring")


async def connected_raw(port: int, rcvbuf: int | None = None) -> RawClient:
    raw, head = await RawClient.connect(port, rcvbuf=rcvbuf)
    assert head.startswith(b"HTTP/1.1 101")
    auth = {"event": "authenticate", "data": {"type": "Bearer", "token": "user:slow"}}
    raw.send_text(orjson.dumps(auth))
    opcode, payload = await raw.read_frame()
    assert opcode == 0x1 and orjson.loads(payload)["event"] == "connected"
    return raw


async def numbers(raw: RawClient, count: int) -> list[int]:
    """The `data.i` of the next `count` frames, each a text frame."""
    seen = []
    for _ in range(count):
        opcode, payload = await raw.read_frame()
        assert opcode == 0x1
        seen.append(orjson.loads(payload)["data"]["i"])
    return seen


def test_a_plain_connection_gets_its_messages_straight_from_the_hub_in_order(write_path):
    async def body():
        async with running() as node:
            uses_ring(node.helper, write_path)
            ws, _ = await authed(node.url)
            before = node.helper.stats()["direct_writes"]
            for i in range(50):
                node.helper.broadcast("n", i)
                if i % 10 == 9:
                    await asyncio.sleep(0)  # several flushes, single and multi-frame
            assert [(await recv(ws))["data"] for _ in range(50)] == list(range(50))
            assert node.helper.stats()["direct_writes"] > before
            await ws.close()

    run(body())


def test_one_flush_to_many_connections_with_a_slow_one_among_them(write_path):
    """A fan-out's writes go out together (through the ring with io_uring: 16 or more); one
    reader with tiny buffers among twenty fast ones gets partial sends and EAGAIN, the others
    do not, and every client gets every message once and in order."""

    async def body():
        async with running() as node:
            uses_ring(node.helper, write_path)
            fast = [(await authed(node.url, f"user:f{i}"))[0] for i in range(20)]
            slow = await connected_raw(node.port, rcvbuf=4096)
            (slow_client,) = [c for c in node.helper.get_clients().values() if c.user_id == "slow"]
            sock = slow_client.transport.underlying_transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            pad = "y" * 700
            for i in range(300):
                node.helper.broadcast("n", {"i": i, "pad": pad})
                if i % 3 == 2:
                    await asyncio.sleep(0)  # flushes of one and of several messages
            stats = node.helper.stats()
            assert stats["skipped"] == 0
            if write_path == "io_uring":
                assert stats["ring_submits"] > 0
            for ws in fast:
                assert [(await recv(ws))["data"]["i"] for _ in range(300)] == list(range(300))
            assert await numbers(slow, 300) == list(range(300))
            for ws in fast:
                await ws.close()

    run(body())


@pytest.mark.parametrize(
    "fault",
    ["enter:0:7:16", "enter:0:0:12", "enter:1:5:11", "push:3"],
    ids=["enter-fails-after-7-EBUSY", "enter-fails-at-once-ENOMEM", "2nd-enter-EAGAIN", "push"],
)
def test_a_failed_ring_submission_loses_and_doubles_nothing_and_send_takes_over(
    write_path, monkeypatch, fault
):
    """A failure injected into the ring (`ROOMCAST_IO_URING_FAULT`, a switch for tests only,
    read when the hub is made): the flush it hits still delivers every write once, the ring
    is torn down, and the writes after it go by send(2)."""
    if write_path != "io_uring":
        pytest.skip("a failure of the ring")
    monkeypatch.setenv("ROOMCAST_IO_URING_FAULT", fault)

    async def body():
        async with running() as node:
            uses_ring(node.helper, write_path)
            clients = [(await authed(node.url, f"user:c{i}"))[0] for i in range(21)]
            for i in range(40):
                node.helper.broadcast("n", i)
                if i % 4 == 3:
                    await asyncio.sleep(0)  # several flushes, each to all 21
            for ws in clients:
                assert [(await recv(ws))["data"] for _ in range(40)] == list(range(40))
            stats = node.helper.stats()
            assert stats["io_uring"] == 0  # torn down: send(2) from now on
            assert stats["ring_submits"] == (2 if fault.startswith("enter:1:") else 1)
            # Nothing came twice: the next message each client gets is the next one sent.
            node.helper.broadcast("n", "end")
            for ws in clients:
                assert (await recv(ws))["data"] == "end"
            assert node.helper.stats()["ring_submits"] == stats["ring_submits"]
            for ws in clients:
                await ws.close()

    run(body())


def test_a_slow_reader_gets_every_message_once_in_order_across_partial_sends(write_path):
    """A 4 KB receive buffer: direct sends fill the socket, the rest goes to uvloop's
    buffer, later flushes must queue behind it; nothing is lost, doubled or reordered."""

    async def body():
        async with running() as node:
            uses_ring(node.helper, write_path)
            raw = await connected_raw(node.port, rcvbuf=4096)
            (client,) = node.helper.get_clients().values()
            transport = client.transport.underlying_transport
            # A small send buffer too, so that sends come back partial or EAGAIN soon.
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            pad = "x" * 1000
            for i in range(400):  # ~400 KB, under the 1 MiB backpressure limit
                node.helper.broadcast("n", {"i": i, "pad": pad})
                await asyncio.sleep(0)  # one message per flush
            stats = node.helper.stats()
            assert stats["skipped"] == 0
            assert stats["direct_writes"] > 0
            assert stats["ring_submits"] == 0  # one write per flush: send(2), not the ring
            # The socket refused the rest: uvloop holds it, so later flushes queued behind.
            assert transport.get_write_buffer_size() > 0
            assert await numbers(raw, 400) == list(range(400))

    run(body())


def test_tls_connections_never_write_to_the_socket_directly(tmp_path):
    files = make_certificates(tmp_path)
    context = server_context(str(files["cert"]), str(files["key"]))
    client = ssl.create_default_context(cafile=str(files["ca"]))

    async def body() -> None:
        helper = WebSocketServerHelper("tls", "/ws", "memory://", token_auth)
        server = await helper.serve("127.0.0.1", 0, ssl=context)
        try:
            url = f"wss://127.0.0.1:{server.bound_port}/ws"
            ws, _ = await authed(url, "user:bob", ssl=client)
            for i in range(5):
                helper.broadcast("n", i)
                await asyncio.sleep(0)
            assert [(await recv(ws))["data"] for _ in range(5)] == list(range(5))
            assert helper.stats()["direct_writes"] == 0
            await ws.close()
        finally:
            await server.stop()
            await helper.shutdown()

    run(body())
