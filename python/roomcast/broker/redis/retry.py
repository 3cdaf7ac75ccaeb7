"""The one retry policy of every reconnect loop: the broker's first connection, its
reconnections after an outage, and the helpers' `configure()`."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, capped.

    The cap is low on purpose: a Redis that comes back is in use again within about
    `max_delay` (plus one connection), whatever the outage's length, and an attempt on a
    refused port costs almost nothing. Delivery resumes within 1 s after Redis returns.
    """

    min_delay: float = 0.1
    max_delay: float = 0.25
    jitter: float = 0.2
    """Each delay is scaled by a random factor in [1 - jitter, 1 + jitter]."""

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (0 for the first retry)."""
        base = min(self.max_delay, self.min_delay * 2.0 ** min(attempt, 32))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


RECONNECT = RetryPolicy()
"""The policy in use."""
