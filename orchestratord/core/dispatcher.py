"""Moves tasks from a pool's queue onto its engine slots and relays their tokens.

``dispatch_forever`` takes a slot, then the next task (interactive first), and starts a
runner; the slot comes back only when the runner is done, which for a canceled task means
after the adapter confirmed the engine slot idle. Every task that reaches a runner ends in
exactly one terminal frame (``end`` or ``error``), whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING

from orchestratord.adapters.base import (
    EngineError,
    GenerationRequest,
    StreamEnd,
    TokenChunk,
)
from orchestratord.core.request import Determinism
from orchestratord.core.task import Task, TaskState
from orchestratord.errors import ErrorCode

if TYPE_CHECKING:
    from orchestratord.pools.pool import Pool

log = logging.getLogger("orchestratord.task")


async def dispatch_forever(pool: Pool) -> None:
    while True:
        await pool.slot_gate.acquire()
        try:
            await pool.ready_event.wait()  # an Unready engine gets no work; the queue waits
            task = await pool.queue.get()
            strict = task.request.determinism is Determinism.STRICT
            if strict:
                # llama.cpp's tokens for a sequence change with what else shares its batch
                # (the determinism scenario shows it), so a strict task runs alone: wait for
                # the others to finish, and start nothing beside it.
                await pool.idle.wait()
        except asyncio.CancelledError:
            pool.slot_gate.release()
            raise
        task.slot_id = pool.free_slot_ids.pop()
        pool.running.add(task)
        pool.idle.clear()
        pool.queue_changed()
        task.runner = asyncio.create_task(run_task(pool, task), name=f"task-{task.id}")
        if strict:
            await asyncio.wait({task.runner})


def on_time_probability(task: Task, now: float) -> float:
    """Chance-like score that the task finishes before its deadline, from its decode rate."""
    remaining_s = task.deadline_at - now
    if remaining_s <= 0:
        return 0.0
    target = task.request.expected_tokens or task.request.max_tokens
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
    request = task.request
    return GenerationRequest(
        prompt=request.prompt or "",
        max_tokens=request.max_tokens,
        # llama.cpp seeds are uint32 and 0xFFFFFFFF means "random": fold int64 into the rest.
        seed=task.seed % 0xFFFFFFFF,
        sampling=task.sampling,
        reuse_kv=request.kv_hint is None or request.kv_hint.value == "reuse",
        slot=task.slot_id,
    )


async def run_task(pool: Pool, task: Task) -> None:
    # Nothing may await before the try: a runner canceled before its first step must still
    # give its slot back in the finally below.
    task.started_at = task.last_progress = time.monotonic()
    end: StreamEnd | None = None
    first_token_at: float | None = None
    every = pool.frame_every_tokens
    try:
        if task.finished:
            return
        task.state = TaskState.RUNNING
        pool.metrics.tasks_started.labels(
            **pool.replica_labels(), priority=task.priority.value
        ).inc()
        if task.started_at >= task.deadline_at:
            task.finish_error(ErrorCode.DEADLINE_UNMET, "deadline passed while queued", pool.engine)
            return
        generation = _generation_request(task)
        task.append_metrics(_metrics_payload(pool, task, kv_warm=False))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (task.deadline_at - time.monotonic())
        async with asyncio.timeout_at(deadline):
            events = pool.adapter.generate(generation)
            async with contextlib.aclosing(events):
                async for event in events:
                    if task.finished:
                        break
                    if isinstance(event, TokenChunk):
                        if first_token_at is None:
                            first_token_at = time.monotonic()
                        task.append_token(event.text)
                        if task.tokens_out % every == 0:
                            task.append_metrics(_metrics_payload(pool, task, kv_warm=False))
                    else:
                        end = event
        if end is not None:
            task.append_metrics(_metrics_payload(pool, task, kv_warm=end.tokens_cached > 0))
            task.finish_end(end.finish_reason)
        elif not task.finished:
            task.finish_error(ErrorCode.WORKER_RESET, "engine stream ended early", pool.engine)
    except TimeoutError:
        task.finish_error(ErrorCode.DEADLINE_UNMET, "deadline_ms exceeded", pool.engine)
    except EngineError as exc:
        task.finish_error(exc.code, str(exc), pool.engine)
        pool.last_error = str(exc)
    except asyncio.CancelledError:
        task.finish_error(ErrorCode.WORKER_RESET, "task runner stopped", pool.engine)
        raise
    except Exception as exc:
        log.exception("task %s failed", task.id)
        task.finish_error(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}", pool.engine)
    finally:
        _settle(pool, task, end, first_token_at)


def _settle(pool: Pool, task: Task, end: StreamEnd | None, first_token_at: float | None) -> None:
    pool.running.discard(task)
    if not pool.running:
        pool.idle.set()
    if task.slot_id is not None:
        pool.free_slot_ids.append(task.slot_id)
    pool.slot_gate.release()
    pool.queue_changed()
    labels = pool.replica_labels()
    if end is not None:
        pool.metrics.tokens_in.labels(**labels).inc(end.tokens_in)
        pool.metrics.tokens_out.labels(**labels).inc(end.tokens_out)
        if task.started_at is not None and task.finished_at is not None:
            pool.estimator.observe((task.finished_at - task.started_at) * 1000)
    if first_token_at is not None:
        pool_labels = pool.pool_labels()
        pool.metrics.latency_first_token_ms.labels(**pool_labels).observe(
            (first_token_at - task.admitted_at) * 1000
        )
        if task.finished_at is not None:
            pool.metrics.latency_decode_ms.labels(**pool_labels).observe(
                (task.finished_at - first_token_at) * 1000
            )
    log_task_end(pool, task, end)


def log_task_end(pool: Pool, task: Task, end: StreamEnd | None) -> None:
    """One structured line per task (HOME-803): identifiers and timings, never text."""
    terminal = task.terminal.payload if task.terminal else {}
    fields = {
        "task_id": task.id,
        "session_id": str(task.request.session_id),
        "correlation_id": task.correlation_id,
        "engine": pool.engine,
        "pool_id": pool.id,
        "replica_id": pool.replica_id,
        "model_id": pool.config.model_ref,
        "ctx": task.request.ctx,
        "kv_warmth": bool(end and end.tokens_cached > 0),
        "queue_time_ms": round(((task.started_at or task.admitted_at) - task.admitted_at) * 1000),
        "decode_time_ms": task.decode_ms(),
        "tokens_in": end.tokens_in if end else task.prompt_tokens,
        "tokens_out": task.tokens_out,
        "outcome": terminal.get("finish_reason") or terminal.get("code"),
    }
    log.info("task end %s", json.dumps(fields, separators=(",", ":")))
