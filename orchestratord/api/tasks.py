"""``POST /v1/tasks`` (ORCH-2001; in one request with its stream, PERF-101) and
``POST /v1/tasks/{id}/cancel`` (ORCH-2003)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import falcon
import falcon.asgi

from orchestratord.api.bodies import parse_body
from orchestratord.core.request import TaskRequest, is_canonical_uuid
from orchestratord.core.task import Task, encode_frame
from orchestratord.errors import invalid_params, not_found

if TYPE_CHECKING:
    from orchestratord.api.stream import TaskStreamResource
    from orchestratord.app import Orchestrator


def find_task(orch: Orchestrator, task_id: str) -> Task:
    """The task a path names: 400 unless a canonical UUID, 404 unless known."""
    if not is_canonical_uuid(task_id):
        raise invalid_params("task id must be a UUID in canonical form (lower-case, hyphenated)")
    task = orch.registry.get(task_id)
    if task is None:
        raise not_found(f"no task {task_id}")
    return task


class TasksResource:
    def __init__(self, orchestrator: Orchestrator, stream: TaskStreamResource) -> None:
        self.orch = orchestrator
        self.stream = stream

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        request = await parse_body(req, TaskRequest, self.orch.config.server.max_body_bytes)
        result = await self.orch.admission.admit(request, req.context.correlation_id)
        task = result.task
        resp.location = f"/v1/tasks/{task.id}/stream"
        if wants_stream(req):  # one request per task (PERF-101): the stream is the answer
            resp.status = falcon.HTTP_200
            self.stream.attach(task, resp, lead=encode_frame("accepted", result.body))
            return
        if task.runner is not None:
            # Let a task that got a slot send its request to the engine before we answer:
            # the engine starts one response write earlier, and the first token sooner.
            await asyncio.sleep(0)
        resp.status = falcon.HTTP_202
        resp.media = result.body
        if task.budget is not None:  # what the session has left (HOME-303)
            resp.set_headers(task.budget.headers())


def wants_stream(req: falcon.asgi.Request) -> bool:
    """The client prefers an event stream to the JSON 202 (``*/*`` prefers JSON)."""
    accept = req.get_header("Accept")
    if not accept or "text/event-stream" not in accept:
        return False
    preferred = req.client_prefers(["application/json", "text/event-stream"])
    return preferred == "text/event-stream"


class TaskCancelResource:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, task_id: str
    ) -> None:
        task = find_task(self.orch, task_id)
        await self.orch.cancel(task, reason="client")
        resp.status = falcon.HTTP_204
