"""The binding's own cost per call, in-process, without sockets: what an extension build
(abi3 or one per CPython version) changes.

`python -m benches.calls [--clients N] [--rounds R]` prints one JSON line: the CPU time
(process time, so other processes on the machine do not count) per delivery of a broadcast
plus flush to N connections whose `write` is a C builtin (`len`: one call from Rust into
Python per connection per flush, nothing else), and per `touch_recv` (one call from Python
into Rust, the inbound path's per-message hub call). Medians of R rounds. Compare two builds
by running it under each, alternately.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from roomcast import _core

PAYLOAD = b'{"event":"chat","data":{"text":"hello"}}'


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benches.calls")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    hub = _core.Hub(lambda callback: None, heartbeat_timeout=3600.0)
    handles = []
    for i in range(args.clients):
        handle = hub.add(f"c{i}", len, None)
        hub.authenticate(handle, None)
        handles.append(handle)

    def fanout() -> float:
        started = time.process_time_ns()
        for _ in range(200):
            hub.broadcast(PAYLOAD)
            hub.flush(whole=True)
        return (time.process_time_ns() - started) / (200 * len(handles))

    def inbound() -> float:
        touch = hub.touch_recv
        started = time.process_time_ns()
        for _ in range(20):
            for handle in handles:
                touch(handle)
        return (time.process_time_ns() - started) / (20 * len(handles))

    fanout(), inbound()  # warm-up
    print(
        json.dumps(
            {
                "scenario": "calls",
                "extension": _core.__file__.rsplit("/", 1)[-1],
                "clients": args.clients,
                "rounds": args.rounds,
                "fanout_ns_per_delivery": statistics.median(fanout() for _ in range(args.rounds)),
                "touch_recv_ns_per_call": statistics.median(inbound() for _ in range(args.rounds)),
            }
        )
    )


if __name__ == "__main__":
    main()
