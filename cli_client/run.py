"""``llorch run``: one prompt streamed live, or a batch file at a safe concurrency.

A task's ids are made here; 429 and 503-with-``retriable`` are retried after the server's
hint (``Retry-After``/``retry_after_ms``), with jitter and doubling, a bounded number of
times. Ctrl-C cancels the task on the server before exiting. The batch concurrency comes
from capabilities (FR-MA-001): the pool's slots plus half its queue, so the batch keeps the
engine busy without meeting the full-queue policy.
"""

from __future__ import annotations

import json
import random
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cli_client.client import Backoff, OrchClient, OrchError, Unavailable

MAX_ATTEMPTS = 8


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
    client: OrchClient, body: dict[str, Any], sleep: Callable[[float], None] = time.sleep
) -> None:
    delay_factor = 1.0
    for attempt in range(MAX_ATTEMPTS):
        try:
            client.enqueue(body)
            return
        except Backoff as exc:
            wait_ms = exc.backoff_ms
        except Unavailable as exc:
            if not exc.retriable or attempt == MAX_ATTEMPTS - 1:
                raise
            wait_ms = exc.retry_after_ms
        if attempt == MAX_ATTEMPTS - 1:
            raise OrchError(
                429, {"code": "ADMISSION_REJECT", "message": "still refused after retries"}, None
            )
        sleep(wait_ms / 1000 * delay_factor * random.uniform(1.0, 1.5))
        delay_factor *= 2


def run_one(
    client: OrchClient,
    prompt: str,
    options: RunOptions,
    capabilities: dict[str, Any],
    out: TextIO | None,
) -> Outcome:
    engine, model_ref, pool = pick_pool(capabilities, options.model_ref)
    engine = options.engine or engine
    ctx = options.ctx or int(pool["ctx_max"])
    body = task_body(prompt, options, engine, model_ref, ctx)
    outcome = Outcome(body["task_id"], prompt, extra={"session_id": body["session_id"]})
    started = time.monotonic()
    submit_with_retries(client, body)
    try:
        for event, payload in client.stream(outcome.task_id):
            if event == "token":
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
        client.cancel(outcome.task_id)
        outcome.finish_reason = "canceled"
        outcome.seconds = time.monotonic() - started
        raise Interrupted(outcome) from None
    outcome.seconds = time.monotonic() - started
    return outcome


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


def run_batch(
    client_factory: Callable[[], OrchClient],
    prompts: list[str],
    options: RunOptions,
    capabilities: dict[str, Any],
    *,
    concurrency: int | None,
    progress: Callable[[Outcome], None],
) -> list[Outcome]:
    _, _, pool = pick_pool(capabilities, options.model_ref)
    workers = concurrency or safe_concurrency(pool)

    def one(prompt: str) -> Outcome:
        with client_factory() as client:
            try:
                outcome = run_one(client, prompt, options, capabilities, None)
            except OrchError as exc:
                outcome = Outcome("", prompt, error=exc.envelope)
        progress(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=workers) as pool_executor:
        return list(pool_executor.map(one, prompts))
