"""Every task the orchestrator accepted, by id, until its retention runs out.

A finished task stays readable (its stream can be replayed) for ``retention_s``, and finished
tasks are evicted oldest first as soon as more than ``max_finished`` of them, or more than
``max_bytes`` of their frames, are held. Finished tasks are kept in finish order, so each
eviction looks at the oldest one only: pruning is amortized O(1) per task. A task id is
never reused while it is held here (HOME-208).
"""

from __future__ import annotations

import time
from collections import deque

from orchestratord.core.task import Task


class TaskRegistry:
    def __init__(self, retention_s: float, max_finished: int, max_bytes: int) -> None:
        self.retention_s = retention_s
        self.max_finished = max_finished
        self.max_bytes = max_bytes
        self._tasks: dict[str, Task] = {}
        self._finished: deque[tuple[Task, int]] = deque()  # (task, bytes it was counted as)
        self.finished_bytes = 0

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def finished_count(self) -> int:
        return len(self._finished)

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def add(self, task: Task) -> None:
        self._tasks[task.id] = task
        self.prune()

    def finished(self, task: Task) -> None:
        """Called once when ``task`` reaches its terminal frame."""
        size = task.retained_bytes()
        self._finished.append((task, size))
        self.finished_bytes += size
        self.prune()

    def prune(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        finished = self._finished
        while finished:
            task, size = finished[0]
            assert task.finished_at is not None
            expired = now - task.finished_at > self.retention_s
            if not (
                expired
                or len(finished) > self.max_finished
                or (self.finished_bytes > self.max_bytes)
            ):
                return
            finished.popleft()
            self.finished_bytes -= size
            if self._tasks.get(task.id) is task:
                del self._tasks[task.id]
