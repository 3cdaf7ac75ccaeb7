"""Bench runner: `python -m benches [SCENARIO ...] [--servers ...] [--rounds 5] [--quick]`.

Runs the named scenarios (`--list` shows them all; none named: the default set) one after the
other, each server of `--servers` in turn for the per-server ones, so every figure is also a
ratio against the baselines measured in the same invocation:
- roomcast: the server with its Rust fan-out;
- pyloop: baseline (a), the same server delivering with a plain Python loop (transport.send);
- picows: baseline (b), a hand-optimised pure-Python picows server (benches/baseline.py);
- ignis: baseline (c), the original on Bun, when `bun` and `@venizia/ignis-helpers` are
  installed in benches/original/node_modules (see benches/README.md); skipped otherwise.

Server CPU comes from /proc/<pid>/task/*/schedstat, so a figure stays honest when the load
generator is the bottleneck; each row says which side was saturated. Prints one JSON line per
measurement and a table at the end. The scenarios live in their modules (benches/scenarios.py
lists them), the servers and load generators in benches/harness.py.
"""

from __future__ import annotations

import argparse

from . import harness, registry, scenarios


def main(argv: list[str] | None = None) -> None:
    scenarios.load()
    known = registry.SCENARIOS
    parser = argparse.ArgumentParser(
        prog="python -m benches",
        description=__doc__.split("\n")[0],
        epilog="scenarios: " + ", ".join(known),
    )
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    harness.add_options(parser)
    args = parser.parse_args(argv)
    if args.list:
        for entry in known.values():
            default = " (default)" if entry.default else ""
            print(f"{entry.name:<14}{entry.about}{default}")
        return
    unknown = [name for name in args.scenarios if name not in known]
    if unknown:
        parser.error(f"unknown scenario: {', '.join(unknown)} (known: {', '.join(known)})")
    names = args.scenarios or [entry.name for entry in known.values() if entry.default]
    registry.print_table(registry.run(names, harness.options(args)))


if __name__ == "__main__":
    main()
