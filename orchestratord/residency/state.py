"""A pool's residency: whether its engines are there, and what is known about loading them.

Pinned pools are always ``loaded`` (their engines start with orchestratord and stay). An
on-demand pool moves ``unloaded`` → ``loading`` → ``loaded`` → ``unloading`` → ``unloaded``,
or ``loading`` → ``failed`` (for the backoff) → ``unloaded``. Only the residency manager
changes the state; everything else reads it.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

_DEMAND_WINDOW_S = 600.0  # recent demand: admissions in the last ten minutes
_HOLD_RETRY_AFTER = 4  # evictions without a hold after one that did not pay
# Before a pool's first load nothing is measured: a few seconds for the engine to start,
# plus reading the model file at about 1 GB/s.
_STARTUP_ESTIMATE_S = 2.0
_READ_BYTES_PER_S = 1e9


class State(StrEnum):
    LOADED = "loaded"
    LOADING = "loading"
    UNLOADING = "unloading"
    UNLOADED = "unloaded"
    FAILED = "failed"


def estimate_load_s(model_bytes: int) -> float:
    return _STARTUP_ESTIMATE_S + model_bytes / _READ_BYTES_PER_S


@dataclass
class Residency:
    mode: str  # "pinned" | "on-demand"
    keep_alive_s: float
    max_keep_alive_s: float
    state: State
    estimated_load_s: float = _STARTUP_ESTIMATE_S
    last_load_s: float | None = None  # measured: the last load's duration
    loaded_at: float | None = None  # monotonic
    loaded_at_ms: int | None = None  # wall clock, for clients
    loading_since: float | None = None
    idle_since: float | None = None  # no task queued or running since then
    failed_until: float | None = None
    failure: str | None = None
    closing: bool = False  # swapped out: takes no new task, finishes what runs
    blocked: bool = False  # wants to load, but waits for room
    devices: tuple[int, ...] = ()  # where it is loaded, or loading
    demand: deque[float] = field(default_factory=deque)
    contended_at: float | None = None  # last asked for while another pool had work
    holding_since: float | None = None  # idle, kept for its next task while another waits
    last_hold_paid: bool = True  # the last hold got its task
    holds_skipped: int = 0  # evictions without a hold since a hold that did not pay

    @property
    def on_demand(self) -> bool:
        return self.mode == "on-demand"

    @property
    def load_s(self) -> float:
        """What a load of this pool takes: measured once it has loaded, else the estimate."""
        return self.last_load_s if self.last_load_s is not None else self.estimated_load_s

    def note_demand(self, now: float, *, contended: bool = False) -> None:
        """A task was admitted; ``contended``: while another pool had tasks queued or running
        (concurrent traffic, not one user taking turns)."""
        if contended:
            self.contended_at = now
        self.demand.append(now)
        while self.demand and self.demand[0] < now - _DEMAND_WINDOW_S:
            self.demand.popleft()

    def worth_holding(self) -> bool:
        """Whether to hold this idle pool for its next task: yes unless the last hold went
        unpaid, and even then again after a few evictions (traffic changes)."""
        return self.last_hold_paid or self.holds_skipped >= _HOLD_RETRY_AFTER

    def hold_paid(self) -> None:
        """A task came for the pool while it was held."""
        if self.holding_since is not None:
            self.holding_since = None
            self.last_hold_paid, self.holds_skipped = True, 0

    def hold_ended_unpaid(self) -> None:
        """The pool is evicted: a hold in progress went unpaid; no hold is one skipped."""
        if self.holding_since is not None:
            self.holding_since = None
            self.last_hold_paid, self.holds_skipped = False, 0
        elif not self.last_hold_paid:
            self.holds_skipped += 1

    def recent_demand(self, now: float) -> int:
        """Admissions in the last ten minutes: the times are in order, so the old ones are
        dropped from the front and the rest counted, O(1) amortised per call (the planner
        asks for every candidate in every look)."""
        demand = self.demand
        while demand and demand[0] < now - _DEMAND_WINDOW_S:
            demand.popleft()
        return len(demand)

    def load_ms_left(self, now: float) -> int:
        """How much of a load is still ahead of a task that waits for this pool (0 when the
        pool is loaded)."""
        if self.state is State.LOADED:
            return 0
        if self.state is State.LOADING and self.loading_since is not None:
            return max(0, round((self.load_s - (now - self.loading_since)) * 1000))
        return round(self.load_s * 1000)

    def set_keep_alive(self, keep_alive_ms: int | None) -> None:
        if keep_alive_ms is not None:
            self.keep_alive_s = min(keep_alive_ms / 1000, self.max_keep_alive_s)

    def unloads_in_s(self, now: float) -> float | None:
        if not self.on_demand or self.state is not State.LOADED or self.idle_since is None:
            return None
        return max(0.0, self.idle_since + self.keep_alive_s - now)

    def view(self, now: float) -> dict[str, Any]:
        unloads_in = self.unloads_in_s(now)
        return {
            "mode": self.mode,
            "state": self.state.value,
            "loaded_at_ms": self.loaded_at_ms,
            "idle_ms": (
                round((now - self.idle_since) * 1000)
                if self.idle_since is not None and self.state is State.LOADED
                else None
            ),
            "unloads_in_ms": round(unloads_in * 1000) if unloads_in is not None else None,
            "keep_alive_ms": round(self.keep_alive_s * 1000),
            "last_load_ms": round(self.last_load_s * 1000)
            if self.last_load_s is not None
            else None,
            "failed_until_ms": (
                int((time.time() + self.failed_until - now) * 1000)
                if self.failed_until is not None and self.state is State.FAILED
                else None
            ),
            "failure": self.failure,
        }
