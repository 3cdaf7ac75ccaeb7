"""Reconnect delays: exponential back-off with full jitter, over the client's URLs in turn."""

from __future__ import annotations

import random


class Backoff:
    """`delay()` after each failed attempt: uniform in [0, min(max_delay, min_delay * 2**n)]
    for the n-th failure in a row (full jitter: clients that lost the same node spread out
    instead of coming back together); `reset()` once a connection was established."""

    def __init__(self, min_delay: float, max_delay: float, rng: random.Random | None = None):
        if min_delay < 0 or max_delay < min_delay:
            raise ValueError(
                f"backoff must be (min_s, max_s) with 0 <= min_s <= max_s: "
                f"{(min_delay, max_delay)!r}"
            )
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.failures = 0
        self._rng = rng or random.Random()

    def delay(self) -> float:
        ceiling = min(self.max_delay, self.min_delay * 2.0 ** min(self.failures, 62))
        self.failures += 1
        return self._rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        self.failures = 0


class Urls:
    """The URLs in turn: after a connection to one ends (or fails), the next is tried first,
    so the clients of a node that died go to another."""

    def __init__(self, urls: list[str]) -> None:
        if not urls:
            raise ValueError("at least one url is needed")
        self.urls = urls
        self._index = 0

    @property
    def current(self) -> str:
        return self.urls[self._index]

    def advance(self) -> None:
        self._index = (self._index + 1) % len(self.urls)
