"""The client's recovery rules without sockets (`roomcast.client.streams`, SPEC §10)."""

from __future__ import annotations

import random

import pytest
from roomcast.client import Message, Position
from roomcast.client.backoff import Backoff, Urls
from roomcast.client.streams import Streams


def msg(offset: int, room: str = "h") -> Message:
    return Message("n", offset, room, offset)


def offsets(messages: list[Message]) -> list[int | None]:
    return [m.offset for m in messages]


def test_a_first_join_hands_over_what_came_before_joined_then_expects_the_next_offset():
    s = Streams()
    assert s.recover_for(["h"]) == {}
    assert s.on_message(msg(4)) == ([], None)
    joined, ready, _ = s.on_joined("h", "E", 4, False)
    assert joined is not None and not joined.gap and offsets(ready) == [4]
    assert offsets(s.on_message(msg(5))[0]) == [5]
    assert s.positions() == {"h": Position("E", 5)}


def test_a_recovery_sends_the_position_back_and_hands_over_replays_once_in_order():
    s = Streams()
    s.set_position("h", Position("E", 3))
    s.new_connection()
    assert s.recover_for(["h"]) == {"h": {"epoch": "E", "offset": 3}}
    for offset in (5, 4, 6, 5):
        s.on_message(msg(offset))
    joined, ready, _ = s.on_joined("h", "E", 6, True)
    assert joined is not None and joined.recovered and not joined.gap
    assert offsets(ready) == [4, 5, 6] and s.replayed == 3


def test_a_skip_asks_for_a_resync_and_an_unrecovered_answer_is_a_gap_that_drops_the_held():
    s = Streams()
    s.recover_for(["h"])
    s.on_joined("h", "E", 0, False)
    assert offsets(s.on_message(msg(1))[0]) == [1]
    assert s.on_message(msg(3)) == ([], "h")
    assert s.resync_request("h") == {"h": {"epoch": "E", "offset": 1}}
    s.on_message(msg(4))
    joined, ready, _ = s.on_joined("h", "F", 9, False)
    assert joined is not None and joined.gap and joined.previous == Position("E", 1)
    assert ready == []
    assert offsets(s.on_message(msg(10))[0]) == [10]
    assert s.on_message(msg(1))[1] == "h"  # an offset going back: a new epoch began


def test_a_room_the_client_cannot_rejoin_takes_messages_as_they_come():
    s = Streams()
    s.on_joined("srv", "E", 2, False)
    assert offsets(s.on_message(msg(5, "srv"), can_resync=False)[0]) == [5]
    assert s.positions()["srv"] == Position("E", 5)
    assert offsets(s.on_message(msg(1, "srv"), can_resync=False)[0]) == [1]
    assert s.positions()["srv"] == Position("", 1)  # never a new epoch with an old offset


def test_a_joined_not_asked_for_while_holding_a_position_asks_for_a_resync():
    s = Streams()
    s.set_position("h", Position("E", 7))
    s.new_connection()
    assert s.on_joined("h", "E", 9, False) == (None, [], True)


def test_held_messages_are_bounded_and_an_overflow_is_a_gap():
    s = Streams(max_held=2)
    s.set_position("h", Position("E", 0))
    s.new_connection()
    s.recover_for(["h"])
    for offset in (1, 2, 3):
        s.on_message(msg(offset))
    joined, ready, _ = s.on_joined("h", "E", 3, True)
    assert joined is not None and joined.gap and ready == []


def test_backoff_is_full_jitter_within_its_bounds():
    b = Backoff(0.5, 20.0, random.Random(1))
    delays = [b.delay() for _ in range(12)]
    ceilings = [min(20.0, 0.5 * 2**n) for n in range(12)]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    b.reset()
    assert b.delay() <= 0.5
    with pytest.raises(ValueError, match="backoff must be"):
        Backoff(1.0, 0.5)


def test_urls_are_tried_in_turn():
    urls = Urls(["a", "b", "c"])
    seen = []
    for _ in range(4):
        seen.append(urls.current)
        urls.advance()
    assert seen == ["a", "b", "c", "a"]
    with pytest.raises(ValueError):
        Urls([])


def test_a_late_second_answer_never_moves_the_position_back_nor_repeats_a_message():
    s = Streams()
    s.set_position("h", Position("E", 2))
    s.new_connection()
    s.recover_for(["h"])
    s.on_message(msg(3))
    _, ready, _ = s.on_joined("h", "E", 3, True)
    assert offsets(ready) == [3]
    assert offsets(s.on_message(msg(4))[0]) == [4]
    # The answer to a join overtaken by a leave and a new join comes after: ignored.
    assert s.on_joined("h", "E", 1, True) == (None, [], False)
    assert s.positions()["h"] == Position("E", 4)
    # A re-sync whose answer is late and low: only offsets after 4 are handed over.
    assert s.on_message(msg(6)) == ([], "h")
    s.resync_request("h")
    for offset in (3, 4, 5, 6):
        s.on_message(msg(offset))
    _, ready, _ = s.on_joined("h", "E", 2, True)
    assert offsets(ready) == [5, 6] and s.positions()["h"] == Position("E", 6)
