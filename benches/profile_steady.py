"""Where a steady-arrival delivery's CPU goes: `perf` on a server under the `steady` load.

`python -m benches.profile_steady [roomcast|ignis] [--clients 1000] [--rate 50] [--seconds 8]
[--write-delay S] [--poll-ms MS] [--redis] [--out perf.data]`

Starts the server pinned to CPU 0 and the compiled load generator on CPU 1 (as `steady`
does), has one client publish `rate` messages/s to everyone, records the server with
`perf record -g` meanwhile, and prints the server CPU per delivery and `perf report`'s split
by DSO (kernel, libpython, uvloop, picows, the Rust core, Bun...) and the top symbols. With
`--redis`, the messages are broadcast envelopes the load generator PUBLISHes into a
throw-away `redis-server` instead (as `saturate` sends them: use it with a high `--rate` and
`--poll-ms 10` to profile a server at saturation). Needs `perf` (Debian: `linux-perf`).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from contextlib import ExitStack

from .compiled import (
    SERVER_CPU,
    _pin_redis,
    compiled_loadgen,
    counts,
    fast_clients,
    latency,
    pinnable,
    server_cpu,
    server_cpu_since,
)
from .harness import redis_server, server, wait_subscribed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("server", nargs="?", default="roomcast")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--write-delay", type=float, default=0.0)
    parser.add_argument("--poll-ms", type=float, default=0.0, help="load generator read interval")
    parser.add_argument("--redis", action="store_true", help="broadcast envelopes via Redis")
    parser.add_argument("--out", default="perf.data")
    args = parser.parse_args()
    binary = compiled_loadgen()
    extra = ("--write-delay", str(args.write_delay)) if args.write_delay else ()
    cpus = SERVER_CPU if pinnable() else None
    with ExitStack() as stack:
        url = stack.enter_context(redis_server()) if args.redis else None
        if url is not None:
            _pin_redis(url)
        port, pid = stack.enter_context(server(args.server, 90.0, *extra, redis_url=url, cpus=cpus))
        gens = stack.enter_context(fast_clients(port, args.clients, binary, args.poll_ms))
        if url is not None:
            wait_subscribed(url, {"ws:broadcast": 1})
        messages = int(args.rate * args.seconds)
        before = counts(gens)["received"]
        perf = subprocess.Popen(
            ["perf", "record", "-q", "-g", "-F", "4999", "-p", str(pid), "-o", args.out],
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        cpu0, soft0 = server_cpu(pid)
        if url is not None:
            addr = url.removeprefix("redis://")
            gens[0].ask(f"rpublish {addr} ws:broadcast {messages} {args.rate} 100")
        else:
            gens[0].ask(f"publish {messages} {args.rate} 100 -")
        expected = before + messages * args.clients
        deadline = time.monotonic() + 30
        while counts(gens)["received"] < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        cpu, soft = server_cpu_since(pid, (cpu0, soft0))
        perf.send_signal(2)
        perf.wait()
        got = counts(gens)["received"]
        p50, p99, samples = latency(gens)
    delivered = messages * args.clients
    print(f"{args.server}: {got - before} of {delivered} delivered; ", end="")
    print(
        f"server CPU {cpu * 1e9 / delivered:,.0f} ns per delivery (perf overhead included; "
        f"{soft * 1e9 / delivered:,.0f} of it in ksoftirqd, not in the profile); ",
        end="",
    )
    print(f"latency p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms ({samples} samples)")
    for sort in ("dso", "sym"):
        report = subprocess.run(
            ["perf", "report", "-i", args.out, "--no-children", "--sort", sort, "--stdio"],
            capture_output=True,
            text=True,
        ).stdout
        lines = [line for line in report.splitlines() if line and not line.startswith("#")]
        top = [line for line in lines if "%" in line and not line.lstrip().startswith("|")]
        print("\n".join(top[:25]))


if __name__ == "__main__":
    main()
