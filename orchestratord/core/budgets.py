"""Session budgets (HOME-402, ORCH-3099, OC-CORE-1023, OC-CORE-1024): tokens, time, cost.

Admission reserves what a task may use at most — its prompt plus ``max_tokens`` tokens, and
their cost at the pool's ``cost_per_1k_tokens`` — and refuses (409 ``BUDGET_EXHAUSTED``) a
task that does not fit what the session has left; the reservation is settled with what the
task really used when it ends. So concurrent tasks of one session can never overspend
tokens or cost. Time is decode wall time: a task still decoding when the session's time is
spent ends with an ``error`` frame (``BUDGET_EXHAUSTED``). What is left is on the 202 and
stream headers, in ``metrics`` frames and on ``GET /v1/sessions/{id}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
        if self.time_ms is not None and self.time_used_ms >= self.time_ms:
            raise BudgetExhausted("the session's time budget is spent")
        if self.cost is not None and self.cost_used + self.cost_reserved + cost > self.cost:
            cost_left = self.cost - self.cost_used - self.cost_reserved
            raise BudgetExhausted(
                f"the session has {max(cost_left, 0):g} cost left; this task may cost {cost:g}"
            )
        self.tokens_reserved += tokens
        self.cost_reserved += cost
        return tokens, cost

    def settle(
        self, reserved: tuple[int, float], tokens: int, decode_ms: float, cost_per_1k: float
    ) -> None:
        self.tokens_reserved -= reserved[0]
        self.cost_reserved -= reserved[1]
        self.tokens_used += tokens
        self.cost_used += tokens * cost_per_1k / 1000
        self.time_used_ms += decode_ms

    def time_deadline(self, now: float) -> float:
        """When a task starting now must stop decoding (``inf`` without a time budget)."""
        if self.time_ms is None:
            return math.inf
        return now + max(0.0, self.time_ms - self.time_used_ms) / 1000

    def remaining(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.tokens is not None:
            out["tokens_budget_remaining"] = max(
                0, self.tokens - self.tokens_used - self.tokens_reserved
            )
        if self.time_ms is not None:
            out["time_budget_remaining_ms"] = max(0, int(self.time_ms - self.time_used_ms))
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
