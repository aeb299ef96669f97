"""Session budgets (HOME-402, ORCH-3099, OC-CORE-1023, OC-CORE-1024): tokens, time, cost.

Admission reserves what a task may use at most — its prompt plus ``max_tokens`` tokens, and
their cost at the pool's ``cost_per_1k_tokens`` — and refuses (409 ``BUDGET_EXHAUSTED``) a
task that does not fit what the session has left; the reservation is settled with what the
task really used when it ends, against the session that reserved it. So concurrent tasks
of one session can never overspend tokens or cost. Time is decode wall time summed over
the session's tasks: two tasks decoding side by side spend it twice as fast, so each one
checks the shared clock (:meth:`Budget.time_exhausted`) rather than a deadline of its own,
and every task still decoding when it is spent ends with an ``error`` frame
(``BUDGET_EXHAUSTED``). What is left is on the 202 and stream headers, in ``metrics``
frames and on ``GET /v1/sessions/{id}``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from orchestratord.config import BudgetsConfig


class BudgetExhausted(Exception):
    pass


@dataclass(slots=True)
class Budget:
    tokens: int | None
    time_ms: int | None
    cost: float | None
    tokens_used: int = 0
    time_used_ms: float = 0.0
    cost_used: float = 0.0
    tokens_reserved: int = 0
    cost_reserved: float = 0.0
    decoding: dict[object, float] = field(default_factory=dict)  # task -> when it started

    @classmethod
    def from_config(cls, config: BudgetsConfig) -> Budget:
        return cls(config.tokens, config.time_ms, config.cost)

    def reserve(self, tokens: int, cost_per_1k: float) -> tuple[int, float]:
        cost = tokens * cost_per_1k / 1000
        if (
            self.tokens is not None
            and self.tokens_used + self.tokens_reserved + tokens > self.tokens
        ):
            left = self.tokens - self.tokens_used - self.tokens_reserved
            raise BudgetExhausted(
                f"the session has {max(left, 0)} tokens left; this task may use {tokens}"
            )
        if self.time_exhausted(time.monotonic()):
            raise BudgetExhausted("the session's time budget is spent")
        if self.cost is not None and self.cost_used + self.cost_reserved + cost > self.cost:
            cost_left = self.cost - self.cost_used - self.cost_reserved
            raise BudgetExhausted(
                f"the session has {max(cost_left, 0):g} cost left; this task may cost {cost:g}"
            )
        self.tokens_reserved += tokens
        self.cost_reserved += cost
        return tokens, cost

    def settle(self, reserved: tuple[int, float], tokens: int, cost_per_1k: float) -> None:
        self.tokens_reserved -= reserved[0]
        self.cost_reserved -= reserved[1]
        self.tokens_used += tokens
        self.cost_used += tokens * cost_per_1k / 1000

    def task_started(self, task: object, now: float) -> None:
        self.task_stopped(task, now)  # a restarted task: its first attempt's time counts
        self.decoding[task] = now

    def task_stopped(self, task: object, now: float | None = None) -> None:
        started = self.decoding.pop(task, None)
        if started is not None:
            stopped = time.monotonic() if now is None else now
            self.time_used_ms += max(0.0, stopped - started) * 1000

    def time_spent_ms(self, now: float) -> float:
        """Decode time so far, counting the tasks decoding right now."""
        return self.time_used_ms + sum(max(0.0, now - s) for s in self.decoding.values()) * 1000

    def time_exhausted(self, now: float) -> bool:
        return self.time_ms is not None and self.time_spent_ms(now) >= self.time_ms

    def remaining(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.tokens is not None:
            out["tokens_budget_remaining"] = max(
                0, self.tokens - self.tokens_used - self.tokens_reserved
            )
        if self.time_ms is not None:
            spent = self.time_spent_ms(time.monotonic())
            out["time_budget_remaining_ms"] = max(0, int(self.time_ms - spent))
        if self.cost is not None:
            out["cost_budget_remaining"] = round(
                max(0.0, self.cost - self.cost_used - self.cost_reserved), 6
            )
        return out

    def headers(self) -> dict[str, str]:
        names = {
            "tokens_budget_remaining": "X-Budget-Tokens-Remaining",
            "time_budget_remaining_ms": "X-Budget-Time-Remaining-Ms",
            "cost_budget_remaining": "X-Budget-Cost-Remaining",
        }
        return {names[k]: str(v) for k, v in self.remaining().items()}
