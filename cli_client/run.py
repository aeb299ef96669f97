"""``llorch run``: one prompt streamed live, or a batch file at a safe concurrency.

A task's ids are made here; 429 and 503-with-``retriable`` are retried after the server's
hint (``Retry-After``/``retry_after_ms``), with jitter and doubling, saying each time why it
waits ("the pool ... is draining ...; retrying in 4.1 s") and giving up once the waits would
pass ``max_wait_s`` (60 s). Ctrl-C cancels the task on the server before exiting — also
during the submit, whose POST may already have been admitted. The batch concurrency comes
from capabilities (FR-MA-001): the pool's slots plus half its queue, so the batch keeps the
engine busy without meeting the full-queue policy; Ctrl-C stops a batch at once: prompts not
yet submitted are dropped and the tasks in flight are canceled on the server (HARD-210).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

import httpx

from cli_client.client import Backoff, OrchClient, OrchError, Unavailable

MAX_ATTEMPTS = 8
MAX_WAIT_S = 60.0
Notify = Callable[[str], None]

T = TypeVar("T")


@dataclass
class RunOptions:
    max_tokens: int = 64
    seed: int | None = None
    priority: str = "interactive"
    model_ref: str | None = None
    engine: str | None = None
    ctx: int | None = None
    profile: str | None = None
    deadline_ms: int = 300_000
    session_id: str | None = None
    max_wait_s: float = MAX_WAIT_S


@dataclass
class Outcome:
    task_id: str
    prompt: str
    text: str = ""
    tokens: int = 0
    seconds: float = 0.0
    finish_reason: str | None = None
    error: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "prompt": self.prompt,
            "text": self.text,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "tokens_per_s": round(self.tokens_per_s, 1),
            "finish_reason": self.finish_reason,
            "error": self.error,
            "session_id": self.extra.get("session_id"),
        }

    def summary(self) -> str:
        if self.error is not None:
            return (
                f"error {self.error.get('code')}: {self.error.get('message')} (task {self.task_id})"
            )
        return (
            f"{self.tokens} tokens in {self.seconds:.2f} s ({self.tokens_per_s:.1f} tok/s), "
            f"{self.finish_reason}, session {self.extra.get('session_id')}, task {self.task_id}"
        )


def pick_pool(
    capabilities: dict[str, Any], model_ref: str | None
) -> tuple[str, str, dict[str, Any]]:
    """(engine, model_ref, pool) of a Ready pool serving ``model_ref`` (any, if None)."""
    for engine in capabilities.get("engines", []):
        for pool in engine.get("pools", []):
            if model_ref in (None, pool["model_ref"]) and pool.get("ready"):
                return engine["engine"], pool["model_ref"], pool
    for engine in capabilities.get("engines", []):  # not Ready: admission will say why
        for pool in engine.get("pools", []):
            if model_ref in (None, pool["model_ref"]):
                return engine["engine"], pool["model_ref"], pool
    raise OrchError(
        400, {"code": "INVALID_PARAMS", "message": f"no pool serves {model_ref!r}"}, None
    )


def task_body(
    prompt: str, options: RunOptions, engine: str, model_ref: str, ctx: int
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task_id": str(uuid.uuid4()),
        "session_id": options.session_id or str(uuid.uuid4()),
        "workload": "completion",
        "model_ref": model_ref,
        "engine": engine,
        "ctx": ctx,
        "priority": options.priority,
        "prompt": prompt,
        "max_tokens": options.max_tokens,
        "deadline_ms": options.deadline_ms,
    }
    if options.seed is not None:
        body["seed"] = options.seed
    if options.profile is not None:
        body["sampler_profile_version"] = options.profile
    return body


def submit_with_retries(
    client: OrchClient,
    body: dict[str, Any],
    sleep: Callable[[float], None] = time.sleep,
    *,
    notify: Notify | None = None,
    max_wait_s: float = MAX_WAIT_S,
    submit: Callable[[], T] | None = None,
) -> T | None:
    """``submit()`` (default: the two-request form's ``enqueue``), retried on 429 and on a
    retriable 503 after the server's hint, with jitter and doubling; returns its result."""
    delay_factor = 1.0
    waited = 0.0
    last: OrchError
    for attempt in range(MAX_ATTEMPTS):
        try:
            if submit is None:
                client.enqueue(body)
                return None
            return submit()
        except Backoff as exc:
            wait_ms, why, last = exc.backoff_ms, _why_429(exc), exc
        except Unavailable as exc:
            if not exc.retriable:
                raise
            wait_ms, why, last = exc.retry_after_ms, exc.message, exc
        delay = wait_ms / 1000 * delay_factor * random.uniform(1.0, 1.5)
        if attempt == MAX_ATTEMPTS - 1 or waited + delay > max_wait_s:
            raise OrchError(
                last.status,
                {**last.envelope, "message": f"gave up after waiting {waited:.0f} s: {why}"},
                last.correlation_id,
            )
        if notify is not None:
            notify(f"waiting: {why}; retrying in {delay:.1f} s")
        sleep(delay)
        waited += delay
        delay_factor *= 2
    raise AssertionError("unreachable: the last attempt raises")


def _why_429(exc: Backoff) -> str:
    if exc.policy_label == "rate-limit":
        return "over the priority's rate limit"
    if exc.policy_label == "sessions":
        return "too many live sessions"
    return str(exc.envelope.get("message") or "the queue is full")


def cancel_quietly(client: OrchClient, task_id: str) -> None:
    """Cancel a task that may or may not have been admitted (a 404 means it was not)."""
    with contextlib.suppress(OrchError, httpx.HTTPError):
        client.cancel(task_id)


def run_one(
    client: OrchClient,
    prompt: str,
    options: RunOptions,
    capabilities: dict[str, Any],
    out: TextIO | None,
    *,
    notify: Notify | None = None,
    on_task: Callable[[str], None] | None = None,
) -> Outcome:
    engine, model_ref, pool = pick_pool(capabilities, options.model_ref)
    engine = options.engine or engine
    ctx = options.ctx or int(pool["ctx_max"])
    body = task_body(prompt, options, engine, model_ref, ctx)
    outcome = Outcome(body["task_id"], prompt, extra={"session_id": body["session_id"]})
    if on_task is not None:
        on_task(outcome.task_id)
    started = time.monotonic()
    try:
        opened = submit_with_retries(
            client, body, notify=notify, max_wait_s=options.max_wait_s,
            submit=lambda: client.submit_stream(body),  # one request per task (PERF-103)
        )  # fmt: skip
        assert opened is not None
        waiting = WaitReporter(notify)
        with opened as frames:
            for event, payload in frames:
                if event in ("queued", "loading", "started"):
                    waiting.frame(event, payload)
                elif event == "token":
                    outcome.text += payload["t"]
                    outcome.tokens += 1
                    if out is not None:
                        out.write(payload["t"])
                        out.flush()
                elif event == "end":
                    outcome.finish_reason = payload.get("finish_reason")
                elif event == "error":
                    outcome.error = payload
    except KeyboardInterrupt:
        cancel_quietly(client, outcome.task_id)  # the POST may have been admitted already
        outcome.finish_reason = "canceled"
        outcome.seconds = time.monotonic() - started
        raise Interrupted(outcome) from None
    outcome.seconds = time.monotonic() - started
    return outcome


class WaitReporter:
    """Says what a task waits for, from its ``queued`` and ``loading`` frames (RES-204):
    "queued: 3 ahead, ~2 s", "loading qwen-7b on GPU0 ... 4.2 s", and once it starts after a
    load, how long the load took. A line when the reason or the place changes; a loading line
    at most every two seconds."""

    def __init__(self, notify: Notify | None) -> None:
        self.notify = notify
        self.last: tuple[Any, ...] | None = None
        self.loading_said_at = -math.inf
        self.load_began: float | None = None  # this clock's time the server began the load
        self.loading: str | None = None

    def frame(self, event: str, payload: dict[str, Any]) -> None:
        if self.notify is None:
            return
        now = time.monotonic()
        if event == "started":
            if self.loading is not None and self.load_began is not None:
                took = now - self.load_began
                self.notify(f"{self.loading}: ready in {took:.2f} s" if took < 10 else
                            f"{self.loading}: ready in {took:.1f} s")  # fmt: skip
            return
        if event == "loading":
            devices = "+".join(f"GPU{d}" for d in payload.get("devices", [])) or "CPU"
            self.loading = f"loading {payload.get('model_ref')} on {devices}"
            elapsed_s = payload.get("elapsed_ms", 0) / 1000
            if self.load_began is None:
                self.load_began = now - elapsed_s
            if now - self.loading_said_at >= 2.0:
                self.loading_said_at = now
                expected = payload.get("expected_ms", 0) / 1000
                self.notify(f"{self.loading} ... {elapsed_s:.1f} s (~{expected:.0f} s)")
            return
        if self.loading is not None and payload.get("waiting_for") == "load":
            return  # the loading lines say it
        key = (payload.get("waiting_for"), payload.get("queue_position"))
        if key == self.last:
            return
        self.last = key
        predicted = payload.get("predicted_start_ms")
        eta = f", ~{predicted / 1000:.0f} s" if predicted is not None else ""
        why = {"load": "its model loads", "swap": "another model makes room",
               "drain": "the pool drains"}.get(str(payload.get("waiting_for")))  # fmt: skip
        ahead = payload.get("queue_position", 0)
        self.notify(f"queued: {ahead} ahead{eta}" + (f" (waiting while {why})" if why else ""))


class Interrupted(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__("interrupted")
        self.outcome = outcome


def safe_concurrency(pool: dict[str, Any]) -> int:
    """FR-MA-001: enough to keep every slot busy, well inside the queue."""
    return max(1, int(pool["slots_total"]) + int(pool.get("queue_capacity", 0)) // 2)


def read_batch(path: Path) -> list[str]:
    """One prompt per line; JSON lines may be {"prompt": ...}; blank lines are skipped."""
    text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    prompts = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            prompts.append(str(json.loads(line)["prompt"]))
        else:
            prompts.append(line)
    return prompts


class BatchInterrupted(Exception):
    def __init__(self, outcomes: list[Outcome]) -> None:
        super().__init__("batch interrupted")
        self.outcomes = outcomes


def run_batch(
    client_factory: Callable[[], OrchClient],
    prompts: list[str],
    options: RunOptions,
    capabilities: dict[str, Any],
    *,
    concurrency: int | None,
    progress: Callable[[Outcome], None],
    notify: Notify | None = None,
) -> list[Outcome]:
    """Run ``prompts``; Ctrl-C raises BatchInterrupted once the batch has stopped: nothing
    more is submitted and every task in flight is canceled on the server."""
    _, _, pool = pick_pool(capabilities, options.model_ref)
    workers = concurrency or safe_concurrency(pool)
    stop = threading.Event()
    lock = threading.Lock()
    in_flight: set[str] = set()

    def one(prompt: str) -> Outcome:
        if stop.is_set():
            return Outcome("", prompt, finish_reason="canceled")
        task_ids: list[str] = []

        def track(task_id: str) -> None:
            task_ids.append(task_id)
            with lock:
                in_flight.add(task_id)

        with client_factory() as client:
            try:
                outcome = run_one(client, prompt, options, capabilities, None, notify=notify,
                                  on_task=track)  # fmt: skip
            except OrchError as exc:
                outcome = Outcome(task_ids[0] if task_ids else "", prompt, error=exc.envelope)
            finally:
                with lock:
                    in_flight.difference_update(task_ids)
        progress(outcome)
        return outcome

    executor = ThreadPoolExecutor(max_workers=workers)
    futures: list[Future[Outcome]] = []
    try:
        futures += (executor.submit(one, p) for p in prompts)
        pending: set[Future[Outcome]] = set(futures)
        while pending:  # short waits, so Ctrl-C reaches this thread at once
            _, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
    except KeyboardInterrupt:
        stop.set()
        for future in futures:
            future.cancel()
        with lock:
            canceling = sorted(in_flight)
        with client_factory() as client:
            for task_id in canceling:
                cancel_quietly(client, task_id)
        executor.shutdown(wait=True, cancel_futures=True)
        raise BatchInterrupted(_collect(futures, prompts)) from None
    executor.shutdown(wait=True)
    return [f.result() for f in futures]


def _collect(futures: list[Future[Outcome]], prompts: list[str]) -> list[Outcome]:
    outcomes = []
    for index, prompt in enumerate(prompts):
        future = futures[index] if index < len(futures) else None
        if future is None or future.cancelled() or future.exception() is not None:
            outcomes.append(Outcome("", prompt, finish_reason="canceled"))
        else:
            outcomes.append(future.result())
    return outcomes
