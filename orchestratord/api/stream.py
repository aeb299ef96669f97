"""``GET /v1/tasks/{id}/stream`` (ORCH-2002, HOME-301..305, RES-201): the task's frames as SSE;
also the body of the one-request form of ``POST /v1/tasks`` (PERF-101).

Falcon's native SSE keeps routing and middleware (correlation ID, auth) on the stream and
notices a disconnect after each send, so the emitter pings every ``heartbeat_ms`` while no
frame is due. When the client goes away before the terminal frame, the task is canceled
(its log cut at what this client received, in the same step) and its engine slot freed
(HOME-305). One subscriber at a time: a second concurrent stream gets 409, a finished
task's frames can be replayed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

import falcon.asgi
from falcon.asgi import SSEvent

from orchestratord.api.tasks import find_task
from orchestratord.core.task import Burst, Task
from orchestratord.errors import conflict

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
        task = find_task(self.orch, task_id)
        if task.subscribed:
            raise conflict(f"a stream is already attached to task {task_id}")
        self.attach(task, resp)

    def attach(self, task: Task, resp: falcon.asgi.Response, lead: bytes = b"") -> None:
        """Make ``resp`` the task's event stream (its one subscriber); ``lead`` is sent
        before the task's own frames (the one-request form's ``accepted``, PERF-101)."""
        task.subscribed = True
        task.delivered = 0
        resp.content_type = "text/event-stream"
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")
        if task.budget is not None:  # what the session has left (HOME-303, OC-CTRL-2068)
            resp.set_headers(task.budget.headers())
        # A queued task's stream begins with where it stands (RES-201); a started one's
        # log begins with its `started` frame.
        self.orch.waiting.watch(task)
        # Frames are pre-serialized; Falcon only ever calls their serialize().
        resp.sse = cast("AsyncIterator[SSEvent | None]", self.emit(task, lead))

    async def emit(self, task: Task, lead: bytes = b"") -> AsyncIterator[Burst | None]:
        loop = asyncio.get_running_loop()
        opened_at = time.monotonic()
        window_until = 0.0
        cursor = 0
        sent_tokens = 0
        try:
            # What the log already holds goes out at once: a short task that is done by the
            # time its stream opens is one write.
            batch = list(task.frames)
            cursor = len(batch)
            task.delivered = cursor
            sent_tokens = task.tokens_out
            yield Burst([lead, *batch] if lead else batch)
            if task.finished:
                return
            if sent_tokens:
                window_until = loop.time() + self._coalesce_s
            while True:
                if cursor < len(task.frames):
                    # Coalesce while tokens flow: frames due within `coalesce` of the last
                    # token write wait for the rest of that window and go out together, so
                    # a fast engine costs one write per window. The first token after a
                    # pause is never held back, nor is the terminal frame.
                    wait = window_until - loop.time()
                    if wait > 0 and not task.finished:
                        await task.wait_for_terminal(wait)
                    tokens = task.tokens_out
                    batch = task.frames[cursor:]
                    cursor += len(batch)
                    task.delivered = cursor
                    yield Burst(batch)
                    if task.finished and cursor >= len(task.frames):
                        return
                    if tokens != sent_tokens:  # the batch carried tokens
                        sent_tokens = tokens
                        window_until = loop.time() + self._coalesce_s
                    continue
                await task.wait_for_frames(cursor, self._heartbeat_s)
                if cursor >= len(task.frames):
                    yield None  # Falcon sends a ": ping" comment; a dead client shows up here
        finally:
            if task.finished and cursor >= len(task.frames):
                self.orch.tracing.stream_finished(task, opened_at)
            if task.finished:
                task.detach()
            else:
                # Gone before the terminal frame: cut the log at what this client got and
                # close it now, before anyone can attach again; then free the engine slot.
                task.subscribed = False
                self.orch.cancel_now(task, reason="client_disconnect", delivered=cursor)
                cleanup = loop.create_task(self.orch.cancel(task, reason="client_disconnect"))
                self._cleanups.add(cleanup)
                cleanup.add_done_callback(self._cleanups.discard)
