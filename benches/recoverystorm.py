"""`recoverystorm`: what a reconnect storm into a busy history room costs every delivery.

In one process, on the Rust hub itself: a history room of M members (20,000), one numbered
message after another delivered to all of them (`send_history` + `flush`), with no member
being recovered, then with R of them (5,000) recovering meanwhile: each round starts their
recoveries (their live messages held), delivers, and ends them (held messages taken and
released, as the node does after a replay; every member gets every message once, checked
by the hub's delivery count). The figure is delivery CPU per member with the
storm over without it, in the same run: it stays near 1 when the cost per member does not
grow with the number being recovered (before, each delivery scanned the recovering list
once per member: M x R per message). The writes go to a sink that drops them, so the figure
is the hub's work, not the kernel's.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from typing import Any

from roomcast._core import Hub

from .harness import Row, emit
from .registry import Context, scenario

ROOM = "chat:storm"
EPOCH = "bench"


def _hub(members: int) -> tuple[Hub, list[int]]:
    hub = Hub(lambda _flush: None, backpressure_limit=1 << 30)
    drop = deque(maxlen=0).append  # a builtin sink: no Python frame per write
    handles = []
    for i in range(members):
        handle = hub.add(f"c{i}", drop, None)
        hub.authenticate(handle, None)
        hub.join(handle, ROOM)
        handles.append(handle)
    return hub, handles


def _deliver(hub: Hub, offset: int, payload: bytes) -> None:
    hub.send_history(ROOM, EPOCH, offset, payload)
    hub.flush()


def storm(members: int, recovering: int, messages: int, rounds: int) -> list[dict[str, Any]]:
    """Delivery CPU per member, without and with `recovering` members being recovered."""
    hub, handles = _hub(members)
    storming = handles[:: max(1, members // recovering)][:recovering]
    payload = b'{"event":"m","data":"' + b"x" * 100 + b'","room":"chat:storm","offset":0}'
    offset = 0
    samples: dict[str, list[float]] = {"calm": [], "storm": []}
    for _ in range(rounds):
        for mode in ("calm", "storm"):
            if mode == "storm":
                for handle in storming:
                    hub.hold_history(handle, ROOM)
            start, cpu0 = time.perf_counter(), time.process_time()
            for _ in range(messages):
                offset += 1
                _deliver(hub, offset, payload)
            cpu = time.process_time() - cpu0
            wall = time.perf_counter() - start
            samples[mode].append(min(cpu, wall) / (messages * members))
            if mode == "storm":
                # The replay read up to the first held one; the rest is taken and released.
                for handle in storming:
                    after = offset - messages
                    while taken := hub.take_held(handle, ROOM, EPOCH, after, 1 << 20):
                        for _, held in taken:
                            hub.send(handle, held)
                        after = taken[-1][0]
                    hub.release_history(handle, ROOM, EPOCH, after)
                hub.flush()
    lost = 2 * rounds * messages * members - hub.stats()["delivered"]
    if lost:
        raise RuntimeError(f"recoverystorm: {lost} deliveries missing")
    calm = statistics.median(samples["calm"])
    stormy = statistics.median(samples["storm"])
    row = {
        "scenario": "recoverystorm",
        "members": members,
        "recovering": recovering,
        "messages": messages,
        "rounds": rounds,
        "calm_ns_per_member": calm * 1e9,
        "storm_ns_per_member": stormy * 1e9,
        "storm_over_calm": stormy / calm,
        "lost": lost,
        "calm_rounds_ns": [round(s * 1e9, 1) for s in samples["calm"]],
        "storm_rounds_ns": [round(s * 1e9, 1) for s in samples["storm"]],
    }
    return [emit(row)]


@scenario(
    "recoverystorm",
    about="history-room delivery CPU per member while 5,000 of 20,000 members are recovered",
    summary=lambda row: (
        f"recoverystorm M={row['members']:>6} R={row['recovering']:>5} "
        f"calm {row['calm_ns_per_member']:>6.1f} ns/member, "
        f"storm {row['storm_ns_per_member']:>6.1f} ns/member: "
        f"x{row['storm_over_calm']:.2f}"
    ),
)
def run_storm(ctx: Context, _: None) -> list[Row]:
    if ctx.options.quick:
        return storm(2000, 500, 5, 1)
    return storm(20_000, 5_000, 50, ctx.options.rounds)
