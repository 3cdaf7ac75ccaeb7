"""The cost side of subscriptions by interest, against a real redis-server: a login's channels
(its own and its shared ones) in one `subscribe_new` call, flushes that do not spin on
uvloop's 1 ms clock or while one is unconfirmed, subscriber commands written at once when the
socket takes them (through the writer task otherwise), and a login's shared channels kept
subscribed while it waits, even when another client leaves them meanwhile, and logins that
complete as soon as Redis' answer is read."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from redis_support import FreezingProxy, node, raw_redis
from roomcast import RedisHelper, WebSocketEmitter
from roomcast.broker.redis import RedisBroker, RedisTarget
from roomcast.broker.redis.interest import FLUSH_SPACING
from roomcast.broker.redis.session import Shard
from roomcast.broker.redis.wire import Commands
from roomcast.node.barrier import JoinBarrier
from support import authed, recv, run


def broker_at(port: int, **kwargs: Any) -> RedisBroker:
    return RedisBroker(RedisTarget((("127.0.0.1", port),)), **kwargs)


async def subscribed(port: int) -> set[str]:
    async with raw_redis(port) as client:
        return {c.decode() for c in await client.pubsub_channels("ws:*")}


def counting(calls: list[int], method: Callable[..., Any]) -> Callable[..., Any]:
    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return method(*args, **kwargs)

    return counted


def test_logins_over_many_loop_iterations_cost_few_flush_calls(redis_server):
    """While a flush is unconfirmed (Redis answers SUBSCRIBEs 50 ms late here), a login in
    every loop iteration must not cost a flush call each: a few calls per flush carry them."""

    async def body():
        proxy = await FreezingProxy(redis_server.port, subscribe_delay=0.05).start()
        broker = broker_at(proxy.port)
        await broker.start(lambda channel, data: None)
        try:
            interest = broker._interest
            calls: list[int] = []
            interest.flush = counting(calls, interest.flush)  # type: ignore[method-assign]
            futures = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 0.3
            logins = 0
            while loop.time() < deadline:  # a login in each loop iteration for 0.3 s
                own = [f"ws:client:c{logins}", f"ws:room:c{logins}"]
                futures.append(broker.subscribe_new(own, [f"ws:user:u{logins}"]))
                logins += 1
                await asyncio.sleep(0)
            await asyncio.wait_for(asyncio.gather(*futures), 5)
            assert logins > 100, logins
            assert len(calls) <= 40, (len(calls), logins)  # ~6 flushes of ~50 ms each
            live = await subscribed(redis_server.port)
            assert {f"ws:user:u{i}" for i in range(logins)} <= live
            assert {f"ws:client:c{i}" for i in range(logins)} <= live
        finally:
            await broker.close()
            await proxy.close()

    run(body())


def test_a_flush_due_within_half_a_clock_step_goes_now(redis_server):
    """uvloop's clock and timers have 1 ms steps: a flush whose spacing ends in less than
    half a step is sent at once, not re-scheduled (a timer that short fires in the same
    millisecond again and again, each time a loop iteration)."""

    async def body():
        broker = broker_at(redis_server.port)
        await broker.start(lambda channel, data: None)
        try:
            await broker.sync()
            interest = broker._interest
            loop = asyncio.get_running_loop()
            interest.wanted.add("ws:room:soon")
            interest.dirty.add("ws:room:soon")
            interest._flushed_at = loop.time() - FLUSH_SPACING + 1e-9
            interest.flush()
            assert not interest.dirty  # sent
            interest.wanted.add("ws:room:later")
            interest.dirty.add("ws:room:later")
            interest._flush_in_flight = False
            interest._flushed_at = loop.time()
            interest.flush()
            assert interest.dirty == {"ws:room:later"}  # a whole spacing to go: waits
            await broker.sync()
            assert {"ws:room:soon", "ws:room:later"} <= await subscribed(redis_server.port)
        finally:
            await broker.close()

    run(body())


def test_subscribe_new_waits_for_a_shared_channel_still_being_subscribed(redis_server):
    """A shared channel sent by an earlier flush whose SUBSCRIBE Redis has not answered yet:
    the login's future covers it too; a shared channel that is live costs no wait of its
    own; one nobody wanted is subscribed with the login's own channels."""

    async def body():
        proxy = await FreezingProxy(redis_server.port, subscribe_delay=0.4).start()
        broker = broker_at(proxy.port)
        await broker.start(lambda channel, data: None)
        try:
            await broker.sync()
            first = broker.subscribe_new(["ws:client:a", "ws:room:a"], ["ws:user:u"])
            assert first is not None
            await asyncio.sleep(FLUSH_SPACING * 3)  # the first flush is out, unconfirmed
            assert not first.done()
            second = broker.subscribe_new(["ws:client:b", "ws:room:b"], ["ws:user:u"])
            assert second is not None
            done_first = asyncio.ensure_future(asyncio.shield(first))
            await asyncio.wait_for(asyncio.shield(second), 5)
            assert done_first.done()  # never before the user channel was confirmed
            assert broker.confirmation(["ws:user:u", "ws:client:b"]) is None

            # Live already: the login waits only for its own channels' flush.
            third = broker.subscribe_new(["ws:client:c", "ws:room:c"], ["ws:user:u"])
            assert third is broker._interest._next_flush
            # Nobody wanted it: it goes out with the login's own channels.
            fourth = broker.subscribe_new(["ws:client:d", "ws:room:d"], ["ws:room:lobby"])
            assert fourth is third
            await asyncio.wait_for(asyncio.shield(fourth), 5)
            assert broker.confirmation(["ws:room:lobby", "ws:client:d", "ws:room:c"]) is None
            assert {"ws:user:u", "ws:room:lobby", "ws:client:d"} <= await subscribed(
                redis_server.port
            )
        finally:
            await broker.close()
            await proxy.close()

    run(body())


class _Sink(asyncio.Protocol):
    """A peer that reads only when told to."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport instances

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.received += data


def test_push_writes_at_once_unless_earlier_bytes_are_still_buffered():
    """`Shard.push` writes queued subscriber commands in one write when nothing is buffered
    before them; behind buffered bytes it wakes the writer task instead (which writes them in
    order, bounded by the command timeout)."""

    async def body():
        loop = asyncio.get_running_loop()
        sinks: list[_Sink] = []

        def sink() -> _Sink:
            sinks.append(_Sink())
            return sinks[-1]

        server = await loop.create_server(sink, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setblocking(False)
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=sock)
        try:
            shard = Shard("127.0.0.1", port, Commands.of(False))
            shard.sub_transport = transport
            shard.send_subscriptions(["ws:room:a", "ws:room:b"], True, wake=False)
            shard.barrier(wake=False)
            shard.push()
            assert not shard.sub_out and not shard.sub_wake.is_set()
            while not sinks or sinks[0].transport is None:
                await asyncio.sleep(0.001)
            peer = sinks[0]
            assert peer.transport is not None
            peer.transport.resume_reading()
            async with asyncio.timeout(5):
                while b"PING" not in peer.received:
                    await asyncio.sleep(0.001)
            assert bytes(peer.received).startswith(b"*3\r\n$9\r\nSUBSCRIBE\r\n$9\r\nws:room:a")

            # The peer stops reading: fill the socket until the transport buffers.
            peer.transport.pause_reading()
            while not transport.get_write_buffer_size():
                transport.write(b"x" * 65536)
                await asyncio.sleep(0)
            shard.send_subscriptions(["ws:room:c"], True, wake=False)
            shard.push()
            assert list(shard.sub_out) == [b"*2\r\n$9\r\nSUBSCRIBE\r\n$9\r\nws:room:c\r\n"]
            assert shard.sub_wake.is_set()
        finally:
            transport.abort()
            for peer in sinks:
                if peer.transport is not None:
                    peer.transport.abort()
            server.close()
            await server.wait_closed()
            await asyncio.sleep(0.01)  # connection_lost callbacks run before the loop closes

    run(body())


def test_a_login_keeps_its_live_user_channel_while_another_session_of_it_leaves(redis_server):
    """A login that waits for its own channels holds its shared ones too: the user's other
    session leaving meanwhile (with no unsubscribe delay) must not unsubscribe the user, or
    messages to the user after `connected` would be lost until it is subscribed again."""

    async def body():
        proxy = await FreezingProxy(redis_server.port, subscribe_delay=0.5).start()
        emitter = WebSocketEmitter(RedisHelper(port=redis_server.port))
        await emitter.configure()
        redis = RedisHelper(port=proxy.port, unsubscribe_delay=0, ready_timeout=5)
        try:
            async with node(redis, subscribe_timeout=5) as n:
                first, _ = await authed(n.url, "user:carol")  # the user channel is live
                second_login = asyncio.ensure_future(authed(n.url, "user:carol"))
                async with asyncio.timeout(5):  # the second login waits for its own channels
                    while n.helper.stats()["subscribe_waits"] < 2:
                        await asyncio.sleep(0.005)
                await first.close()
                async with asyncio.timeout(5):  # the first session is gone from the hub
                    while n.helper.get_clients_by_user("carol"):
                        await asyncio.sleep(0.005)
                assert not second_login.done()  # still waiting for Redis
                second, _ = await asyncio.wait_for(second_login, 10)
                # Published over the next 1.2 s: a wrongful UNSUBSCRIBE (and the SUBSCRIBE
                # behind it) would each take the proxy's 0.5 s, leaving a gap in between.
                for i in range(12):
                    await emitter.to_user("carol", "tick", i)
                    await asyncio.sleep(0.1)  # pacing the publishes, not waiting for a result
                assert [(await recv(second))["data"] for _ in range(12)] == list(range(12))
                await second.close()
        finally:
            await emitter.shutdown()
            await proxy.close()

    run(body())


def test_a_confirmation_and_a_lifted_barrier_run_their_follow_ups_at_once(redis_server):
    """A flush's PING answer calls its follow-up as it is read, before the future's
    callbacks; a barrier's `then` runs once per lifted barrier (the logins of a flush share
    one), before its done-callbacks, with True when confirmed and False past the bound."""

    async def body():
        broker = broker_at(redis_server.port)
        await broker.start(lambda channel, data: None)
        try:
            await broker.sync()
            session = broker._session
            assert session is not None
            shard = session.shards[0]
            order: list[Any] = []
            answered = shard.barrier(wake=False, then=lambda: order.append("then"))
            answered.add_done_callback(lambda _: order.append("callback"))
            shard.push()
            await asyncio.wait_for(asyncio.shield(answered), 5)
            await asyncio.sleep(0)
            assert order == ["then", "callback"]

            loop = asyncio.get_running_loop()
            barrier = JoinBarrier(broker, {}, 0.2)
            barrier.start(loop)
            order.clear()
            waiter: asyncio.Future[None] = loop.create_future()
            lifted = barrier.wait(waiter, lambda done: order.append(("then", done.result())))
            assert barrier.wait(waiter, lambda done: order.append("again")) is lifted
            lifted.add_done_callback(lambda _: order.append("callback"))
            waiter.set_result(None)
            await asyncio.wait_for(asyncio.shield(lifted), 5)
            await asyncio.sleep(0)
            assert order == [("then", True), "callback"]

            order.clear()
            never: asyncio.Future[None] = loop.create_future()
            late = barrier.wait(never, lambda done: order.append(("then", done.result())))
            assert await asyncio.wait_for(asyncio.shield(late), 5) is False
            assert order == [("then", False)]
            assert barrier.unconfirmed == 0  # counted by whoever waited (a login, a join)
        finally:
            await broker.close()

    run(body())
