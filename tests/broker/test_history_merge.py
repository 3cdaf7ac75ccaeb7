"""The replay/live merge (held in the Rust hub) for encrypted and plaintext clients on one
Redis node, while messages keep being published: each gets the missed messages, `joined`,
then the live ones, every message once and in order (SPEC §10)."""

from __future__ import annotations

import asyncio
from typing import Any

from encryption_support import encrypted_client
from redis_support import node
from roomcast import RedisHelper, WebSocketEmitter
from roomcast.crypto import EcdhScheme
from support import authed, eventually, join, joined, recv, run

ROOM = "chat:merge"


def test_encrypted_and_plain_clients_recover_while_publishing_once_each_in_order(redis_server):
    async def body():
        redis = RedisHelper(host="127.0.0.1", port=redis_server.port, ready_timeout=5)
        emitter = WebSocketEmitter(redis, history_rooms="chat:*", history_size=100000)
        await emitter.configure()
        options = {"history_rooms": "chat:*", "history_size": 100000}
        try:
            async with node(
                redis, default_rooms=[], server_options=options, encryption=EcdhScheme()
            ) as n:
                first, _ = await authed(n.url)
                await join(first, [ROOM])
                _, start = await joined(first)
                await first.close()
                stop = asyncio.Event()
                sent = 0

                async def publish() -> None:
                    nonlocal sent
                    while not stop.is_set():
                        await emitter.to_room(ROOM, "m", sent)
                        sent += 1

                publisher = asyncio.create_task(publish())
                await eventually(lambda: sent >= 300, timeout=20)
                remote = n.helper.history_store
                real_read = remote.read

                async def read_then_wait(*args: Any) -> Any:
                    # Messages published after the read's snapshot reach the node before the
                    # recovery ends: the hub holds them and releases them after `joined`.
                    result = await real_read(*args)
                    target = sent + 20
                    await eventually(lambda: sent >= target, timeout=20)
                    return result

                remote.read = read_then_wait
                recover = {ROOM: {"epoch": start["epoch"], "offset": start["offset"]}}
                sealed = []
                plain = []
                for _ in range(5):  # each joins while messages keep coming
                    ws, _, crypto = await encrypted_client(n.url, "user:enc")
                    await join(ws, [ROOM], recover)
                    sealed.append((ws, crypto))
                    ws, _ = await authed(n.url)
                    await join(ws, [ROOM], recover)
                    plain.append(ws)
                await eventually(lambda: sent >= 1500, timeout=60)
                stop.set()
                await publisher
                total = sent

                async def read(ws: Any, crypto: Any | None) -> tuple[list[Any], dict[str, Any]]:
                    values: list[Any] = []
                    joined_data: dict[str, Any] | None = None
                    while not values or values[-1] < total - 1:
                        message = await recv(ws, timeout=20)
                        if crypto is not None:
                            message = crypto.open(message)
                        if message["event"] == "joined":
                            assert joined_data is None, "one joined"
                            joined_data = message["data"]
                            assert joined_data["offset"] - start["offset"] == len(values)
                            continue
                        assert message["event"] == "m", message
                        values.append(message["data"])
                    assert joined_data is not None and joined_data["recovered"] is True
                    return values, joined_data

                for ws, crypto in sealed:
                    values, _ = await read(ws, crypto)
                    assert values == list(range(total))
                    await ws.close()
                for ws in plain:
                    values, _ = await read(ws, None)
                    assert values == list(range(total))
                    await ws.close()
        finally:
            await emitter.shutdown()

    run(body(), timeout=120)
