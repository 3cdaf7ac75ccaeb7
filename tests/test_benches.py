"""A smoke run of the bench harness: it completes and reports no loss (never a timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
