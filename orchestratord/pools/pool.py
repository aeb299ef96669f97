"""One pool: an engine (adapter, and its process when we spawn it), its queue and its slots.

The pool is Ready only after its engine answered healthy and its properties were read
(OC-POOL-3001). The orchestrator owns the queue: the dispatcher hands the engine at most
``slots`` tasks at a time, so queue position and predicted start describe real state.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from orchestratord.adapters.base import EngineAdapter, EngineInfo
from orchestratord.config import PoolConfig
from orchestratord.core.dispatcher import dispatch_forever
from orchestratord.core.estimates import ServiceTimeEstimator
from orchestratord.core.queue import Priority, TaskQueue
from orchestratord.core.task import Task
from orchestratord.metrics import Metrics
from orchestratord.pools.engine_process import LlamaServerProcess
from orchestratord.pools.supervisor import supervise
from orchestratord.pools.watchdog import watch_decodes

log = logging.getLogger("orchestratord.pool")


@dataclass(frozen=True)
class PoolRuntime:
    """Server-wide knobs every pool applies (from ``server`` in the config)."""

    frame_every_tokens: int = 64
    idle_timeout_s: float = 30.0
    wall_timeout_s: float = 600.0
    monitor_interval_s: float = 1.0
    restart_backoff_s: float = 0.5  # first delay; doubles per failed restart, capped at 30 s
    max_restarts: int = 5  # consecutive failed restarts before the circuit opens


class Pool:
    def __init__(
        self,
        config: PoolConfig,
        adapter: EngineAdapter,
        metrics: Metrics,
        process: LlamaServerProcess | None = None,
        *,
        runtime: PoolRuntime = PoolRuntime(),
    ) -> None:
        self.runtime = runtime
        self.frame_every_tokens = runtime.frame_every_tokens
        self.config = config
        self.id = config.id
        self.adapter = adapter
        self.process = process
        self.metrics = metrics
        self.queue: TaskQueue[Task] = TaskQueue(config.queue.capacity, config.queue.full_policy)
        self.estimator = ServiceTimeEstimator()
        self.running: set[Task] = set()
        self.idle = asyncio.Event()  # set while no task runs on the engine
        self.idle.set()
        self.slot_gate = asyncio.Semaphore(config.slots)
        # Engine slot ids not running a task; the dispatcher pins each task to one.
        self.free_slot_ids: list[int] = list(range(config.slots - 1, -1, -1))
        self.info: EngineInfo | None = None
        self.ready_event = asyncio.Event()  # the dispatcher only hands out work while set
        self.last_error: str | None = None
        self._background: list[asyncio.Task[None]] = []

    @property
    def ready(self) -> bool:
        return self.ready_event.is_set()

    @ready.setter
    def ready(self, value: bool) -> None:
        if value:
            self.ready_event.set()
        else:
            self.ready_event.clear()

    @property
    def engine(self) -> str:
        return self.config.engine.value

    @property
    def replica_id(self) -> str:
        return f"{self.id}-r0"

    @property
    def engine_version(self) -> str:
        return (self.info.engine_version if self.info else None) or "unknown"

    @property
    def ctx_max(self) -> int:
        if self.info and self.info.ctx_per_slot:
            return min(self.config.ctx_max, self.info.ctx_per_slot)
        return self.config.ctx_max

    @property
    def slots_total(self) -> int:
        return self.config.slots

    @property
    def slots_free(self) -> int:
        return self.slots_total - len(self.running)

    def pool_labels(self) -> dict[str, str]:
        return {"engine": self.engine, "engine_version": self.engine_version, "pool_id": self.id}

    def replica_labels(self) -> dict[str, str]:
        return {**self.pool_labels(), "replica_id": self.replica_id}

    def queue_changed(self) -> None:
        for priority in Priority:
            self.metrics.queue_depth.labels(**self.pool_labels(), priority=priority.value).set(
                self.queue.depth(priority)
            )
        self.metrics.slots_free.labels(**self.pool_labels()).set(self.slots_free)

    async def start(self) -> None:
        """Preload: start the engine, wait for health, read its properties, then serve."""
        try:
            if self.process is not None:
                await self.process.start(self.config.llamacpp.startup_timeout_s)
            self.info = await self.adapter.info()
        except Exception as exc:
            self.last_error = str(exc)
            log.error("pool %s failed to start: %s", self.id, exc)
            return
        if self.info.slots_total < self.config.slots:
            self.last_error = (
                f"engine has {self.info.slots_total} slots, pool declares {self.config.slots}"
            )
            log.error("pool %s: %s", self.id, self.last_error)
            return
        self.ready = True
        self.queue_changed()
        self._background = [
            asyncio.create_task(dispatch_forever(self), name=f"dispatch-{self.id}"),
            asyncio.create_task(supervise(self), name=f"supervise-{self.id}"),
            asyncio.create_task(watch_decodes(self), name=f"watchdog-{self.id}"),
        ]

    async def stop(self) -> None:
        self.ready = False
        for background in self._background:
            background.cancel()
        runners = [t.runner for t in self.running if t.runner is not None]
        for task in [*self.queue.drain(), *self.running]:
            task.finish_error("POOL_UNAVAILABLE", "orchestratord is shutting down", self.engine)
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*self._background, *runners, return_exceptions=True)
        await self.adapter.aclose()
        if self.process is not None:
            await self.process.stop()
