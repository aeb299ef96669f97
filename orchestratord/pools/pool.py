"""One pool: one model behind one queue, served by one or more replicas.

The orchestrator owns the queue: ``pump`` hands a replica at most its ``slots`` tasks at a
time, so queue position and predicted start describe real state. ``pump`` runs whenever
something changes (a task admitted, a slot freed, a replica Ready again): while a queued task
can be placed (``placement/choose.py``), it leaves the queue for that replica.

The pool is Ready while any replica is; it gives up (queued tasks end with
``POOL_UNAVAILABLE``) only when every replica's circuit is open. An on-demand pool
(``residency/``) may have no replica at all: it still takes tasks into its queue, and the
residency manager, told of every change (``on_change``), loads its engines.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from orchestratord.adapters.base import EngineAdapter, EngineInfo
from orchestratord.config import PoolConfig
from orchestratord.core.estimates import ServiceTimeEstimator
from orchestratord.core.queue import Priority, TaskQueue
from orchestratord.core.rate_limit import TokenBucket
from orchestratord.core.task import Task, TaskState
from orchestratord.errors import ErrorCode
from orchestratord.metrics import Metrics, PoolSeries
from orchestratord.models.gguf_shape import ModelShapeError, read_model_shape
from orchestratord.placement.choose import choose_replica
from orchestratord.pools.drain import Drain
from orchestratord.pools.reload import Reload
from orchestratord.replicas.replica import Replica
from orchestratord.replicas.runner import RunOutcome
from orchestratord.residency.state import Residency, State

log = logging.getLogger("orchestratord.pool")


def _no_vram(replica: Replica) -> int:
    return 0


class Pool:
    def __init__(
        self,
        config: PoolConfig,
        replicas: list[Replica],
        metrics: Metrics,
        *,
        free_vram: Callable[[Replica], int] = _no_vram,
    ) -> None:
        if not replicas and config.residency != "on-demand":
            raise ValueError(f"pool {config.id!r} has no replica")
        self.config = config
        self.id = config.id
        self.replicas = replicas
        self.metrics = metrics
        self.free_vram = free_vram
        self.queue: TaskQueue[Task] = TaskQueue(config.queue.capacity, config.queue.full_policy)
        self.estimator = ServiceTimeEstimator()
        limits = config.queue
        self.rate_limits = {
            Priority(priority): TokenBucket(rps, limits.rate_limit_burst)
            for priority, rps in limits.rate_limit_rps.items()
        }
        # Recent admission-to-first-token times, for the replica set's SLO figures.
        self.first_token_ms_window: deque[float] = deque(maxlen=256)
        self.accepting = True  # False once orchestratord is shutting down
        self.drain: Drain | None = None  # admission stopped by a drain (pools/drain.py)
        self.reload: Reload | None = None  # the last reload (pools/reload.py)
        # Replicas a reload replaced, finishing the tasks they were decoding.
        self.retiring: list[Replica] = []
        # A reload's new replicas while they come up: their VRAM is taken already.
        self.starting: list[Replica] = []
        # Admissions asking this pool's engine to count a prompt: the engine is in use, so
        # keep-alive and eviction leave it loaded until they are done (RES-101).
        self.counting = 0
        self._series: PoolSeries | None = None
        self._emptied = asyncio.Event()
        self._kv_per_token: int | None = None
        self.model_file: Path | None = None  # the generated model's path, when it serves that
        self.residency = Residency(
            config.residency,
            config.keep_alive_ms / 1000,
            config.max_keep_alive_ms / 1000,
            State.LOADED if replicas else State.UNLOADED,
        )
        # Told when the queue or the running set changed (the residency manager listens).
        self.on_change: Callable[[Pool], None] | None = None
        # Queued tasks with a stream attached: their streams are told what they wait for.
        self.watchers: set[Task] = set()
        for replica in replicas:
            replica.host = self

    # --- state across replicas ----------------------------------------------------------------

    @property
    def engine(self) -> str:
        return self.config.engine.value

    @property
    def ready(self) -> bool:
        return any(r.ready for r in self.replicas)

    @property
    def dispatching(self) -> bool:
        return self.accepting and self.ready

    @property
    def admitting(self) -> bool:
        """New tasks may enter the queue (not shutting down, not draining)."""
        return self.accepting and self.drain is None

    @property
    def accepts_tasks(self) -> bool:
        """Admission may queue a task here: the pool is Ready, or on demand and not in its
        backoff after a failed load (its engines are loaded for the queue)."""
        if not self.admitting:
            return False
        if self.ready:
            return True
        residency = self.residency
        return residency.on_demand and residency.state is not State.FAILED

    @property
    def circuit_open(self) -> bool:
        return bool(self.replicas) and all(r.circuit_open for r in self.replicas)

    @property
    def last_error(self) -> str | None:
        reload = self.reload
        if reload is not None and reload.state == "rolled_back":
            return f"reload to {reload.to_model_ref} rolled back: {reload.error}"
        if len(self.replicas) == 1:
            return self.replicas[0].last_error
        errors = [f"{r.id}: {r.last_error}" for r in self.replicas if r.last_error]
        return "; ".join(errors) or None

    @property
    def info(self) -> EngineInfo | None:
        infos = [r.info for r in self.replicas if r.info is not None]
        return infos[0] if infos else None

    @property
    def engine_version(self) -> str:
        info = self.info
        return (info.engine_version if info else None) or "unknown"

    @property
    def ctx_max(self) -> int:
        per_slot = [r.info.ctx_per_slot for r in self.replicas if r.info and r.info.ctx_per_slot]
        return min([self.config.ctx_max, *per_slot])

    @property
    def slots_total(self) -> int:
        return sum(r.slots for r in self.replicas)

    @property
    def slots_free(self) -> int:
        return sum(r.slots_free for r in self.replicas if r.ready)

    @property
    def busy_slots(self) -> int:
        """Tasks decoding on this pool's current replicas."""
        return sum(len(r.running) for r in self.replicas)

    @property
    def running(self) -> set[Task]:
        return {t for r in (*self.replicas, *self.retiring) for t in r.running}

    async def kv_bytes_per_token(self) -> int | None:
        """KV-cache bytes per token of context, from the model file (None if unknown); the
        file is parsed once, in a worker thread (HARD-204)."""
        path = self.config.model_path or self.model_file
        if self._kv_per_token is None and path is not None:
            try:
                shape = await asyncio.to_thread(read_model_shape, path)
            except (ModelShapeError, OSError):
                return None
            self._kv_per_token = shape.kv_bytes(1)
        return self._kv_per_token

    def replica(self, replica_id: str | None) -> Replica | None:
        return next((r for r in self.replicas if r.id == replica_id), None)

    def counting_adapter(self) -> EngineAdapter | None:
        """The adapter admission asks to count tokens: a Ready replica's, if any; None for
        an on-demand pool whose engines are not loaded."""
        ready = next((r.adapter for r in self.replicas if r.ready), None)
        if ready is not None or self.residency.on_demand:
            return ready
        return self.replicas[0].adapter

    def counting_ended(self) -> None:
        self.counting -= 1
        if not self.counting and self.on_change is not None:
            self.on_change(self)  # the planner may look at its keep-alive again

    def pool_labels(self) -> dict[str, str]:
        return {"engine": self.engine, "engine_version": self.engine_version, "pool_id": self.id}

    def queue_labels(self) -> dict[str, str]:
        """Labels for events before placement (a queued task canceled or displaced)."""
        return self.series.queue_replica

    @property
    def series(self) -> PoolSeries:
        """This pool's metric series for the current engine version, resolved once."""
        if self._series is None or self._series.engine_version != self.engine_version:
            self._series = PoolSeries(self.metrics, self.pool_labels())
        return self._series

    def queue_changed(self) -> None:
        series = self.series
        for priority in Priority:
            series.queue_depth[priority].set(self.queue.depth(priority))
        series.slots_free.set(self.slots_free)
        idle = not len(self.queue) and not any(r.running for r in (*self.replicas, *self.retiring))
        if idle:
            self._emptied.set()  # for wait_empty (a drain)
        residency = self.residency
        if idle and residency.idle_since is None:
            residency.idle_since = time.monotonic()
        elif not idle:
            residency.idle_since = None
            residency.hold_paid()
        if self.on_change is not None:
            self.on_change(self)

    def queue_depth(self) -> int:
        return len(self.queue)

    # --- dispatch -----------------------------------------------------------------------------

    def pump(self) -> None:
        """Start queued tasks while one can be placed on a replica."""
        if self.circuit_open:
            self.end_queued(ErrorCode.POOL_UNAVAILABLE, f"pool {self.id} is unavailable")
            return
        queue = self.queue
        while self.accepting:
            head = queue.peek()
            if head is None:
                break
            replica = choose_replica(self.replicas, head, self.free_vram)
            if replica is None:
                break
            queue.pop()
            self.watchers.discard(head)
            replica.start_task(head)
            head.busy_slots = self.busy_slots
            if head.started_at is not None:
                self.series.queue_wait_ms.observe((head.started_at - head.admitted_at) * 1000)
        self.queue_changed()

    def capacity_changed(self) -> None:
        self.pump()

    def attach(self, replicas: list[Replica]) -> None:
        """An on-demand load's replicas: they serve this pool once Ready. Refused while
        replicas are attached: one engine set per pool, none that no list counts."""
        if self.replicas:
            raise RuntimeError(f"pool {self.id} has replicas attached; detach them first")
        self.replicas = replicas
        for replica in replicas:
            replica.host = self
        self._series = None

    def detach(self) -> list[Replica]:
        """An unload: the pool keeps its queue, its replicas go."""
        gone, self.replicas = self.replicas, []
        self._series = None
        self.queue_changed()
        return gone

    def drop(self, replicas: list[Replica]) -> None:
        """Replicas of a load that did not start: the pool serves on the others."""
        self.replicas = [r for r in self.replicas if r not in replicas]
        self._series = None
        self.queue_changed()

    def retarget(self, config: PoolConfig) -> None:
        """An unloaded on-demand pool serves ``config``'s model from its next load on."""
        self.config = config
        self._kv_per_token = None
        self._series = None

    def switch(self, replicas: list[Replica], config: PoolConfig) -> list[Replica]:
        """Serve ``config``'s model from ``replicas`` from now on (a reload); returns the
        replicas they replace, which finish what they are decoding."""
        old = self.replicas
        self.config = config
        self.replicas = replicas
        self._kv_per_token = None
        for replica in replicas:
            replica.host = self
        self.retiring.extend(old)
        self._series = None
        self.pump()
        return old

    def task_settled(self, replica: Replica, task: Task, outcome: RunOutcome) -> None:
        if outcome.requeue and not task.finished and self.accepting:
            task.state = TaskState.QUEUED
            self.queue.requeue_front(task)
        elif not task.finished:  # a runner stopped before its first step
            task.finish_error(ErrorCode.WORKER_RESET, "task runner stopped", self.engine)
        if task.finished:
            self._account(task, outcome)
        self.pump()

    def _account(self, task: Task, outcome: RunOutcome) -> None:
        series = self.series
        if outcome.end is not None and task.started_at is not None and task.finished_at:
            # Busy slots: as many as when it started, or as are still running beside it.
            beside = self.busy_slots + 1
            self.estimator.observe(
                (task.finished_at - task.started_at) * 1000, max(task.busy_slots, beside)
            )
        first = outcome.first_token_at
        if first is not None:
            first_token_ms = (first - task.admitted_at) * 1000
            series.first_token_ms.observe(first_token_ms)
            self.first_token_ms_window.append(first_token_ms)
            if task.finished_at is not None:
                series.decode_ms.observe((task.finished_at - first) * 1000)

    def expire_deadline(self, task: Task) -> None:
        """Deadline timer: a queued task leaves the queue, a running one is stopped."""
        if task.finished:
            return
        if task.state is TaskState.QUEUED:
            self.queue.remove(task)
            task.finish_error(ErrorCode.DEADLINE_UNMET, "deadline passed while queued", self.engine)
            self.queue_changed()
            return
        task.finish_error(ErrorCode.DEADLINE_UNMET, "deadline_ms exceeded", self.engine)
        if task.runner is not None:
            task.runner.cancel()

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.gather(*(r.start() for r in self.replicas))
        self.pump()

    def end_queued(self, code: ErrorCode, message: str) -> None:
        for task in self.queue.drain():
            task.finish_error(code, message, self.engine)
        self.queue_changed()

    def end_running(self, code: ErrorCode, message: str) -> None:
        for replica in (*self.replicas, *self.retiring):
            replica.end_running(code, message)

    async def wait_idle(self) -> None:
        await asyncio.gather(*(r.wait_idle() for r in (*self.replicas, *self.retiring)))

    async def wait_empty(self) -> None:
        """Until nothing is queued or running (the queue drains through the replicas)."""
        while len(self.queue) or self.running:
            self._emptied.clear()
            await self._emptied.wait()

    async def stop(self) -> None:
        """Stop everything: no task is left without a terminal frame, no engine running."""
        self.accepting = False
        if self.drain is not None and self.drain.finisher is not None:
            self.drain.finisher.cancel()
        if self.reload is not None and self.reload.runner is not None:
            self.reload.runner.cancel()
            await asyncio.gather(self.reload.runner, return_exceptions=True)
        self.end_queued(ErrorCode.POOL_UNAVAILABLE, "orchestratord is shutting down")
        self.end_running(ErrorCode.POOL_UNAVAILABLE, "orchestratord is shutting down")
        await self.wait_idle()
        await asyncio.gather(*(r.stop() for r in (*self.replicas, *self.retiring)))
