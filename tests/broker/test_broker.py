"""The Broker protocol: every implementation offers every ability, so callers never probe."""

from __future__ import annotations

import asyncio

from roomcast import Broker, MemoryBroker, RedisHelper, create_broker
from roomcast.broker.adapter import PlainBroker
from roomcast.broker.redis import RECONNECT, RedisBroker
from support import run


class OnlyThree:
    """A broker as roomcast accepted them before the protocol: start, publish, close."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def start(self, on_message) -> None:
        self.on_message = on_message

    def publish(self, channel: str, message: bytes) -> None:
        self.sent.append((channel, message))

    async def close(self) -> None:
        pass


def test_memory_and_redis_brokers_implement_the_whole_protocol():
    redis_broker = RedisHelper(port=1).create_broker()
    assert isinstance(redis_broker, RedisBroker)
    for broker in (MemoryBroker("x"), redis_broker, create_broker(OnlyThree())):
        assert isinstance(broker, Broker), broker


def test_the_memory_broker_has_nothing_to_confirm_and_keeps_no_counters():
    async def body():
        a, b = MemoryBroker("net"), MemoryBroker("net")
        got: list[tuple[str, bytes]] = []
        await a.start(lambda channel, data: got.append((channel, data)))
        await b.start(None)
        assert not a.wants_interest and not a.confirms_subscriptions
        a.interest("ws:room:r", True)
        assert a.subscribe_new(["ws:client:c"]) is None
        assert a.confirmation(["ws:room:r"]) is None
        await a.sync()
        assert (a.connected, a.state, a.stats()) == (True, "connected", {})
        assert await b.publish_wait("ws:room:r", b"m") == 1  # a subscribes, b does not
        async with asyncio.timeout(5):
            while not got:
                await asyncio.sleep(0.001)
        assert got == [("ws:room:r", b"m")]
        await a.close()
        await b.close()

    run(body())


def test_a_broker_with_only_start_publish_close_gets_the_one_process_abilities():
    inner = OnlyThree()
    broker = create_broker(inner)
    assert isinstance(broker, PlainBroker)

    async def body():
        await broker.start(None)
        broker.publish("ws:broadcast", b"a")
        assert await broker.publish_wait("ws:broadcast", b"b") == 0
        assert broker.confirmation(["ws:room:r"]) is None
        assert (broker.wants_interest, broker.state, broker.stats()) == (False, "connected", {})
        await broker.close()

    run(body())
    assert inner.sent == [("ws:broadcast", b"a"), ("ws:broadcast", b"b")]


def test_the_reconnect_backoff_grows_and_is_capped_at_a_quarter_second():
    delays = [RECONNECT.delay(attempt) for attempt in range(100)]
    assert 0.08 <= delays[0] <= 0.12
    assert all(d <= RECONNECT.max_delay * (1 + RECONNECT.jitter) for d in delays)
    assert RECONNECT.max_delay == 0.25
    assert min(delays[5:]) >= RECONNECT.max_delay * (1 - RECONNECT.jitter)
