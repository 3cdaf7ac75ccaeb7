"""Condenses an Autobahn|Testsuite report (reports/index.json) into the committed summary:
counts per behaviour, the cases that are not OK (with their behaviour), the run's time."""

from __future__ import annotations

import json
import sys
from collections import Counter

PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}


def main(index_path: str, seconds: str, *cases: str) -> None:
    with open(index_path) as index:
        report = json.load(index)
    (agent,) = report.values()
    behavior: Counter[str] = Counter()
    close: Counter[str] = Counter()
    not_ok: dict[str, str] = {}
    for case, result in sorted(agent.items(), key=lambda kv: [int(p) for p in kv[0].split(".")]):
        behavior[result["behavior"]] += 1
        close[result["behaviorClose"]] += 1
        if result["behavior"] != "OK" or result["behaviorClose"] not in PASSING:
            not_ok[case] = f"{result['behavior']} / close {result['behaviorClose']}"
    failing = [
        case
        for case, result in agent.items()
        if result["behavior"] not in PASSING or result["behaviorClose"] not in PASSING
    ]
    summary = {
        "suite": "autobahntestsuite 25.10.1 fuzzingclient",
        "cases_selected": list(cases),
        "cases": sum(behavior.values()),
        "seconds": int(seconds),
        "behavior": dict(sorted(behavior.items())),
        "behavior_close": dict(sorted(close.items())),
        "not_ok": not_ok,
        "failing": sorted(failing),
    }
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
