"""``GET /v1/tasks/{id}/stream`` (ORCH-2002, HOME-301..305): the task's frames as SSE.

Falcon's native SSE keeps routing and middleware (correlation ID, auth) on the stream and
notices a disconnect after each send, so the emitter pings every ``heartbeat_ms`` while no
frame is due. When the client goes away before the terminal frame, the task is canceled and
its engine slot freed (HOME-305). One subscriber at a time: a second concurrent stream gets
409, a finished task's frames can be replayed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

import falcon.asgi
from falcon.asgi import SSEvent

from orchestratord.core.task import Burst, Frame, Task, TaskState
from orchestratord.errors import conflict, not_found

if TYPE_CHECKING:
    from orchestratord.app import Orchestrator


class TaskStreamResource:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator
        self._heartbeat_s = orchestrator.config.server.heartbeat_ms / 1000
        self._coalesce_s = orchestrator.config.server.stream_coalesce_ms / 1000
        self._cleanups: set[asyncio.Task[None]] = set()

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, task_id: str
    ) -> None:
        task = self.orch.registry.get(task_id)
        if task is None:
            raise not_found(f"no task {task_id}")
        if task.subscribed:
            raise conflict(f"a stream is already attached to task {task_id}")
        task.subscribed = True
        task.delivered = 0
        resp.content_type = "text/event-stream"
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")
        # Frames are pre-serialized; Falcon only ever calls their serialize().
        resp.sse = cast("AsyncIterator[SSEvent | None]", self._emit(task))

    def _started(self, task: Task) -> Frame:
        pool = self.orch.pools[task.pool_id]
        position = pool.queue.position(task) if task.state is TaskState.QUEUED else 0
        predicted = (
            pool.estimator.predicted_start_ms(position, pool.slots_total, pool.slots_free)
            if task.state is TaskState.QUEUED
            else 0
        )
        info = pool.info
        return Frame(
            "started",
            {
                "queue_position": max(position, 0),
                "predicted_start_ms": predicted,
                "engine": pool.engine,
                "engine_version": info.engine_version if info else None,
                "model_digest": info.model_digest if info else None,
                "pool_id": pool.id,
                "replica_id": pool.replica_id,
                "seed": task.seed,
            },
        )

    async def _emit(self, task: Task) -> AsyncIterator[Burst | None]:
        loop = asyncio.get_running_loop()
        last_token_send = -1.0
        try:
            yield Burst([self._started(task)])
            cursor = 0
            while True:
                frames = task.frames
                if cursor < len(frames):
                    # Coalesce while tokens flow: a frame due within `coalesce` of the previous
                    # token write waits for the rest of that window and goes out with whatever
                    # else arrived, so a fast engine costs one write per window, not per token.
                    # The first token after a pause is never held back.
                    wait = last_token_send + self._coalesce_s - loop.time()
                    if wait > 0 and task.terminal is None:
                        await asyncio.sleep(wait)
                    batch = frames[cursor:]
                    cursor += len(batch)
                    task.delivered = cursor
                    if batch[-1].event == "token" or any(f.event == "token" for f in batch):
                        last_token_send = loop.time()
                    yield Burst(batch)
                    if task.terminal is not None and task.terminal in batch:
                        return
                    continue
                await task.wait_for_frames(cursor, self._heartbeat_s)
                if cursor >= len(task.frames):
                    yield None  # Falcon sends a ": ping" comment; a dead client shows up here
        finally:
            task.subscribed = False
            if not task.finished:
                cleanup = asyncio.get_running_loop().create_task(
                    self.orch.cancel(task, reason="client_disconnect")
                )
                self._cleanups.add(cleanup)
                cleanup.add_done_callback(self._cleanups.discard)
