"""Per-task placement (HOME-1001, ORCH-3008, OC-CORE-1010..1012): which replica runs the next task.

Only Ready replicas of the task's own pool are candidates, so a task never leaves the pool's
device mask (the pool's replicas were placed inside it) and a GPU pool has no CPU replica to
fall back to. Among the candidates that can take the task now, the least loaded wins: most
free slots, then most free VRAM on its devices, then the fastest measured decode; a strict
task needs an idle replica. A session's task goes to its session's replica whenever that one
can take it (``core/sessions.py``). The decision is a linear scan over the pool's replicas (a
handful), measured by ``python -m xtask bench placement``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from orchestratord.core.task import Task
from orchestratord.replicas.replica import Replica


def choose_replica(
    replicas: Sequence[Replica], task: Task, free_vram: Callable[[Replica], int]
) -> Replica | None:
    best: Replica | None = None
    best_key: tuple[int, int, float] = (0, 0, 0.0)
    preferred = task.preferred_replica
    for replica in replicas:
        if not replica.can_take(task):
            continue
        if replica.id == preferred:  # session affinity: its prompt cache is there
            return replica
        key = (replica.slots_free, free_vram(replica), replica.decode_tokens_per_s)
        if best is None or key > best_key:
            best, best_key = replica, key
    return best
