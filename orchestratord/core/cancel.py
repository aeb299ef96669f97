"""Ending tasks on request: a client's cancel, a disconnect, a deleted session (HOME-304,
HOME-305, HOME-401).

A cancel is race-free: the task's log is cut and closed synchronously (``cancel_now``), so no
token frame can follow; then its runner, if any, is stopped and awaited, so the engine slot
is free by the time ``cancel`` returns, even for a second concurrent cancel of the same task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from orchestratord.core.sessions import Sessions
from orchestratord.core.task import Task, TaskState
from orchestratord.metrics import Metrics
from orchestratord.pools.pool import Pool

log = logging.getLogger("orchestratord")

# Longer than the adapter's own wait for the engine to release a slot.
_CANCEL_WAIT_S = 10.0


class Canceller:
    def __init__(self, pools: Mapping[str, Pool], metrics: Metrics) -> None:
        self.pools = pools
        self.metrics = metrics

    async def cancel(self, task: Task, reason: str, delivered: int | None = None) -> None:
        """Cancel; once this returns no token frame follows and the slot is free."""
        self.cancel_now(task, reason, delivered)
        runner = task.runner
        if runner is not None and not runner.done():
            await asyncio.wait({runner}, timeout=_CANCEL_WAIT_S)

    def cancel_now(self, task: Task, reason: str, delivered: int | None = None) -> None:
        if task.finished:
            return
        pool = self.pools[task.pool_id]
        if task.state is TaskState.QUEUED and pool.queue.remove(task):
            pool.queue_changed()
        task.cancel_output(delivered)
        replica = pool.replica(task.replica_id)
        labels = replica.labels() if replica is not None else pool.queue_labels()
        self.metrics.tasks_canceled.labels(**labels, reason=reason).inc()
        if task.runner is not None:
            task.runner.cancel()

    async def end_session(self, sessions: Sessions, session_id: str) -> bool:
        """DELETE a session: its tasks end, the engine drops its prompt cache. False if no
        live session has this id."""
        session = sessions.end(session_id)
        if session is None:
            return False
        await asyncio.gather(*(self.cancel(t, "session_deleted") for t in list(session.tasks)))
        pool = self.pools.get(session.pool_id)
        replica = pool.replica(session.replica_id) if pool is not None else None
        slot = session.slot_id
        if replica is not None and slot is not None and replica.slot_owner.get(slot) == session_id:
            if slot in replica.free_slot_ids and await replica.adapter.evict(slot):
                log.info("session %s: evicted its cache from %s slot %d", session_id, replica.id,
                         slot)  # fmt: skip
            replica.slot_owner.pop(slot, None)
        return True
