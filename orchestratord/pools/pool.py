"""One pool: an engine (adapter, and its process when we spawn it), its queue and its slots.

The pool is Ready only after its engine answered healthy and its properties were read
(OC-POOL-3001). The orchestrator owns the queue: the dispatcher hands the engine at most
``slots`` tasks at a time, so queue position and predicted start describe real state.

Readiness drops at once when a runner sees the engine drop a connection (``engine_failed``)
and comes back only through the supervisor, so no queued task is sent to a dead engine.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from orchestratord.adapters.base import EngineAdapter, EngineInfo
from orchestratord.config import PoolConfig
from orchestratord.core import dispatcher
from orchestratord.core.estimates import ServiceTimeEstimator
from orchestratord.core.queue import Priority, TaskQueue
from orchestratord.core.task import Task
from orchestratord.errors import ErrorCode
from orchestratord.metrics import Metrics, PoolSeries
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
    restart_backoff_s: float = 0.5  # first delay; doubles per failed start, capped at 30 s
    max_restarts: int = 5  # consecutive failed starts before the circuit opens
    hang_timeout_s: float = 10.0  # a live engine not answering /health this long is killed
    startup_timeout_s: float = 120.0


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
        self.strict_running = False
        # Engine slot ids not running a task; the dispatcher pins each task to one.
        self.free_slot_ids: list[int] = list(range(config.slots - 1, -1, -1))
        self.info: EngineInfo | None = None
        self.ready = False
        self.accepting = True  # False once orchestratord is shutting down
        self.needs_start = False  # the engine must be (re)started by the supervisor
        self.circuit_open = False
        self.last_error: str | None = None
        self._check_now = asyncio.Event()
        self._series: PoolSeries | None = None
        self._background: list[asyncio.Task[None]] = []

    @property
    def dispatching(self) -> bool:
        return self.ready and self.accepting

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

    @property
    def series(self) -> PoolSeries:
        """This pool's metric series for the current engine version, resolved once."""
        if self._series is None or self._series.engine_version != self.engine_version:
            self._series = PoolSeries(self.metrics, self.pool_labels(), self.replica_id)
        return self._series

    def queue_changed(self) -> None:
        series = self.series
        for priority in Priority:
            series.queue_depth[priority].set(self.queue.depth(priority))
        series.slots_free.set(self.slots_free)

    # --- readiness ----------------------------------------------------------------------------

    def set_ready(self) -> None:
        self.ready = True
        dispatcher.pump(self)

    def engine_failed(self, reason: str) -> None:
        """A runner saw the engine fail: dispatch nothing more until it answers again."""
        if self.ready:
            self.ready = False
            self.last_error = reason
            log.error("pool %s: %s", self.id, reason)
        self._check_now.set()

    def engine_lost(self, reason: str) -> None:
        """The engine process is gone (or was killed): the supervisor starts a new one."""
        self.ready = False
        self.needs_start = True
        self.last_error = reason
        log.error("pool %s: %s", self.id, reason)
        self._check_now.set()

    def open_circuit(self, reason: str) -> None:
        self.circuit_open = True
        self.ready = False
        self.last_error = reason
        log.error("pool %s: %s", self.id, reason)
        self.end_queued(ErrorCode.POOL_UNAVAILABLE, f"pool {self.id} is unavailable: {reason}")

    async def wait_for_check(self, interval_s: float) -> None:
        try:
            async with asyncio.timeout(interval_s):
                await self._check_now.wait()
        except TimeoutError:
            pass
        self._check_now.clear()

    async def bring_up(self) -> bool:
        """Start the engine (if we own its process) and read its properties; True if Ready."""
        try:
            if self.process is not None:
                await self.process.start(self.runtime.startup_timeout_s)
            info = await self.adapter.info()
        except Exception as exc:  # any failure to come up is a failed start, retried
            detail = str(exc)
            # Health is client-visible: only a message meant for clients (no paths, ports or
            # engine output); the detail goes to the log.
            public = getattr(exc, "public_message", None) or "see the engine log"
            self.last_error = f"engine start failed: {public}"
            log.error("pool %s: engine start failed: %s", self.id, detail)
            self.needs_start = True
            if self.process is not None:
                await self.process.stop()
            return False
        if info.slots_total < self.config.slots:
            self.last_error = (
                f"engine has {info.slots_total} slots, pool declares {self.config.slots}"
            )
            log.error("pool %s: %s", self.id, self.last_error)
            self.needs_start = True
            if self.process is not None:
                await self.process.stop()
            return False
        self.info = info
        self.needs_start = False
        self.set_ready()
        return True

    async def start(self) -> None:
        """Preload: one start attempt now; the supervisor retries a failed one with backoff."""
        if await self.bring_up():
            self.last_error = None
        self.queue_changed()
        self._background = [
            asyncio.create_task(supervise(self), name=f"supervise-{self.id}"),
            asyncio.create_task(watch_decodes(self), name=f"watchdog-{self.id}"),
        ]

    # --- ending work --------------------------------------------------------------------------

    def end_queued(self, code: ErrorCode, message: str) -> None:
        for task in self.queue.drain():
            task.finish_error(code, message, self.engine)
        self.queue_changed()

    def end_running(self, code: ErrorCode, message: str) -> None:
        for task in list(self.running):
            task.finish_error(code, message, self.engine)
            if task.runner is not None:
                task.runner.cancel()

    async def wait_idle(self) -> None:
        while self.running:
            runners = [t.runner for t in self.running if t.runner is not None]
            if not runners:
                return
            await asyncio.wait(runners)
            await asyncio.sleep(0)  # let the runners' done-callbacks settle them

    async def stop(self) -> None:
        """Stop everything: no task is left without a terminal frame, no engine running."""
        self.accepting = False
        self.ready = False
        self.end_queued(ErrorCode.POOL_UNAVAILABLE, "orchestratord is shutting down")
        self.end_running(ErrorCode.POOL_UNAVAILABLE, "orchestratord is shutting down")
        await self.wait_idle()
        for background in self._background:
            background.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.adapter.aclose()
        if self.process is not None:
            await self.process.stop()
