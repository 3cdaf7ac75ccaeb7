"""The limits' pure logic (`roomcast.limits`): token buckets, the rate limit's verdicts, the
handler gate. No sockets: the time is an argument."""

from __future__ import annotations

from typing import Any

from roomcast.node.limits import HandlerGate, RateLimit, TokenBucket, Verdict


def test_a_bucket_refills_at_its_rate_up_to_its_capacity_and_may_run_into_debt():
    bucket = TokenBucket(10, 20, now=0.0)
    assert bucket.take(25, now=0.0) == -5
    assert bucket.debt_time() == 0.5
    assert bucket.take(0, now=0.5) == 0
    assert bucket.take(0, now=100.0) == 20  # capped
    assert bucket.take(100, now=100.0, floor=-20) == -20


def test_the_rate_limit_passes_a_burst_warns_once_then_drops_then_closes():
    limit = RateLimit(messages=10, size=None, burst=2, now=0.0)
    assert [limit.check(1, 0.0) for _ in range(20)] == [Verdict.PASS] * 20
    assert limit.check(1, 0.0) is Verdict.WARN
    assert [limit.check(1, 0.0) for _ in range(18)] == [Verdict.DROP] * 18
    assert limit.check(1, 0.0) is Verdict.CLOSE


def test_slowing_down_pays_the_debt_back_and_a_new_run_warns_again():
    limit = RateLimit(messages=10, size=None, burst=1, now=0.0)
    verdicts = [limit.check(1, 0.0) for _ in range(12)]
    assert verdicts[:10] == [Verdict.PASS] * 10 and verdicts[10:] == [Verdict.WARN, Verdict.DROP]
    assert limit.check(1, 1.0) is Verdict.PASS  # 2 owed, 10 earned
    assert [limit.check(1, 1.0) for _ in range(8)] == [Verdict.PASS] * 7 + [Verdict.WARN]


def test_the_byte_rate_counts_sizes():
    limit = RateLimit(messages=None, size=1000, burst=1, now=0.0)
    assert limit.check(1000, 0.0) is Verdict.PASS
    assert limit.check(1, 0.0) is Verdict.WARN
    assert limit.check(999, 0.0) is Verdict.CLOSE


def test_the_handler_gate_runs_waiting_messages_in_order_as_tasks_finish():
    gate = HandlerGate(2)
    ran: list[Any] = []

    def run(message: Any) -> None:
        ran.append(message)
        gate.started()

    gate.started()
    gate.started()
    assert gate.full
    gate.waiting.extend(["m3", "m4", "m5"])
    assert gate.finished(run) is False and ran == ["m3"]
    assert gate.finished(run) is False and ran == ["m3", "m4"]
    assert gate.finished(run) is True and ran == ["m3", "m4", "m5"]
    assert gate.full  # m4 and m5 in flight
    gate.finished(run)
    assert not gate.full and not gate.idle
    gate.finished(run)
    assert gate.idle
