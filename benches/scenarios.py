"""Every scenario module, in the order `python -m benches --list` shows their scenarios.

Importing a module registers its scenarios (`@scenario` in benches/registry.py), so a new
scenario module needs one line in MODULES. A module that imports another (hundredk uses
serving and compiled) comes after it, so the order here is the order of registration.
"""

from __future__ import annotations

import importlib

MODULES = (
    "benches.delivery",
    "benches.connections",
    "benches.inserver",
    "benches.redisnodes",
    "benches.serving",
    "benches.api",
    "benches.compiled",
    "benches.history",
    "benches.hundredk",
    "benches.recoverystorm",
)


def load() -> None:
    """Import (and so register) every scenario module."""
    for name in MODULES:
        importlib.import_module(name)
