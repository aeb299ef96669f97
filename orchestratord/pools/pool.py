"""One pool: an engine (adapter, and its process when we spawn it), its queue and its slots.

The pool is Ready only after its engine answered healthy and its properties were read
(OC-POOL-3001). The orchestrator owns the queue: the dispatcher hands the engine at most
``slots`` tasks at a time, so queue position and predicted start describe real state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from orchestratord.adapters.base import EngineAdapter, EngineError, EngineInfo
from orchestratord.config import PoolConfig
from orchestratord.core.dispatcher import dispatch_forever
from orchestratord.core.estimates import ServiceTimeEstimator
from orchestratord.core.queue import Priority, TaskQueue
from orchestratord.core.task import Task
from orchestratord.errors import ErrorCode
from orchestratord.metrics import Metrics
from orchestratord.pools.engine_process import LlamaServerProcess

log = logging.getLogger("orchestratord.pool")

_MONITOR_INTERVAL_S = 2.0


@dataclass(frozen=True)
class PoolRuntime:
    """Server-wide knobs every pool applies (from ``server`` in the config)."""

    frame_every_tokens: int = 64
    idle_timeout_s: float = 30.0
    wall_timeout_s: float = 600.0


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
        self.frame_every_tokens = runtime.frame_every_tokens
        self.idle_timeout_s = runtime.idle_timeout_s
        self.wall_timeout_s = runtime.wall_timeout_s
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
        self.ready = False
        self.last_error: str | None = None
        self._background: list[asyncio.Task[None]] = []

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
            asyncio.create_task(self._monitor(), name=f"monitor-{self.id}"),
            asyncio.create_task(self._watchdog(), name=f"watchdog-{self.id}"),
        ]

    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(_MONITOR_INTERVAL_S)
            healthy = await self.adapter.healthy()
            if not healthy and self.ready:
                self.last_error = "engine stopped answering /health"
                log.error("pool %s: %s", self.id, self.last_error)
            self.ready = healthy and self.info is not None
            if healthy:
                with contextlib.suppress(EngineError):
                    self._record_engine_metrics(await self.adapter.metrics_text())

    async def _watchdog(self) -> None:
        """End running tasks that stopped progressing or ran too long (ORCH-3016).

        Tokens only stamp a time; checking here, a few times per idle timeout, keeps the
        per-token path free of timers."""
        interval = min(1.0, self.idle_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for task in list(self.running):
                started = task.started_at or now
                idle = now - task.last_progress > self.idle_timeout_s
                too_long = now - started > self.wall_timeout_s
                if (idle or too_long) and not task.finished and task.runner is not None:
                    why = "no output from the engine" if idle else "decoding too long"
                    task.finish_error(ErrorCode.DECODE_TIMEOUT, f"watchdog: {why}", self.engine)
                    task.runner.cancel()
                    log.warning("pool %s: task %s aborted: %s", self.id, task.id, why)

    def _record_engine_metrics(self, text: str) -> None:
        for line in text.splitlines():
            if line.startswith("llamacpp:kv_cache_usage_ratio "):
                ratio = float(line.split()[1])
                self.metrics.kv_cache_usage_ratio.labels(**self.replica_labels()).set(ratio)

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
