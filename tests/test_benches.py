"""A smoke run of the bench harness: it completes and reports no loss (never a timing)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ROOT / "benches"


def _bench_imports() -> dict[str, set[str]]:
    """For each module of benches/, the benches modules it imports (at any depth in it)."""
    graph: dict[str, set[str]] = {}
    for path in BENCHES.glob("*.py"):
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    imported.add(node.module)
                else:
                    imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benches."):
                imported.add(node.module.removeprefix("benches."))
            elif isinstance(node, ast.Import):
                imported.update(
                    a.name.removeprefix("benches.")
                    for a in node.names
                    if a.name.startswith("benches.")
                )
        graph[path.stem] = imported
    return graph


def test_no_bench_module_imports_the_entry_point_and_imports_have_no_cycle():
    graph = _bench_imports()
    assert {"harness", "registry", "scenarios", "__main__"} <= graph.keys()
    importers = sorted(name for name, imported in graph.items() if "__main__" in imported)
    assert importers == []
    assert graph["harness"] == set(), "the harness builds on no other bench module"
    assert graph["registry"] == {"harness"}

    def visit(name: str, path: list[str]) -> None:
        assert name not in path, f"import cycle: {' -> '.join([*path, name])}"
        for imported in graph.get(name, ()):
            visit(imported, [*path, name])

    for name in graph:
        visit(name, [])


def test_python_m_benches_loads_one_copy_of_each_bench_module():
    # Run the entry point as `python -m benches` does, with every scenario module loaded.
    code = (
        "import runpy, sys; sys.argv = ['benches', '--list']; "
        "runpy.run_module('benches', run_name='__main__', alter_sys=True); "
        "import benches.harness as h, benches.compiled as c, benches.history as hi; "
        "assert c.LoadGen is h.LoadGen and hi.LoadGen is h.LoadGen; "
        "print(sorted(m for m in sys.modules if m.startswith('benches')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    modules = result.stdout.strip().splitlines()[-1]
    assert "'benches.harness'" in modules and "'benches.hundredk'" in modules
    assert "benches.__main__" not in modules


def _registered() -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "benches", "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [line.split()[0] for line in result.stdout.splitlines()]


def test_every_registered_scenario_has_its_row_in_the_bench_readme():
    names = _registered()
    assert {"fanout", "steady", "saturate", "hundredk", "historymem", "scrape"} <= set(names)
    readme = (BENCHES / "README.md").read_text()
    assert [name for name in names if f"| `{name}` |" not in readme] == []


def test_an_unknown_scenario_is_refused_with_the_known_ones():
    result = subprocess.run(
        [sys.executable, "-m", "benches", "fanout", "nosuch"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "unknown scenario: nosuch (known: fanout, rooms," in result.stderr


def test_bench_runner_smoke_completes_without_loss():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benches",
            "fanout",
            "rooms",
            "--quick",
            "--servers",
            "roomcast,picows",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert {(r["scenario"], r["server"]) for r in rows} == {
        ("fanout", "roomcast"),
        ("fanout", "picows"),
        ("rooms", "roomcast"),
        ("rooms", "picows"),
    }
    assert all(r["lost"] == 0 and r["delivered_per_s"] > 0 for r in rows)


def test_serving_benches_smoke_completes_without_loss():
    result = subprocess.run(
        [sys.executable, "-m", "benches", "workers", "scrape", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["scenario"] for r in rows] == [
        "workers",
        "workers",
        "workers-ratio",
        "scrape",
        "scrape-fanout",
    ]
    assert all(r["lost"] == 0 for r in rows if r["scenario"] == "workers")
    assert rows[3]["page_bytes"] > 0


def test_api_bench_smoke_delivers_every_message_single_and_batched():
    result = subprocess.run(
        [sys.executable, "-m", "benches", "api", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(r["scenario"], r.get("mode")) for r in rows] == [
        ("api", "single"),
        ("api", "batch"),
        ("api-ratio", None),
    ]
    for row in rows[:2]:
        assert row["lost"] == 0 and row["failed"] == 0
        assert row["messages"] == 2000 and row["requests"] == (
            2000 if row["mode"] == "single" else 20
        )


def _steady_quick(env: dict[str, str]) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-m", "benches", "steady", "--quick", "--servers", "roomcast"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_steady_bench_with_the_compiled_load_generator_completes_without_loss():
    if shutil.which("go") is None:
        pytest.skip("needs go (the compiled load generator); the fallback is tested below")
    rows = _steady_quick(dict(os.environ))
    assert [(r["scenario"], r["loadgen"]) for r in rows] == [
        ("steady", "compiled"),
        ("steadyrooms", "compiled"),
    ]
    assert all(r["lost"] == 0 and r["cpu_ns_per_delivery_with_idle"] > 0 for r in rows)


def test_steady_bench_falls_back_to_the_python_load_generator():
    rows = _steady_quick({**os.environ, "ROOMCAST_BENCH_PYTHON_LOADGEN": "1"})
    assert [(r["scenario"], r["loadgen"]) for r in rows] == [
        ("steady", "python"),
        ("steadyrooms", "python"),
    ]
    assert all(r["lost"] == 0 for r in rows)


def test_history_benches_complete_exactly_once_with_the_compiled_load_generator():
    if shutil.which("go") is None or shutil.which("redis-server") is None:
        pytest.skip("needs go (the compiled load generator) and redis-server")
    result = subprocess.run(
        [sys.executable, "-m", "benches", "historyfanout", "recovery", "historymem", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    fanout = [(r["broker"], r["regime"]) for r in rows if r["scenario"] == "historyfanout"]
    assert fanout == [
        ("memory", "steady"),
        ("memory", "burst"),
        ("redis", "steady"),
        ("redis", "burst"),
    ]
    assert all(r["lost"] == 0 for r in rows if r["scenario"] == "historyfanout")
    recovery = [r for r in rows if r["scenario"] == "recovery"]
    assert [r["broker"] for r in recovery] == ["memory", "redis"]
    assert all(r["exact"] for r in recovery)
    memory = [r for r in rows if r["scenario"] == "historymem"]
    assert len(memory) == 2 and all(r["stream_bytes"] > 0 for r in memory)


def test_hundredk_bench_smoke_connects_all_and_closes_only_the_silent_with_4002():
    if shutil.which("go") is None or shutil.which("redis-server") is None:
        pytest.skip("needs go (the compiled load generator) and redis-server")
    result = subprocess.run(
        [sys.executable, "-m", "benches", "hundredk", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    [row] = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert row["scenario"] == "hundredk"
    assert row["connect_errors"] == 0 and row["connected"] == row["clients"]
    assert sum(row["fds_per_worker"]) > row["clients"]  # every worker took its share
    assert row["silent_close_codes"] == {"4002": row["silent"]} and row["others_closed"] == 0


def test_deflate_scenario_smoke_compresses_without_loss():
    result = subprocess.run(
        [sys.executable, "-m", "benches", "deflate", "--quick", "--servers", "roomcast"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    measured = {(r["server"], r["regime"]) for r in rows if r["scenario"] == "deflate"}
    assert measured == {
        (server, regime)
        for server in ("roomcast", "roomcast-deflate")
        for regime in ("burst", "paced", "saturated")
    }
    assert all(r["lost"] == 0 for r in rows if r["scenario"] == "deflate")
    # The clients counted the bytes they got: compressed frames are a fraction of the plain.
    ratios = [r for r in rows if r["scenario"] == "deflate-ratio"]
    assert len(ratios) == 3 and all(r["wire_ratio"] < 0.5 for r in ratios)


def test_stall_smoke_writes_every_broadcast_both_ways():
    result = subprocess.run(
        [sys.executable, "-m", "benches", "stall", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["mode"] for r in rows) == ["parts", "whole"]
    assert all(r["lost"] == 0 and r["cpu_ns_per_delivery"] > 0 for r in rows)


def test_recovery_storm_bench_smoke_delivers_every_message_once():
    result = subprocess.run(
        [sys.executable, "-m", "benches", "recoverystorm", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(r["members"], r["recovering"], r["lost"]) for r in rows] == [(2000, 500, 0)]
