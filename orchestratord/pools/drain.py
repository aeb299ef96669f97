"""Draining a pool (HOME-504, ORCH-2101, OC-CTRL-2002) and resuming it.

A drain stops admission to the pool at once (503 ``POOL_UNAVAILABLE`` with a retry hint);
queued and running tasks go on until the queue is empty and nothing runs, or until the
deadline, when whatever is left ends with an ``error`` frame (``POOL_UNAVAILABLE``, "pool
drained"). The pool then stays drained — engines loaded, nothing admitted — until
``POST /v1/pools/{id}/resume``; health says ``draining: true`` from the drain to the resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from orchestratord.errors import ErrorCode

if TYPE_CHECKING:
    from orchestratord.pools.pool import Pool

log = logging.getLogger("orchestratord.pool")


@dataclass
class Drain:
    deadline_ms: int
    reason: str
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    state: Literal["draining", "drained"] = "draining"
    ended_tasks: int = 0
    finisher: asyncio.Task[None] | None = None

    @property
    def remaining_ms(self) -> int:
        if self.state == "drained":
            return 0
        return max(0, self.started_ms + self.deadline_ms - int(time.time() * 1000))

    def view(self) -> dict[str, object]:
        return {
            "state": self.state,
            "reason": self.reason,
            "deadline_ms": self.deadline_ms,
            "started_ms": self.started_ms,
            "remaining_ms": self.remaining_ms,
            "ended_tasks": self.ended_tasks,
        }


def start_drain(pool: Pool, deadline_ms: int, reason: str) -> Drain:
    drain = Drain(deadline_ms, reason)
    pool.drain = drain
    drain.finisher = asyncio.get_running_loop().create_task(
        _finish(pool, drain), name=f"drain-{pool.id}"
    )
    log.warning("pool %s: draining (%s), deadline %d ms", pool.id, reason, deadline_ms)
    return drain


async def _finish(pool: Pool, drain: Drain) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(drain.deadline_ms / 1000):
            await pool.wait_empty()
    if pool.drain is not drain:  # resumed meanwhile
        return
    left = len(pool.queue) + len(pool.running)
    message = f"pool {pool.id} drained ({drain.reason})"
    pool.end_queued(ErrorCode.POOL_UNAVAILABLE, message)
    pool.end_running(ErrorCode.POOL_UNAVAILABLE, message)
    await pool.wait_idle()
    drain.ended_tasks = left
    drain.state = "drained"
    log.warning("pool %s: drained; %d task(s) ended at the deadline", pool.id, left)


def resume(pool: Pool) -> None:
    drain = pool.drain
    pool.drain = None
    if drain is not None and drain.finisher is not None:
        drain.finisher.cancel()
    pool.pump()
    log.warning("pool %s: resumed", pool.id)
