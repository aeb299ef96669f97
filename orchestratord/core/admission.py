"""Admission: everything checked before a task may wait in a queue (HOME-205, HOME-206).

Checks run cheapest first; the prompt is tokenized by the pool's own engine so the
ctx/max_tokens budget is exact, not guessed. A full queue answers 429 with a backoff computed
from the pool's measured drain rate (HOME-902).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestratord.adapters.base import EngineError, Sampling
from orchestratord.config import Config, Workload
from orchestratord.core.budgets import BudgetExhausted
from orchestratord.core.queue import QueueFull
from orchestratord.core.registry import TaskRegistry
from orchestratord.core.request import TaskRequest
from orchestratord.core.sessions import SessionEnded, Sessions, SessionsFull
from orchestratord.core.task import Task
from orchestratord.errors import ApiError, ErrorCode, conflict, invalid_params
from orchestratord.metrics import Metrics
from orchestratord.pools.pool import Pool
from orchestratord.residency.state import State

RATE_LIMIT = "rate-limit"  # the policy_label of a 429 from a rate limit
SESSIONS_FULL = "sessions"  # the policy_label of a 429 from sessions.max_live
# BOS and EOS: what an engine may add around the prompt's own tokens.
_SPECIAL_TOKENS = 2


@dataclass(frozen=True, slots=True)
class AdmissionResult:
    task: Task
    body: dict[str, Any]


class Admission:
    def __init__(
        self,
        config: Config,
        pools: dict[str, Pool],
        registry: TaskRegistry,
        metrics: Metrics,
        on_task_finished: Callable[[Task], None],
        *,
        sessions: Sessions,
        model_refusal: Callable[[str], object | None] = lambda model_ref: None,
        unplaceable: Callable[[Pool], str | None] = lambda pool: None,
    ) -> None:
        self.config = config
        self.unplaceable = unplaceable  # why a task would wait for room nothing can make
        self.sessions = sessions
        self.model_refusal = model_refusal
        self.pools = pools
        self.registry = registry
        self.metrics = metrics
        self.on_task_finished = on_task_finished

    def _pool_for(self, request: TaskRequest) -> Pool:
        refused_state = self.model_refusal(request.model_ref)
        if refused_state is not None:
            raise ApiError(
                503,
                ErrorCode.MODEL_DEPRECATED,
                f"model {request.model_ref!r} is {refused_state}: it takes no new tasks",
                engine=request.engine.value,
                retriable=False,
            )
        candidates = [p for p in self.pools.values() if p.config.model_ref == request.model_ref]
        if not candidates:
            raise invalid_params(f"no pool serves model_ref {request.model_ref!r}")
        matching = [p for p in candidates if p.engine == request.engine.value]
        if not matching:
            engines = sorted({p.engine for p in candidates})
            raise invalid_params(
                f"model_ref {request.model_ref!r} is served by engine(s) {engines}, "
                f"not {request.engine.value!r}"
            )
        ready = [p for p in matching if p.accepts_tasks]
        if not ready:
            raise self._unavailable(request, matching)
        reasons = [self.unplaceable(p) for p in ready]
        placeable = [p for p, reason in zip(ready, reasons, strict=True) if reason is None]
        if not placeable:
            raise ApiError(
                503,
                ErrorCode.POOL_UNAVAILABLE,
                f"{request.model_ref!r} cannot be loaded: {reasons[0]}",
                engine=request.engine.value,
                retriable=True,
                retry_after_ms=min(p.config.queue.default_backoff_ms for p in ready),
            )
        ready = placeable
        # Least loaded Ready pool; within it, placement picks the replica at dispatch.
        return max(ready, key=lambda p: (p.slots_free, -len(p.queue)))

    def _unavailable(self, request: TaskRequest, pools: list[Pool]) -> ApiError:
        """503 with a retry hint: Unready pools may come back; a shutdown or an open circuit
        will not, in this process."""
        engine = request.engine.value
        if any(not p.accepting for p in pools):
            return ApiError(
                503,
                ErrorCode.POOL_UNAVAILABLE,
                "orchestratord is shutting down",
                engine=engine,
                retriable=True,
                retry_after_ms=self.config.server.shutdown_retry_after_ms,
            )
        drains = [p.drain for p in pools if p.drain is not None]
        if drains:
            return ApiError(
                503,
                ErrorCode.POOL_UNAVAILABLE,
                f"the pool for {request.model_ref!r} is draining or drained "
                f"({drains[0].reason}); it admits tasks again once resumed",
                engine=engine,
                retriable=True,
                retry_after_ms=max(
                    min(d.remaining_ms for d in drains),
                    min(p.config.queue.default_backoff_ms for p in pools),
                ),
            )
        failed = [p.residency for p in pools if p.residency.state is State.FAILED]
        if failed:
            now = time.monotonic()
            wait_ms = min(round(((r.failed_until or now) - now) * 1000) for r in failed)
            return ApiError(
                503,
                ErrorCode.MODEL_LOAD_FAILED,
                f"{request.model_ref!r} failed to load ({failed[0].failure}); it is tried "
                f"again in {max(wait_ms, 0) / 1000:.0f} s",
                engine=engine,
                retriable=True,
                retry_after_ms=max(wait_ms, 1),
            )
        if all(p.circuit_open for p in pools):
            return ApiError(
                503,
                ErrorCode.POOL_UNAVAILABLE,
                f"the engine for {request.model_ref!r} failed to start repeatedly (circuit open)",
                engine=engine,
                retriable=False,
            )
        retry_ms = min(p.config.queue.default_backoff_ms for p in pools)
        return ApiError(
            503,
            ErrorCode.POOL_UNREADY,
            f"no Ready pool for {request.model_ref!r}",
            engine=engine,
            retriable=True,
            retry_after_ms=retry_ms,
        )

    def _check_rate(self, request: TaskRequest, pool: Pool) -> None:
        bucket = pool.rate_limits.get(request.priority)
        wait_ms = bucket.take() if bucket is not None else 0
        if wait_ms:
            self.metrics.backpressure.labels(engine=pool.engine, policy=RATE_LIMIT).inc()
            rps = pool.config.queue.rate_limit_rps[request.priority.value]
            raise ApiError(
                429,
                ErrorCode.ADMISSION_REJECT,
                f"pool {pool.id!r}: {request.priority.value} tasks are limited to {rps:g}/s",
                engine=pool.engine,
                retriable=True,
                retry_after_ms=wait_ms,
                policy_label=RATE_LIMIT,
            )

    def _sampling(self, request: TaskRequest) -> Sampling:
        name = request.sampler_profile_version or self.config.default_sampler_profile
        profile = self.config.sampler_profiles.get(name)
        if profile is None:
            known = sorted(self.config.sampler_profiles)
            raise invalid_params(f"unknown sampler_profile_version {name!r}; known: {known}")
        return Sampling(**profile.model_dump())

    def _check_static(self, request: TaskRequest, pool: Pool) -> None:
        if request.workload not in pool.config.supported_workloads:
            raise invalid_params(
                f"pool {pool.id!r} does not support workload {request.workload.value!r}"
            )
        if request.workload is Workload.COMPLETION and request.prompt is None:
            raise invalid_params("workload 'completion' takes prompt, not inputs")
        if request.ctx > pool.ctx_max:
            raise invalid_params(f"ctx {request.ctx} exceeds the pool limit {pool.ctx_max}")

    async def _prompt_tokens(self, pool: Pool, request: TaskRequest) -> int | None:
        """Exact prompt token count, or None when it provably fits without counting.

        Every token of a byte-fallback or byte-level vocabulary covers at least one byte of
        text, so UTF-8 length plus the special tokens the engine may add is an upper bound
        on the count; and no token covers more than the vocabulary's longest piece, so
        length divided by that is a lower bound. Only prompts between the two bounds pay
        for a tokenizer round trip, and its reply is then small.
        """
        prompt = request.prompt or ""
        size = len(prompt.encode())
        room = request.ctx - request.max_tokens
        if size + _SPECIAL_TOKENS <= room:
            return None
        adapter = pool.counting_adapter()
        if adapter is None:
            # An on-demand pool with no engine loaded has no tokenizer to ask: the task is
            # queued on the byte bound, and the engine checks the prompt once it is loaded
            # (an over-long one then ends with an error frame, not a 400).
            return None
        longest = adapter.max_token_bytes
        if longest is not None and size // longest > room:
            raise invalid_params(
                f"prompt needs at least {size // longest} tokens: with max_tokens "
                f"({request.max_tokens}) it would exceed ctx ({request.ctx})"
            )
        pool.counting += 1
        try:
            return await adapter.count_tokens(prompt)
        except EngineError as exc:
            if pool.residency.on_demand and pool.residency.state is not State.LOADED:
                # Unloaded meanwhile (a stop, a reload): queued on the byte bound, as a
                # task that arrives for an unloaded pool is.
                return None
            raise ApiError(
                503,
                ErrorCode.POOL_UNAVAILABLE,
                f"could not count the prompt's tokens: {exc.public_message}",
                engine=pool.engine,
                retriable=True,
                retry_after_ms=pool.config.queue.default_backoff_ms,
            ) from exc
        finally:
            pool.counting_ended()

    async def admit(self, request: TaskRequest, correlation_id: str) -> AdmissionResult:
        try:
            return await self._admit(request, correlation_id)
        except ApiError as exc:
            reason = exc.code.value.lower()
            self.metrics.tasks_rejected.labels(engine=request.engine.value, reason=reason).inc()
            raise

    async def _admit(self, request: TaskRequest, correlation_id: str) -> AdmissionResult:
        received_at = time.monotonic()
        task_id = str(request.task_id)
        if task_id in self.registry:
            raise conflict(f"task_id {task_id} already exists")
        pool = self._pool_for(request)
        self._check_static(request, pool)
        sampling = self._sampling(request)
        prompt_tokens = await self._prompt_tokens(pool, request)
        if prompt_tokens is not None and prompt_tokens + request.max_tokens > request.ctx:
            raise invalid_params(
                f"prompt tokens ({prompt_tokens}) + max_tokens ({request.max_tokens}) "
                f"exceed ctx ({request.ctx})"
            )
        if task_id in self.registry:  # a twin may have been admitted while we tokenized
            raise conflict(f"task_id {task_id} already exists")
        if not pool.accepts_tasks:  # changed while we tokenized
            raise self._unavailable(request, [pool])
        # From here on nothing awaits: the checks below and the enqueue are one step, and
        # the session is stored only once the task is queued (HARD-111).
        try:
            session = self.sessions.prepare(str(request.session_id))
        except SessionEnded as exc:
            raise conflict(str(exc)) from exc
        except SessionsFull as exc:
            self.metrics.backpressure.labels(engine=pool.engine, policy=SESSIONS_FULL).inc()
            raise ApiError(
                429,
                ErrorCode.ADMISSION_REJECT,
                str(exc),
                engine=pool.engine,
                retriable=True,
                retry_after_ms=pool.config.queue.default_backoff_ms,
                policy_label=SESSIONS_FULL,
            ) from exc
        task = Task(
            request,
            pool.id,
            seed=request.effective_seed(),
            sampling=sampling,
            prompt_tokens=prompt_tokens,
            correlation_id=correlation_id,
        )
        task.received_at = received_at
        if self.config.sessions.affinity and session.pool_id == pool.id:
            task.preferred_replica, task.preferred_slot = session.replica_id, session.slot_id
        budget = session.budget
        if budget is not None:
            prompt = prompt_tokens if prompt_tokens is not None else len(task.prompt.encode()) + 2
            try:
                task.budget_reservation = budget.reserve(
                    prompt + request.max_tokens, pool.config.cost_per_1k_tokens
                )
            except BudgetExhausted as exc:
                raise ApiError(409, ErrorCode.BUDGET_EXHAUSTED, str(exc), retriable=False) from exc
            task.budget = budget
        bucket = pool.rate_limits.get(request.priority)
        try:
            self._check_rate(request, pool)  # last: a task refused earlier spends no token
            result = self._enqueue(pool, task)
        except ApiError as exc:
            if budget is not None:  # not admitted: give the reservation back
                budget.settle(task.budget_reservation, 0, 0.0)
            if bucket is not None and exc.policy_label != RATE_LIMIT:
                bucket.give_back()
            raise
        self.sessions.commit(session, pool.id, task)
        return result

    def _enqueue(self, pool: Pool, task: Task) -> AdmissionResult:
        try:
            admitted = pool.queue.admit(task)
        except QueueFull as full:
            raise self._backpressure(pool, full) from full
        if admitted.displaced is not None:
            displaced = admitted.displaced
            displaced.finish_error(
                ErrorCode.QUEUE_FULL_DROP_LRU,
                f"dropped from the full queue by policy {full_label(pool)}",
                pool.engine,
            )
            self.metrics.tasks_canceled.labels(**pool.queue_labels(), reason="displaced").inc()
        self.registry.add(task)
        task.on_finish = self.on_task_finished
        task.deadline_timer = asyncio.get_running_loop().call_later(
            task.deadline_at - time.monotonic(), pool.expire_deadline, task
        )
        pool.series.enqueued[task.priority].inc()
        contended = any(  # what an eviction weighs (RES-103, RES-105)
            other is not pool and (len(other.queue) or other.running)
            for other in self.pools.values()
        )
        pool.residency.note_demand(time.monotonic(), contended=contended)
        predicted = predict_start_ms(pool, admitted.position)
        now_full = len(pool.queue) >= pool.queue.capacity
        pool.pump()
        backoff = (pool.estimator.drain_interval_ms(pool.slots_total) or 0) if now_full else 0
        body = {
            "task_id": task.id,
            "queue_position": admitted.position,
            "predicted_start_ms": predicted,
            "backoff_ms": backoff,
        }
        return AdmissionResult(task, body)

    def _backpressure(self, pool: Pool, full: QueueFull) -> ApiError:
        retry_ms = (
            pool.estimator.drain_interval_ms(pool.slots_total)
            or pool.config.queue.default_backoff_ms
        )
        self.metrics.backpressure.labels(engine=pool.engine, policy=full.policy.value).inc()
        return ApiError(
            429,
            ErrorCode.ADMISSION_REJECT,
            f"pool {pool.id!r} queue is full ({pool.queue.capacity} tasks)",
            engine=pool.engine,
            retriable=True,
            retry_after_ms=retry_ms,
            policy_label=full.policy.value,
        )


def predict_start_ms(pool: Pool, position: int) -> int | None:
    """When a task at ``position`` should start: the queue's learned prediction, plus what
    is left of a load when the pool's engines are not there yet (RES-107)."""
    residency = pool.residency
    now = time.monotonic()
    if residency.state is State.LOADED or not residency.on_demand:
        return pool.estimator.predicted_start_ms(position, pool.slots_total, pool.slots_free)
    slots = pool.config.slots * max(len(pool.replicas), 1)
    queued = pool.estimator.predicted_start_ms(position, slots, slots)
    return residency.load_ms_left(now) + (queued or 0)


def full_label(pool: Pool) -> str:
    return pool.config.queue.full_policy.value
