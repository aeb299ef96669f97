"""One accepted task and its append-only log of SSE frames.

A task goes QUEUED → RUNNING → DONE (or QUEUED → DONE), and the log ends with exactly one
terminal frame, ``end`` or ``error``: every ``finish_*`` after the first is a no-op. The
runner appends frames; one stream subscriber reads them by cursor. Everything happens on the
event loop, so appending, cancelling and reading never interleave mid-operation; that is
what makes cancel race-free (HOME-304): :meth:`Task.cancel_output` drops the frames the
subscriber has not been handed yet and closes the log in the same synchronous step.

Frames are kept as their encoded bytes only (a token frame is ~45 bytes), and a finished
log nobody is reading is joined into one block, so retention can be bounded in bytes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from enum import StrEnum
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

from orchestratord.adapters.base import Sampling
from orchestratord.core.queue import Priority
from orchestratord.core.request import Determinism, TaskRequest

_TOKEN_PREFIX = b"event: token\n"
# Objects a retained task holds besides its frames, roughly (task, request fields, handles).
TASK_OVERHEAD_BYTES = 1024


class TaskState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


def encode_frame(event: str, payload: dict[str, Any]) -> bytes:
    """One SSE event: one JSON object on one ``data:`` line (ASCII-escaped, so any text the
    engine sends stays valid on the wire)."""
    return b"event: %s\ndata: %s\n\n" % (
        event.encode(),
        json.dumps(payload, separators=(",", ":")).encode(),
    )


def encode_token(text: str, index: int) -> bytes:
    # The relay's hot path: one C-level string escape instead of a generic json.dumps.
    return b'event: token\ndata: {"t":%s,"i":%d}\n\n' % (_json_str(text).encode(), index)


class Burst:
    """Several frames sent in one write; Falcon sends whatever ``serialize()`` returns."""

    __slots__ = ("raw",)

    def __init__(self, frames: list[bytes]) -> None:
        self.raw = b"".join(frames)

    def serialize(self, handler: object = None) -> bytes:
        return self.raw


class Task:
    def __init__(  # noqa: PLR0915 - one plain attribute per fact, flat for the hot path
        self,
        request: TaskRequest,
        pool_id: str,
        *,
        seed: int,
        sampling: Sampling,
        prompt_tokens: int | None,
        correlation_id: str,
    ) -> None:
        self.id = str(request.task_id)
        self.session_id = str(request.session_id)
        self.priority: Priority = request.priority
        self.strict = request.determinism is Determinism.STRICT
        self.ctx = request.ctx
        self.max_tokens = request.max_tokens
        self.expected_tokens = request.expected_tokens
        self.reuse_kv = request.kv_hint is None or request.kv_hint.value == "reuse"
        self.prompt: str = request.prompt or ""  # dropped once the task is done
        self.pool_id = pool_id
        self.seed = seed
        self.sampling = sampling
        self.prompt_tokens = prompt_tokens
        self.correlation_id = correlation_id
        self.admitted_at = time.monotonic()
        self.received_at = self.admitted_at  # set earlier by admission: when checks began
        self.trace_context: Any = None  # the task span's context, when tracing is on
        self.deadline_at = self.admitted_at + request.deadline_ms / 1000
        self.started_at: float | None = None
        self.busy_slots = 0  # the pool's busy slots when it started (itself included)
        self.last_progress = self.admitted_at
        self.finished_at: float | None = None
        self.state = TaskState.QUEUED
        self.frames: list[bytes] = []
        self.frame_bytes = 0
        self.tokens_out = 0
        self.terminal_event: str | None = None
        self.terminal: dict[str, Any] | None = None
        self.subscribed = False
        self.delivered = 0
        self.attempts = 0  # how often the task was handed to an engine
        self.keep_alive_ms = request.keep_alive_ms  # for an on-demand pool, after this task
        self.told: tuple[Any, ...] | None = None  # the last queued frame's figures (RES-201)
        self.told_loading_at = 0.0
        self.tokens_in: int | None = None  # prompt tokens the engine reported
        self.kv_warm = False  # the engine reused cached prompt tokens
        self.runner: asyncio.Task[None] | None = None
        self.slot_id: int | None = None
        self.replica_id: str | None = None  # the replica it runs (or last ran) on
        self.last_slot_id: int | None = None  # the engine slot it ran in (kept after release)
        # Session affinity: where the session's prompt cache is; whether the task got there.
        self.preferred_replica: str | None = None
        self.preferred_slot: int | None = None
        self.affinity_kept = True
        self.cache_owned = False  # its slot last ran this task's session
        # Session budgets (core/budgets.py): the reserving session's budget and what this
        # task reserved of it; the session itself (core/sessions.py) once it is admitted.
        self.budget: Any = None
        self.budget_reservation: tuple[int, float] = (0, 0.0)
        self.session: Any = None
        self.deadline_timer: asyncio.TimerHandle | None = None
        self.on_finish: Callable[[Task], None] | None = None
        self._wakeup = asyncio.Event()
        self._terminal_waiter: asyncio.Future[None] | None = None

    @property
    def finished(self) -> bool:
        return self.terminal is not None

    @property
    def outcome(self) -> str | None:
        """finish_reason of an ``end``, code of an ``error``; None while unfinished."""
        if self.terminal is None:
            return None
        return str(self.terminal.get("finish_reason") or self.terminal.get("code"))

    def retained_bytes(self) -> int:
        return self.frame_bytes + TASK_OVERHEAD_BYTES

    def decode_ms(self) -> int:
        if self.started_at is None:
            return 0
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return round((end - self.started_at) * 1000)

    def _append(self, frame: bytes) -> None:
        self.frames.append(frame)
        self.frame_bytes += len(frame)
        self._wakeup.set()

    def append_token(self, text: str) -> None:
        if self.terminal is not None:
            return
        self._append(encode_token(text, self.tokens_out))
        self.tokens_out += 1
        self.last_progress = time.monotonic()

    def append_metrics(self, payload: dict[str, Any]) -> None:
        if self.terminal is None:
            self._append(encode_frame("metrics", payload))

    def append_event(self, event: str, payload: dict[str, Any]) -> None:
        """A non-terminal frame: ``started``, or while waiting ``queued`` and ``loading``."""
        if self.terminal is None:
            self._append(encode_frame(event, payload))

    def finish_end(self, finish_reason: str) -> None:
        if self.terminal is not None:
            return
        self._close()
        payload = {
            "tokens_out": self.tokens_out,
            "decode_ms": self.decode_ms(),
            "finish_reason": finish_reason,
        }
        self._terminate("end", payload)

    def finish_error(self, code: str, message: str, engine: str | None = None) -> None:
        if self.terminal is not None:
            return
        self._close()
        payload: dict[str, Any] = {"code": code, "message": message}
        if engine is not None:
            payload["engine"] = engine
        self._terminate("error", payload)

    def cancel_output(self, delivered: int | None = None) -> None:
        """Close the log as canceled, keeping only what the subscriber already received.

        ``delivered`` is the cut point of a subscriber that just went away; by default the
        attached subscriber's (nothing is cut when nobody is attached).
        """
        if self.terminal is not None:
            return
        cut = delivered if delivered is not None else (self.delivered if self.subscribed else None)
        if cut is not None and cut < len(self.frames):
            del self.frames[cut:]
            self.frame_bytes = sum(len(f) for f in self.frames)
            self.tokens_out = sum(1 for f in self.frames if f.startswith(_TOKEN_PREFIX))
        self.finish_end("canceled")

    def _close(self) -> None:
        self.state = TaskState.DONE
        self.finished_at = time.monotonic()
        self.prompt = ""
        if self.deadline_timer is not None:
            self.deadline_timer.cancel()
            self.deadline_timer = None

    def _terminate(self, event: str, payload: dict[str, Any]) -> None:
        self.terminal_event = event
        self.terminal = payload
        self._append(encode_frame(event, payload))
        waiter = self._terminal_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if not self.subscribed:
            self.compact()
        if self.on_finish is not None:
            self.on_finish(self)

    def compact(self) -> None:
        """Join a finished log into one block (replay sends it whole)."""
        if self.terminal is not None and len(self.frames) > 1 and not self.subscribed:
            self.frames = [b"".join(self.frames)]

    def detach(self) -> None:
        self.subscribed = False
        self.compact()

    async def wait_for_terminal(self, timeout_s: float) -> None:
        """Sleep up to ``timeout_s``; wake early when the terminal frame is appended."""
        if self.terminal is not None:
            return
        if self._terminal_waiter is None or self._terminal_waiter.done():
            self._terminal_waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._terminal_waiter)
        except TimeoutError:
            return

    async def wait_for_frames(self, cursor: int, timeout_s: float) -> None:
        """Return when a frame beyond ``cursor`` exists or ``timeout_s`` passed."""
        if cursor < len(self.frames):
            return
        self._wakeup.clear()
        try:
            async with asyncio.timeout(timeout_s):
                await self._wakeup.wait()
        except TimeoutError:
            return
