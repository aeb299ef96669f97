"""Queue-time estimates from observed service times (HOME-206, HOME-902, HOME-1003).

A pool with ``S`` slots whose tasks take ``T`` ms on average drains one queued task every
``T / S`` ms. The task at queue position ``p`` (0-based) starts once ``p + 1`` running tasks
have finished, i.e. after about ``ceil((p + 1) / S)`` service times. ``T`` is an exponentially
weighted mean of real completions, so the figures follow the workload; until the first task
finishes nothing is known and the estimate is ``None``.
"""

from __future__ import annotations

import math

_ALPHA = 0.2


class ServiceTimeEstimator:
    def __init__(self) -> None:
        self.mean_ms: float | None = None
        self.samples = 0

    def observe(self, service_ms: float) -> None:
        service_ms = max(service_ms, 0.0)
        if self.mean_ms is None:
            self.mean_ms = service_ms
        else:
            self.mean_ms += _ALPHA * (service_ms - self.mean_ms)
        self.samples += 1

    def predicted_start_ms(self, position: int, slots_total: int, slots_free: int) -> int | None:
        """When the task at queue ``position`` should start, from now."""
        if position < slots_free:
            return 0
        if self.mean_ms is None:
            return None
        waves = math.ceil((position + 1 - slots_free) / max(slots_total, 1))
        return round(waves * self.mean_ms)

    def drain_interval_ms(self, slots_total: int) -> int | None:
        """Expected time between two queue places freeing up."""
        if self.mean_ms is None:
            return None
        return max(1, math.ceil(self.mean_ms / max(slots_total, 1)))
