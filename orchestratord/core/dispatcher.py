"""Moves tasks from a pool's queue onto its engine slots and relays their tokens.

Dispatch is a synchronous ``pump`` run whenever something changes (a task admitted, a
runner settled, the engine Ready again): while the pool is Ready and has a free slot it
pops the next task (interactive first) and starts a runner for it. A strict task starts
only on an idle engine and nothing starts beside it.

The lifecycle invariants live here:

- every task that reaches a runner ends in exactly one terminal frame (``end`` or
  ``error``), whatever happens: whoever stops a runner (cancel, watchdog, deadline,
  shutdown) closes the log first, and the runner's done-callback (``_settle``), which runs
  even when the runner was canceled before its first step, closes it if nothing else did;
- the slot, its engine slot id and the ``running`` entry come back on every path, in that
  same callback, and only once the adapter confirmed the engine slot idle;
- a task that never got output because the engine was unreachable goes back to the head of
  its queue (at most ``MAX_ATTEMPTS`` starts) instead of failing: queued work waits for the
  engine's restart; only tasks that were decoding end with ``WORKER_RESET``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestratord.adapters.base import (
    EngineError,
    EngineUnavailable,
    GenerationRequest,
    StreamEnd,
    TokenChunk,
)
from orchestratord.core.task import Task, TaskState
from orchestratord.errors import ErrorCode

if TYPE_CHECKING:
    from orchestratord.pools.pool import Pool

log = logging.getLogger("orchestratord.task")

MAX_ATTEMPTS = 3


@dataclass(slots=True)
class RunOutcome:
    end: StreamEnd | None = None
    first_token_at: float | None = None
    requeue: bool = False


def pump(pool: Pool) -> None:
    """Start queued tasks while the pool is Ready and has free slots."""
    queue = pool.queue
    while pool.dispatching and pool.free_slot_ids and not pool.strict_running:
        head = queue.peek()
        if head is None or (head.strict and pool.running):
            break
        queue.pop()
        _start(pool, head)
    pool.queue_changed()


def _start(pool: Pool, task: Task) -> None:
    task.slot_id = pool.free_slot_ids.pop()
    task.state = TaskState.RUNNING
    task.started_at = task.last_progress = time.monotonic()
    task.attempts += 1
    pool.running.add(task)
    if task.strict:
        pool.strict_running = True
    pool.series.started[task.priority].inc()
    outcome = RunOutcome()
    runner = asyncio.get_running_loop().create_task(run_task(pool, task, outcome))
    runner.set_name(f"task-{task.id}")  # pragma: no mutate - for debugging only
    task.runner = runner
    runner.add_done_callback(lambda _: _settle(pool, task, outcome))


def expire_deadline(pool: Pool, task: Task) -> None:
    """Deadline timer: a queued task leaves the queue, a running one is stopped."""
    if task.finished:
        return
    if task.state is TaskState.QUEUED:
        pool.queue.remove(task)
        task.finish_error(ErrorCode.DEADLINE_UNMET, "deadline passed while queued", pool.engine)
        pool.queue_changed()
        return
    task.finish_error(ErrorCode.DEADLINE_UNMET, "deadline_ms exceeded", pool.engine)
    if task.runner is not None:
        task.runner.cancel()


def on_time_probability(task: Task, now: float) -> float:
    """Chance-like score that the task finishes before its deadline, from its decode rate."""
    remaining_s = task.deadline_at - now
    if remaining_s <= 0:
        return 0.0
    target = task.expected_tokens or task.max_tokens
    left = max(target - task.tokens_out, 0)
    if left == 0 or task.started_at is None or task.tokens_out == 0:
        return 1.0
    rate = task.tokens_out / max(now - task.started_at, 1e-6)
    needed_s = left / rate
    return round(min(1.0, remaining_s / needed_s), 3)


def _metrics_payload(pool: Pool, task: Task, kv_warm: bool) -> dict[str, object]:
    return {
        "queue_depth": len(pool.queue),
        "on_time_probability": on_time_probability(task, time.monotonic()),
        "kv_warmth": kv_warm,
        "tokens_out": task.tokens_out,
    }


def _generation_request(task: Task) -> GenerationRequest:
    return GenerationRequest(
        prompt=task.prompt,
        max_tokens=task.max_tokens,
        # llama.cpp seeds are uint32 and 0xFFFFFFFF means "random": fold int64 into the rest.
        seed=task.seed % 0xFFFFFFFF,
        sampling=task.sampling,
        reuse_kv=task.reuse_kv,
        slot=task.slot_id,
    )


async def run_task(pool: Pool, task: Task, outcome: RunOutcome) -> None:
    every = pool.frame_every_tokens
    try:
        if task.finished:
            return
        generation = _generation_request(task)
        task.append_metrics(_metrics_payload(pool, task, kv_warm=False))
        events = pool.adapter.generate(generation)
        async with contextlib.aclosing(events):
            async for event in events:
                if task.finished:
                    break
                if isinstance(event, TokenChunk):
                    if outcome.first_token_at is None:
                        outcome.first_token_at = time.monotonic()
                    task.append_token(event.text)
                    if task.tokens_out % every == 0:
                        task.append_metrics(_metrics_payload(pool, task, kv_warm=False))
                else:
                    outcome.end = event
        end = outcome.end
        if end is not None:
            task.tokens_in = end.tokens_in
            task.kv_warm = end.tokens_cached > 0
            task.append_metrics(_metrics_payload(pool, task, kv_warm=end.tokens_cached > 0))
            task.finish_end(end.finish_reason)
        elif not task.finished:
            task.finish_error(ErrorCode.WORKER_RESET, "engine stream ended early", pool.engine)
    except EngineError as exc:
        log.warning(
            "task %s (correlation %s) on pool %s: %s",
            task.id,
            task.correlation_id,
            pool.id,
            exc.detail,
        )
        never_output = task.tokens_out == 0 and isinstance(exc, EngineUnavailable)
        if never_output and task.attempts < MAX_ATTEMPTS and not task.finished:
            outcome.requeue = True
        else:
            task.finish_error(exc.code, exc.public_message, pool.engine)
        if exc.engine_down:
            pool.engine_failed(exc.public_message)
    except Exception:
        log.exception("task %s (correlation %s) failed", task.id, task.correlation_id)
        task.finish_error(ErrorCode.INTERNAL, "internal error", pool.engine)


def _settle(pool: Pool, task: Task, outcome: RunOutcome) -> None:
    pool.running.discard(task)
    if task.strict:
        pool.strict_running = False
    if task.slot_id is not None:
        pool.free_slot_ids.append(task.slot_id)
        task.slot_id = None
    task.runner = None
    if outcome.requeue and not task.finished and pool.accepting:
        task.state = TaskState.QUEUED
        pool.queue.requeue_front(task)
    elif not task.finished:  # a runner stopped before its first step
        task.finish_error(ErrorCode.WORKER_RESET, "task runner stopped", pool.engine)
    if task.finished:
        _account(pool, task, outcome)
    pump(pool)


def _account(pool: Pool, task: Task, outcome: RunOutcome) -> None:
    series = pool.series
    end = outcome.end
    if end is not None:
        series.tokens_in.inc(end.tokens_in)
        series.tokens_out.inc(end.tokens_out)
        if task.started_at is not None and task.finished_at is not None:
            pool.estimator.observe((task.finished_at - task.started_at) * 1000)
    first = outcome.first_token_at
    if first is not None:
        series.first_token_ms.observe((first - task.admitted_at) * 1000)
        if task.finished_at is not None:
            series.decode_ms.observe((task.finished_at - first) * 1000)


def log_task_end(pool: Pool, task: Task) -> None:
    """One structured line per task (HOME-803): identifiers and timings, never text."""
    fields = {
        "task_id": task.id,
        "session_id": task.session_id,
        "correlation_id": task.correlation_id,
        "engine": pool.engine,
        "pool_id": pool.id,
        "replica_id": pool.replica_id,
        "model_id": pool.config.model_ref,
        "ctx": task.ctx,
        "kv_warmth": task.kv_warm,
        "queue_time_ms": round(((task.started_at or task.admitted_at) - task.admitted_at) * 1000),
        "decode_time_ms": task.decode_ms(),
        "tokens_in": task.tokens_in if task.tokens_in is not None else task.prompt_tokens,
        "tokens_out": task.tokens_out,
        "outcome": task.outcome,
    }
    log.info("task end %s", json.dumps(fields, separators=(",", ":")))
