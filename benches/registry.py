"""The scenario registry: every scenario module registers its scenarios here, by name.

A scenario is a function `run(ctx, server) -> rows` decorated with `@scenario(name, ...)`:

    @scenario("fanout", about="...", per_server=True, compare={"fanout": (field, unit)})
    def fanout(ctx: Context, server: str | None) -> list[Row]: ...

- `per_server`: run once per server of `--servers` (`server` is its name), else once (`None`);
- `compare`: the row scenarios (a row's "scenario" field) whose `field` the end-of-run table
  sets side by side across servers, as ratios to the baselines; `detail(row)` adds text
  after the compared figure;
- `summary(row)`: the table line for any other row (or None to print nothing);
- `default`: part of a bare `python -m benches`.

The list of scenario modules is benches/scenarios.py; this module imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .harness import Options, Row

# run(ctx, server): `server` is a server's name (str) for a per-server scenario, else None.
Runner = Callable[["Context", Any], list[Row]]
R = TypeVar("R", bound=Runner)


@dataclass
class Context:
    """One invocation: its options, and every row measured so far (in order)."""

    options: Options
    rows: list[Row] = field(default_factory=list)


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    run: Runner
    per_server: bool = False
    default: bool = False
    compare: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    detail: Callable[[Row], str] | None = None
    summary: Callable[[Row], str | None] | None = None


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    name: str,
    *,
    about: str,
    per_server: bool = False,
    default: bool = False,
    compare: Mapping[str, tuple[str, str]] | None = None,
    detail: Callable[[Row], str] | None = None,
    summary: Callable[[Row], str | None] | None = None,
) -> Callable[[R], R]:
    """Register the decorated function as scenario `name` (see the module docstring)."""

    def register(run: R) -> R:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} registered twice")
        SCENARIOS[name] = Scenario(
            name, about, run, per_server, default, compare or {}, detail, summary
        )
        return run

    return register


def run(names: list[str], options: Options) -> list[tuple[Scenario, Row]]:
    """Run the named scenarios in order; every row with the scenario that measured it."""
    ctx = Context(options)
    produced: list[tuple[Scenario, Row]] = []
    for name in names:
        entry = SCENARIOS[name]
        for server in options.servers if entry.per_server else [None]:
            for row in entry.run(ctx, server):
                ctx.rows.append(row)
                produced.append((entry, row))
    return produced


def print_table(produced: list[tuple[Scenario, Row]]) -> None:
    """The end-of-run table: compared figures side by side with their ratios to baseline (b)
    (picows), baseline (c) (the original) and, for Redis subscriptions, to `pattern`; then
    one line per other row."""
    by_key: dict[tuple[object, ...], dict[str, tuple[Scenario, Row]]] = {}
    others: list[tuple[Scenario, Row]] = []
    for entry, row in produced:
        if "server" in row and row["scenario"] in entry.compare:
            key = (row["scenario"], row.get("clients"))
            by_key.setdefault(key, {})[row["server"]] = (entry, row)
        else:
            others.append((entry, row))
    print()
    for (name, count), servers in by_key.items():
        metric, unit = next(iter(servers.values()))[0].compare[str(name)]
        bases = {kind: row.get(metric) for kind, (_, row) in servers.items()}
        base_b, base_c, base_pattern = (bases.get(k) for k in ("picows", "ignis", "pattern"))
        for kind, (entry, row) in servers.items():
            value = row[metric]
            ratios = ""
            if base_b and kind != "picows":
                ratios += f"  {value / base_b:.2f}x (b)"
            if base_c and kind != "ignis":
                ratios += f"  {value / base_c:.2f}x (c)"
            if base_pattern and kind == "interest":
                ratios += f"  {value / base_pattern:.2f}x pattern"
            extra = entry.detail(row) if entry.detail else ""
            print(f"{name:<9} C={count!s:>6}  {kind:<8} {value:>12,.2f} {unit}{ratios}{extra}")
    for entry, row in others:
        line = entry.summary(row) if entry.summary else None
        if line is not None:
            print(line)
