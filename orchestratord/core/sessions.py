"""Sessions (HOME-401, HOME-403, ORCH-2004, ORCH-2005, ORCH-3009, ORCH-3021, OC-CORE-1013).

A session begins with the first task that names its ``session_id`` and lives for
``sessions.ttl_ms`` from then (10 minutes by default) and at most ``sessions.max_turns``
tasks (8). An expired, exhausted or deleted session refuses further tasks (409 CONFLICT,
saying which): an expired one is remembered as such for one more lifetime (at most
``sessions.max_live`` of them), so its id cannot quietly start over with a fresh budget;
after that the id is forgotten.

Affinity: each finished task records the replica and engine slot it ran on; the session's
next task prefers that replica (when it can take the task now) and that slot (when free),
where the engine still holds the conversation's prompt cache. ``kv_warmth`` is true only
when the task reused the session's cache on the session's own replica; a task that had to
go elsewhere (a failover) reports false.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from orchestratord.config import BudgetsConfig
from orchestratord.core.budgets import Budget
from orchestratord.core.task import Task


class SessionEnded(Exception):
    """The session takes no more tasks; the message says why."""


class SessionsFull(Exception):
    """``sessions.max_live`` sessions exist; a new one must wait for one to end."""


@dataclass(slots=True)
class Session:
    id: str
    pool_id: str
    created_at: float
    expires_at: float
    turns: int = 0
    replica_id: str | None = None
    slot_id: int | None = None
    kv_tokens: int = 0
    kv_warm: bool = False
    ended: str | None = None  # why it ended early (deleted), None while open
    tasks: set[Task] = field(default_factory=set)
    budget: Budget | None = None

    def view(self, now: float, max_turns: int, kv_bytes_per_token: int | None) -> dict[str, Any]:
        return {
            "session_id": self.id,
            "pool_id": self.pool_id,
            "ttl_ms_remaining": max(0, int((self.expires_at - now) * 1000)),
            "turns": self.turns,
            "max_turns": max_turns,
            "kv_tokens": self.kv_tokens,
            "kv_bytes": self.kv_tokens * (kv_bytes_per_token or 0),
            "kv_warmth": self.kv_warm,
            "replica_id": self.replica_id,
            "slot_id": self.slot_id,
            **(self.budget.remaining() if self.budget is not None else {}),
        }


class Sessions:
    def __init__(
        self,
        ttl_s: float,
        max_turns: int,
        budgets: BudgetsConfig | None = None,
        max_live: int = 4096,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_turns = max_turns
        self.max_live = max_live
        self.budgets = budgets if budgets is not None and budgets.enabled else None
        # Creation order is expiry order (a fixed lifetime), so expired ones are at the front.
        self._table: OrderedDict[str, Session] = OrderedDict()
        # Ended sessions' ids (expired or deleted), until one more lifetime has passed
        # (id -> why, forget at); not live, so they do not count toward max_live.
        self._ended: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def _purge(self, now: float) -> None:
        while self._table:
            oldest = next(iter(self._table.values()))
            if oldest.expires_at > now:
                break
            self._table.popitem(last=False)
            self._remember(oldest.id, "expired", oldest.expires_at + self.ttl_s)
        while self._ended and (
            len(self._ended) > self.max_live or next(iter(self._ended.values()))[1] <= now
        ):
            self._ended.popitem(last=False)

    def _remember(self, session_id: str, why: str, forget_at: float) -> None:
        self._ended[session_id] = (why, forget_at)
        self._ended.move_to_end(session_id)

    def get(self, session_id: str) -> Session | None:
        """A live session (not expired, not deleted), or None."""
        now = time.monotonic()
        self._purge(now)
        session = self._table.get(session_id)
        if session is None or session.ended is not None or session.expires_at <= now:
            return None
        return session

    def prepare(self, session_id: str) -> Session:
        """The session a new task would join: the live one, or a new one that is stored
        only by :meth:`commit` (so a task refused at admission leaves no session behind).
        Raises SessionEnded or SessionsFull."""
        now = time.monotonic()
        self._purge(now)
        session = self._table.get(session_id)
        ended = self._ended.get(session_id)
        if ended is not None and ended[0] == "deleted":
            raise SessionEnded(f"session {session_id} was deleted; start a new session")
        if ended is not None or (session is not None and session.expires_at <= now):
            minutes = self.ttl_s / 60
            raise SessionEnded(
                f"session {session_id} expired ({minutes:g} minutes after its first task); "
                "start a new session"
            )
        if session is None:
            if len(self._table) >= self.max_live:
                raise SessionsFull(
                    f"{self.max_live} sessions are live (sessions.max_live); a new one can "
                    "start when one expires or is deleted"
                )
            fresh = Session(session_id, "", now, now + self.ttl_s)
            if self.budgets is not None:
                fresh.budget = Budget.from_config(self.budgets)
            return fresh
        if session.turns >= self.max_turns:
            raise SessionEnded(
                f"session {session_id} has had its {self.max_turns} turns; start a new session"
            )
        return session

    def commit(self, session: Session, pool_id: str, task: Task) -> None:
        """Store ``session`` (if new) with ``task`` admitted into it."""
        if self._table.get(session.id) is not session:
            self._table.pop(session.id, None)
            session.pool_id = pool_id
            self._table[session.id] = session  # appended: creation order stays expiry order
        elif session.pool_id != pool_id:  # another model: no cache to keep warm there
            session.pool_id, session.replica_id, session.slot_id = pool_id, None, None
        session.turns += 1
        session.tasks.add(task)
        task.session = session

    def find(self, session_id: str) -> Session | None:
        """The session, ended or not, while its lifetime lasts."""
        return self._table.get(session_id)

    def task_finished(self, task: Task) -> None:
        """Settle the task's budget with the session that reserved it (even one that has
        expired since), and record where its cache now lives."""
        session: Session | None = task.session
        if session is None:
            return
        session.tasks.discard(task)
        prompt = task.tokens_in if task.tokens_in is not None else (task.prompt_tokens or 0)
        if session.budget is not None:
            used = prompt + task.tokens_out if task.started_at is not None else 0
            per_1k = task.budget_reservation[1] * 1000 / max(task.budget_reservation[0], 1)
            session.budget.settle(task.budget_reservation, used, per_1k)
            session.budget.task_stopped(task)
        if task.terminal_event != "end" or task.replica_id is None:
            return
        if self._table.get(session.id) is not session:
            return  # the session is over; a new one with this id starts cold
        session.replica_id, session.slot_id = task.replica_id, task.last_slot_id
        session.kv_tokens = prompt + task.tokens_out
        session.kv_warm = task.kv_warm

    def end(self, session_id: str) -> Session | None:
        """Delete a live session: it leaves the live table at once (a new session can take
        its place under max_live) and its id refuses tasks for one more lifetime."""
        session = self.get(session_id)
        if session is not None:
            session.ended = "deleted"
            del self._table[session_id]
            self._remember(session_id, "deleted", time.monotonic() + self.ttl_s)
        return session

    def __len__(self) -> int:
        return len(self._table)

    def live_count(self) -> int:
        now = time.monotonic()
        self._purge(now)
        return sum(1 for s in self._table.values() if s.ended is None and s.expires_at > now)
