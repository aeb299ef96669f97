"""Runs one task's decode on one replica and relays its tokens into the task's log.

The runner is started by :meth:`Replica.start_task` and always settled by its
done-callback, whatever stopped it (end of stream, engine failure, cancel, watchdog,
deadline, shutdown), so the lifecycle invariants hold on every path:

- every task that reaches a runner ends in exactly one terminal frame (``end`` or
  ``error``): whoever stops a runner closes the log first, and settling closes it if
  nothing else did (a runner canceled before its first step);
- a task that never got output because the engine was unreachable is handed back to its
  pool (``RunOutcome.requeue``; at most ``MAX_ATTEMPTS`` starts) instead of failing: queued
  work waits for a Ready replica; only tasks that were decoding end with ``WORKER_RESET``.
"""

from __future__ import annotations

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
    PromptProgress,
    StreamEnd,
    TokenChunk,
)
from orchestratord.core.task import Task
from orchestratord.errors import ErrorCode
from orchestratord.logs import correlation_id

if TYPE_CHECKING:
    from orchestratord.replicas.replica import Replica

log = logging.getLogger("orchestratord.task")

MAX_ATTEMPTS = 3


@dataclass(slots=True)
class RunOutcome:
    end: StreamEnd | None = None
    first_token_at: float | None = None
    requeue: bool = False


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


def _metrics_payload(replica: Replica, task: Task, kv_warm: bool) -> dict[str, object]:
    payload: dict[str, object] = {
        "queue_depth": replica.host.queue_depth() if replica.host is not None else 0,
        "on_time_probability": on_time_probability(task, time.monotonic()),
        "kv_warmth": kv_warm,
        "tokens_out": task.tokens_out,
    }
    if task.budget is not None:  # what the session has left (ORCH-3100, OC-METRICS-7111)
        payload.update(task.budget.remaining())
    return payload


def _generation_request(task: Task) -> GenerationRequest:
    return GenerationRequest(
        prompt=task.prompt,
        max_tokens=task.max_tokens,
        # llama.cpp seeds are uint32 and 0xFFFFFFFF means "random": fold int64 into the rest.
        seed=task.seed % 0xFFFFFFFF,
        sampling=task.sampling,
        reuse_kv=task.reuse_kv,
        slot=task.slot_id,
        correlation_id=task.correlation_id,
    )


async def _prompt_tokens(replica: Replica, task: Task) -> int:
    """The prompt's tokens for an engine that did not report them (TGI without prefill
    details, Triton): the count admission made, else the engine's tokenizer, else the
    prompt's UTF-8 length (an upper bound, charged rather than nothing; HARD-208)."""
    if not task.prompt:
        return 0
    if task.prompt_tokens is not None:
        return task.prompt_tokens
    try:
        return await replica.adapter.count_tokens(task.prompt)
    except EngineError as exc:
        log.warning("task %s: the engine could not count the prompt: %s", task.id, exc.detail)
        return len(task.prompt.encode()) + 2


async def run_task(replica: Replica, task: Task, outcome: RunOutcome) -> None:
    # This runner is its own asyncio task: its log records carry the admitting request's ID.
    correlation_id.set(task.correlation_id)
    every = replica.runtime.frame_every_tokens
    engine = replica.engine
    try:
        if task.finished:
            return
        generation = _generation_request(task)
        task.append_metrics(_metrics_payload(replica, task, kv_warm=False))
        events = replica.adapter.generate(generation)
        async with contextlib.aclosing(events):
            async for event in events:
                if task.finished:
                    break
                if isinstance(event, PromptProgress):
                    task.last_progress = time.monotonic()  # working through the prompt
                    continue
                if isinstance(event, TokenChunk):
                    if outcome.first_token_at is None:
                        outcome.first_token_at = time.monotonic()
                    task.append_token(event.text)
                    budget = task.budget
                    if budget is not None and budget.time_exhausted(task.last_progress):
                        message = "the session's time budget ran out while decoding"
                        task.finish_error(ErrorCode.BUDGET_EXHAUSTED, message, engine)
                        break
                    if task.tokens_out % every == 0:
                        task.append_metrics(_metrics_payload(replica, task, kv_warm=False))
                else:
                    outcome.end = event
        end = outcome.end
        if end is not None:
            task.tokens_in = end.tokens_in or await _prompt_tokens(replica, task)
            # Warm: the session's own cache was reused, in the slot where the session left it.
            task.kv_warm = (
                end.tokens_cached > 0
                and task.cache_owned
                and task.preferred_replica == replica.id
                and task.preferred_slot == task.last_slot_id
            )
            task.append_metrics(_metrics_payload(replica, task, kv_warm=task.kv_warm))
            task.finish_end(end.finish_reason)
        elif not task.finished:
            task.finish_error(ErrorCode.WORKER_RESET, "engine stream ended early", engine)
    except EngineError as exc:
        log.warning(
            "task %s (correlation %s) on replica %s: %s",
            task.id,
            task.correlation_id,
            replica.id,
            exc.detail,
        )
        never_output = task.tokens_out == 0 and isinstance(exc, EngineUnavailable)
        if never_output and task.attempts < MAX_ATTEMPTS and not task.finished:
            outcome.requeue = True
        else:
            task.finish_error(exc.code, exc.public_message, engine)
        if exc.engine_down:
            replica.engine_failed(exc.public_message)
    except Exception:
        log.exception("task %s (correlation %s) failed", task.id, task.correlation_id)
        task.finish_error(ErrorCode.INTERNAL, "internal error", engine)


def log_task_end(task: Task, *, engine: str, pool_id: str, model_id: str) -> None:
    """One structured line per task (HOME-803): identifiers and timings, never text."""
    fields = {
        "task_id": task.id,
        "session_id": task.session_id,
        "correlation_id": task.correlation_id,
        "engine": engine,
        "pool_id": pool_id,
        "replica_id": task.replica_id,
        "model_id": model_id,
        "ctx": task.ctx,
        "kv_warmth": task.kv_warm,
        "queue_time_ms": round(((task.started_at or task.admitted_at) - task.admitted_at) * 1000),
        "decode_time_ms": task.decode_ms(),
        "tokens_in": task.tokens_in if task.tokens_in is not None else task.prompt_tokens,
        "tokens_out": task.tokens_out,
        "outcome": task.outcome,
    }
    log.info("task end %s", json.dumps(fields, separators=(",", ":")))
