"""The hub's interest changes as channel names (`Hub.drain_interest_channels`): applying the
gains, then the losses, has the effect of replaying `drain_interest()` in order."""

from __future__ import annotations

from roomcast import _core

PREFIXES = ("ws:room:", "ws:user:", "ws:client:")


def make_hub() -> tuple[_core.Hub, list[int]]:
    asked: list[int] = []
    hub = _core.Hub(lambda flush: None, on_interest=lambda: asked.append(1))
    return hub, asked


def test_a_login_and_a_logout_in_separate_drains() -> None:
    hub, asked = make_hub()
    handle = hub.add("c1", lambda data: None, object())
    hub.authenticate(handle, "u1")
    hub.join(handle, "c1")
    hub.join(handle, "lobby")
    assert asked == [1]
    adds, removes = hub.drain_interest_channels(*PREFIXES)
    assert sorted(adds) == ["ws:client:c1", "ws:room:c1", "ws:room:lobby", "ws:user:u1"]
    assert removes == []
    assert hub.drain_interest_channels(*PREFIXES) == ([], [])
    hub.remove(handle)
    assert asked == [1, 1]
    adds, removes = hub.drain_interest_channels(*PREFIXES)
    assert adds == []
    assert sorted(removes) == ["ws:client:c1", "ws:room:c1", "ws:room:lobby", "ws:user:u1"]


def test_changes_within_one_drain_net_out_in_order() -> None:
    hub, _ = make_hub()
    first = hub.add("c1", lambda data: None, object())
    hub.authenticate(first, None)
    hub.join(first, "kept")
    hub.join(first, "gone")
    hub.drain_interest_channels(*PREFIXES)
    hub.leave(first, "kept")  # lost and regained: where it was
    hub.join(first, "kept")
    hub.leave(first, "gone")  # lost
    hub.join(first, "brief")  # gained and lost again: a gain, then a loss
    hub.leave(first, "brief")
    hub.join(first, "new")  # gained
    adds, removes = hub.drain_interest_channels(*PREFIXES)
    assert adds == ["ws:room:brief", "ws:room:new"]
    assert removes == ["ws:room:gone", "ws:room:brief"]
