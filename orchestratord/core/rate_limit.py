"""Per-priority admission rate limits (ORCH-3006): a token bucket per pool and priority.

A bucket holds up to ``burst`` tokens and refills at ``rate_limit_rps`` per second; each
admission takes one. The bucket is consulted last, after every other check (HARD-111), so a
malformed or otherwise refused task spends no token; a task that then finds the queue full
gives its token back. An empty bucket refuses with the time until the next token as the
retry hint (HOME-902's headers, ``policy_label: rate-limit``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(
        self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate_per_s
        self.capacity = float(burst)
        self.tokens = float(burst)
        self._clock = clock
        self._updated = self._clock()

    def take(self) -> int:
        """Take a token: 0 when granted, else the milliseconds until one is there."""
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - self.tokens) / self.rate * 1000))

    def give_back(self) -> None:
        """Return a token taken for a task that was then refused (the queue was full)."""
        self.tokens = min(self.capacity, self.tokens + 1.0)
