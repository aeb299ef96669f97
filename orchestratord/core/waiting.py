"""What a waiting task's stream is told (RES-201): ``queued`` and ``loading`` frames.

A queued task with a stream attached is one of its pool's watchers. A few times a second the
waiting room looks at them and appends to each one's log a ``queued`` frame when what it
waits for, its place in the queue, or its predicted start changed (by half a second or
more), and while its pool's engines load, a ``loading`` frame every half second (the first
one as the load begins, so even a load shorter than a tick is seen). Only tasks
someone is reading are looked at, so a deep queue costs nothing here; a stream that opens on
a queued task gets a ``queued`` frame first, so a client always knows where it stands.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from orchestratord.core.admission import predict_start_ms
from orchestratord.core.task import Task, TaskState
from orchestratord.pools.pool import Pool
from orchestratord.residency.state import State

TICK_S = 0.25
_LOADING_EVERY_S = 0.5
_PREDICTION_STEP_MS = 500


def waiting_for(pool: Pool) -> str:
    if pool.drain is not None:
        return "drain"
    residency = pool.residency
    if residency.on_demand and (residency.state is not State.LOADED or residency.closing):
        if residency.blocked or residency.closing or residency.state is State.UNLOADING:
            return "swap"
        return "load"
    return "slot"


def tell(pool: Pool, task: Task, now: float, *, force: bool = False) -> None:
    """Append the frames ``task``'s stream should see now, if any."""
    if task.state is not TaskState.QUEUED or task.finished:
        pool.watchers.discard(task)
        return
    position = max(pool.queue.position(task), 0)
    predicted = predict_start_ms(pool, position)
    why = waiting_for(pool)
    previous = task.told
    rounded = None if predicted is None else predicted // _PREDICTION_STEP_MS
    if force or previous is None or previous != (position, why, rounded):
        task.told = (position, why, rounded)
        task.append_event(
            "queued",
            {"queue_position": position, "predicted_start_ms": predicted, "waiting_for": why},
        )
    residency = pool.residency
    if residency.state is State.LOADING and now - task.told_loading_at >= _LOADING_EVERY_S:
        task.told_loading_at = now
        task.append_event("loading", _loading(pool, now))


def _loading(pool: Pool, now: float) -> dict[str, Any]:
    residency = pool.residency
    since = residency.loading_since or now
    return {
        "model_ref": pool.config.model_ref,
        "devices": list(residency.devices),
        "elapsed_ms": round((now - since) * 1000),
        "expected_ms": round(residency.load_s * 1000),
    }


class WaitingRoom:
    def __init__(self, pools: Mapping[str, Pool]) -> None:
        self.pools = pools
        self._runner: asyncio.Task[None] | None = None

    def watch(self, task: Task) -> None:
        """A stream opened on ``task``: if it waits, tell it where it stands now."""
        pool = self.pools[task.pool_id]
        if task.state is TaskState.QUEUED and not task.finished:
            pool.watchers.add(task)
            tell(pool, task, time.monotonic(), force=True)

    def load_began(self, pool: Pool) -> None:
        """Tell ``pool``'s waiting streams at once, however short the load turns out to be."""
        now = time.monotonic()
        for task in list(pool.watchers):
            if task.state is TaskState.QUEUED and not task.finished:
                task.told_loading_at = now
                task.append_event("loading", _loading(pool, now))

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="waiting-room")

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            for pool in self.pools.values():
                for task in list(pool.watchers):
                    tell(pool, task, now)
