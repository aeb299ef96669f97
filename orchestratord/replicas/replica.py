"""One replica: one engine instance on one device set, and the single owner of its lifecycle.

A replica starts and supervises its engine (``supervisor.py``), runs its decodes
(``runner.py``) and ends the stuck ones (``watchdog.py``). It knows nothing of queues: its
pool hands it tasks through :meth:`start_task` once placement chose it, and it reports back
through the narrow :class:`ReplicaHost` interface (capacity changed, task settled).

The replica is Ready only after its engine answered healthy and its properties were read
(OC-POOL-3001). Readiness drops at once when a runner sees the engine drop a connection
(``engine_failed``) and comes back only through the supervisor; a failed replica is Unready
on its own while the pool's other replicas keep serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from orchestratord.adapters.base import EngineAdapter, EngineInfo
from orchestratord.core.task import Task, TaskState
from orchestratord.errors import ErrorCode
from orchestratord.metrics import Metrics, ReplicaSeries
from orchestratord.replicas.engine_process import LlamaServerProcess
from orchestratord.replicas.runner import RunOutcome, run_task
from orchestratord.replicas.self_test import SelfTestFailed, self_test
from orchestratord.replicas.supervisor import supervise
from orchestratord.replicas.watchdog import watch_decodes

log = logging.getLogger("orchestratord.replica")

_RATE_WEIGHT = 0.2  # weight of the newest decode in the measured tokens/s average


@dataclass(frozen=True)
class ReplicaRuntime:
    """Server-wide knobs every replica applies (from ``server`` in the config)."""

    frame_every_tokens: int = 64
    idle_timeout_s: float = 30.0
    prompt_s_per_token: float = 0.05  # extra idle allowance before the first token
    wall_timeout_s: float = 600.0
    monitor_interval_s: float = 1.0
    restart_backoff_s: float = 0.5  # first delay; doubles per failed start, capped at 30 s
    max_restarts: int = 5  # consecutive failed starts before the circuit opens
    hang_timeout_s: float = 10.0  # a live engine not answering /health this long is killed
    startup_timeout_s: float = 120.0
    self_test: bool = True  # decode, cancel and telemetry checks before Ready (ORCH-3049)


@dataclass(frozen=True)
class ReplicaSpec:
    """Where a replica runs: its devices (empty: CPU), split ratios and VRAM it was given."""

    pool_id: str
    index: int
    slots: int
    devices: tuple[int, ...] = ()
    tensor_split: tuple[float, ...] | None = None
    vram_bytes: dict[int, int] = field(default_factory=dict)  # per device, from the fit
    remote: str | None = None  # endpoint URL of an engine we do not run
    generation: int = 0  # bumped by each reload: the new replicas start beside the old ones

    @property
    def id(self) -> str:
        base = f"{self.pool_id}-r{self.index}"
        return base if self.generation == 0 else f"{base}-g{self.generation}"


class ReplicaHost(Protocol):
    """What a replica reports to its pool."""

    def capacity_changed(self) -> None:
        """A slot came free, or the replica became Ready or gave up: dispatch again."""

    def task_settled(self, replica: Replica, task: Task, outcome: RunOutcome) -> None:
        """A runner finished; the slot is already back."""

    def queue_depth(self) -> int: ...


class Replica:
    def __init__(
        self,
        spec: ReplicaSpec,
        engine: str,
        adapter: EngineAdapter,
        metrics: Metrics,
        process: LlamaServerProcess | None = None,
        *,
        runtime: ReplicaRuntime = ReplicaRuntime(),
    ) -> None:
        self.spec = spec
        self.id = spec.id
        self.pool_id = spec.pool_id
        self.engine = engine
        self.adapter = adapter
        self.process = process
        self.metrics = metrics
        self.runtime = runtime
        self.host: ReplicaHost | None = None
        # Says why a started engine is not where it was placed (a GPU build that fell back
        # to the CPU); set by the orchestrator when it can measure (NVML).
        self.placement_check: Callable[[Replica], str | None] | None = None
        # Which session's prompt cache each engine slot holds, and whether that session lives.
        self.slot_owner: dict[int, str] = {}
        self.slot_used_at: dict[int, float] = {}
        self.session_live: Callable[[str], bool] = lambda session_id: False
        self.slots = spec.slots
        self.running: set[Task] = set()
        self.strict_running = False
        # Engine slot ids not running a task; each task is pinned to one.
        self.free_slot_ids: list[int] = list(range(spec.slots - 1, -1, -1))
        self.info: EngineInfo | None = None
        self.ready = False
        self.needs_start = False  # the engine must be (re)started by the supervisor
        self.held = False  # takes no new task (a stop-first reload is emptying it)
        self.circuit_open = False
        self.last_error: str | None = None
        self.decode_tokens_per_s = 0.0  # measured, averaged over finished decodes
        self.busy_since: float | None = None
        self._check_now = asyncio.Event()
        self._series: ReplicaSeries | None = None
        self._background: list[asyncio.Task[None]] = []

    # --- identity and load --------------------------------------------------------------------

    @property
    def devices(self) -> tuple[int, ...]:
        return self.spec.devices

    @property
    def engine_version(self) -> str:
        return (self.info.engine_version if self.info else None) or "unknown"

    @property
    def slots_free(self) -> int:
        return len(self.free_slot_ids)

    @property
    def load(self) -> float:
        return len(self.running) / self.slots

    def labels(self) -> dict[str, str]:
        return {
            "engine": self.engine,
            "engine_version": self.engine_version,
            "pool_id": self.pool_id,
            "replica_id": self.id,
        }

    @property
    def series(self) -> ReplicaSeries:
        if self._series is None or self._series.engine_version != self.engine_version:
            self._series = ReplicaSeries(self.metrics, self.labels())
        return self._series

    def _capacity_changed(self) -> None:
        if self.host is not None:
            self.host.capacity_changed()

    # --- readiness ----------------------------------------------------------------------------

    def set_ready(self) -> None:
        self.ready = True
        self._capacity_changed()

    def engine_failed(self, reason: str) -> None:
        """A runner saw the engine fail: dispatch nothing more here until it answers again."""
        if self.ready:
            self.ready = False
            self.last_error = reason
            log.error("replica %s: %s", self.id, reason)
        self._check_now.set()

    def engine_lost(self, reason: str) -> None:
        """The engine process is gone (or was killed): the supervisor starts a new one."""
        self.ready = False
        self.needs_start = True
        self.last_error = reason
        log.error("replica %s: %s", self.id, reason)
        self._check_now.set()

    def supervision_fault(self, reason: str) -> None:
        """The supervisor's step raised: not known healthy, so dispatch nothing here until a
        later step sees the engine answer again."""
        if self.ready:
            self.ready = False
        self.last_error = reason
        self._check_now.set()

    def open_circuit(self, reason: str) -> None:
        self.circuit_open = True
        self.ready = False
        self.last_error = reason
        log.error("replica %s: %s", self.id, reason)
        self._capacity_changed()

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
            # Health is client-visible: only a message meant for clients (no paths, ports or
            # engine output); the detail goes to the log.
            public = getattr(exc, "public_message", None) or "see the engine log"
            return await self._failed_start(f"engine start failed: {public}", str(exc))
        if info.slots_total < self.slots:
            reason = f"engine has {info.slots_total} slots, pool declares {self.slots}"
            return await self._failed_start(reason, reason)
        check = self.placement_check
        misplaced = await asyncio.to_thread(check, self) if check is not None else None
        if misplaced is not None:
            return await self._failed_start(misplaced, misplaced)
        if self.runtime.self_test:
            try:
                await self_test(self.adapter, self.runtime.startup_timeout_s)
            except SelfTestFailed as exc:
                return await self._failed_start(f"self-test failed: {exc}", repr(exc.__cause__))
            except Exception as exc:  # a self-test that crashes is a failed start too
                log.exception("replica %s: self-test raised", self.id)
                return await self._failed_start(
                    f"self-test failed: {type(exc).__name__}", repr(exc)
                )
            log.info("replica %s: self-test passed (decode, cancel, telemetry)", self.id)
        self.info = info
        self.needs_start = False
        self.set_ready()
        return True

    async def _failed_start(self, public: str, detail: str) -> bool:
        self.last_error = public
        log.error("replica %s: %s", self.id, detail)
        self.needs_start = True
        if self.process is not None:
            await self.process.stop()
        return False

    async def start(self) -> None:
        """Preload: one start attempt now; the supervisor retries a failed one with backoff."""
        if await self.bring_up():
            self.last_error = None
        self.supervise()

    def supervise(self) -> None:
        """Start the supervisor and the decode watchdog (after a first start attempt)."""
        self._background = [
            asyncio.create_task(supervise(self), name=f"supervise-{self.id}"),
            asyncio.create_task(watch_decodes(self), name=f"watchdog-{self.id}"),
        ]

    # --- decoding -----------------------------------------------------------------------------

    def can_take(self, task: Task) -> bool:
        if not self.ready or self.held or not self.free_slot_ids or self.strict_running:
            return False
        return not (task.strict and self.running)

    def _take_slot(self, task: Task) -> int:
        """The session's own slot if free; else a free slot no live session holds a prompt
        cache in; else the free slot used longest ago (its cache is the stalest)."""
        free = self.free_slot_ids
        preferred = task.preferred_slot
        if task.preferred_replica == self.id and preferred is not None and preferred in free:
            free.remove(preferred)
            return preferred
        for position in range(len(free) - 1, -1, -1):
            owner = self.slot_owner.get(free[position])
            if owner is None or owner == task.session_id or not self.session_live(owner):
                return free.pop(position)
        stalest = min(free, key=lambda slot: self.slot_used_at.get(slot, 0.0))
        free.remove(stalest)
        return stalest

    def start_task(self, task: Task) -> None:
        slot = task.slot_id = task.last_slot_id = self._take_slot(task)
        # The slot still holds this session's cache only if no other conversation ran in it.
        task.cache_owned = self.slot_owner.get(slot) == task.session_id
        self.slot_owner[slot] = task.session_id
        self.slot_used_at[slot] = time.monotonic()
        task.affinity_kept = task.preferred_replica in (None, self.id)
        task.replica_id = self.id
        task.state = TaskState.RUNNING
        task.started_at = task.last_progress = time.monotonic()
        info = self.info
        task.append_event(
            "started",
            {
                "queue_position": 0,
                "predicted_start_ms": 0,
                "engine": self.engine,
                "engine_version": info.engine_version if info else None,
                "model_digest": info.model_digest if info else None,
                "pool_id": self.pool_id,
                "replica_id": self.id,
                "seed": task.seed,
            },
        )
        if task.budget is not None:
            task.budget.task_started(task, task.started_at)
        task.attempts += 1
        if not self.running:
            self.busy_since = task.started_at
        self.running.add(task)
        if task.strict:
            self.strict_running = True
        self.series.started[task.priority].inc()
        outcome = RunOutcome()
        runner = asyncio.get_running_loop().create_task(run_task(self, task, outcome))
        runner.set_name(f"task-{task.id}")  # pragma: no mutate - for debugging only
        task.runner = runner
        runner.add_done_callback(lambda _: self._settle(task, outcome))

    def _settle(self, task: Task, outcome: RunOutcome) -> None:
        self.running.discard(task)
        if not self.running:
            self.busy_since = None
        if task.strict:
            self.strict_running = False
        if task.slot_id is not None:
            self.free_slot_ids.append(task.slot_id)
            task.slot_id = None
        task.runner = None
        self._measure(task, outcome)
        if self.host is not None:
            self.host.task_settled(self, task, outcome)

    def _measure(self, task: Task, outcome: RunOutcome) -> None:
        end, first = outcome.end, outcome.first_token_at
        if end is None:
            return
        series = self.series
        series.tokens_in.inc(task.tokens_in or 0)
        series.tokens_out.inc(end.tokens_out)
        if first is None or task.finished_at is None or end.tokens_out < 2:
            return
        rate = end.tokens_out / max(task.finished_at - first, 1e-6)
        if self.decode_tokens_per_s == 0.0:
            self.decode_tokens_per_s = rate
        else:
            self.decode_tokens_per_s += _RATE_WEIGHT * (rate - self.decode_tokens_per_s)

    # --- ending work --------------------------------------------------------------------------

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
        """Stop the engine and the background work; running tasks must have ended."""
        self.ready = False
        for background in self._background:
            background.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.adapter.aclose()
        if self.process is not None:
            await self.process.stop()
