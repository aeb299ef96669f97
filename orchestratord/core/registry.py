"""Every task the orchestrator accepted, by id, until its retention runs out.

A finished task stays readable (its stream can be replayed) for ``retention_s``; the oldest
finished tasks are evicted first when more than ``max_finished`` pile up. A task id is never
reused while it is held here (HOME-208).
"""

from __future__ import annotations

import time
from collections import OrderedDict

from orchestratord.core.task import Task


class TaskRegistry:
    def __init__(self, retention_s: float, max_finished: int) -> None:
        self.retention_s = retention_s
        self.max_finished = max_finished
        self._tasks: OrderedDict[str, Task] = OrderedDict()

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def add(self, task: Task) -> None:
        self._prune()
        self._tasks[task.id] = task

    def _prune(self) -> None:
        now = time.monotonic()
        finished = [t for t in self._tasks.values() if t.finished_at is not None]
        excess = len(finished) - self.max_finished
        for task in finished:
            assert task.finished_at is not None
            if excess > 0 or now - task.finished_at > self.retention_s:
                del self._tasks[task.id]
                excess -= 1
