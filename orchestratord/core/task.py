"""One accepted task and its append-only log of SSE frames.

The runner appends frames; one stream subscriber reads them by cursor. Everything happens on
the event loop, so appending, cancelling and reading never interleave mid-operation; that is
what makes cancel race-free (HOME-304): :meth:`Task.cancel_output` drops the frames the
subscriber has not been handed yet and closes the log in the same synchronous step, so no
token frame can be emitted after it.
"""

from __future__ import annotations

import asyncio
import json
import time
from enum import StrEnum
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

from orchestratord.adapters.base import Sampling
from orchestratord.core.queue import Priority
from orchestratord.core.request import TaskRequest


class TaskState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


class Frame:
    """A pre-serialized SSE event: one JSON object on one ``data:`` line (ASCII-escaped, so
    any text the engine sends stays valid on the wire)."""

    __slots__ = ("event", "payload", "raw")

    def __init__(self, event: str, payload: dict[str, Any], raw: bytes | None = None) -> None:
        self.event = event
        self.payload = payload
        if raw is None:
            data = json.dumps(payload, separators=(",", ":"))
            raw = f"event: {event}\ndata: {data}\n\n".encode()
        self.raw = raw

    @classmethod
    def token(cls, text: str, index: int) -> Frame:
        # The relay's hot path: one C-level string escape instead of a generic json.dumps.
        raw = b'event: token\ndata: {"t":%s,"i":%d}\n\n' % (_json_str(text).encode(), index)
        return cls("token", {"t": text, "i": index}, raw)


class Burst:
    """Several frames sent in one write; Falcon sends whatever ``serialize()`` returns."""

    __slots__ = ("raw",)

    def __init__(self, frames: list[Frame]) -> None:
        self.raw = b"".join(frame.raw for frame in frames)

    def serialize(self, handler: object = None) -> bytes:
        return self.raw


class Task:
    def __init__(
        self,
        request: TaskRequest,
        pool_id: str,
        *,
        seed: int,
        sampling: Sampling,
        prompt_tokens: int | None,
        correlation_id: str,
    ) -> None:
        self.request = request
        self.id = str(request.task_id)
        self.pool_id = pool_id
        self.seed = seed
        self.sampling = sampling
        self.prompt_tokens = prompt_tokens
        self.correlation_id = correlation_id
        self.admitted_at = time.monotonic()
        self.deadline_at = self.admitted_at + request.deadline_ms / 1000
        self.started_at: float | None = None
        self.last_progress = self.admitted_at
        self.finished_at: float | None = None
        self.state = TaskState.QUEUED
        self.frames: list[Frame] = []
        self.tokens_out = 0
        self.terminal: Frame | None = None
        self.subscribed = False
        self.delivered = 0
        self.runner: asyncio.Task[None] | None = None
        self.slot_id: int | None = None
        self._wakeup = asyncio.Event()

    @property
    def priority(self) -> Priority:
        return self.request.priority

    @property
    def finished(self) -> bool:
        return self.terminal is not None

    def decode_ms(self) -> int:
        if self.started_at is None:
            return 0
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return round((end - self.started_at) * 1000)

    def _append(self, frame: Frame) -> None:
        self.frames.append(frame)
        self._wakeup.set()

    def append_token(self, text: str) -> bool:
        if self.terminal is not None:
            return False
        self._append(Frame.token(text, self.tokens_out))
        self.tokens_out += 1
        self.last_progress = time.monotonic()
        return True

    def append_metrics(self, payload: dict[str, Any]) -> None:
        if self.terminal is None:
            self._append(Frame("metrics", payload))

    def finish_end(self, finish_reason: str, decode_ms: int | None = None) -> bool:
        if self.terminal is not None:
            return False
        self._close()
        payload = {
            "tokens_out": self.tokens_out,
            "decode_ms": self.decode_ms() if decode_ms is None else decode_ms,
            "finish_reason": finish_reason,
        }
        self.terminal = Frame("end", payload)
        self._append(self.terminal)
        return True

    def finish_error(self, code: str, message: str, engine: str | None = None) -> bool:
        if self.terminal is not None:
            return False
        self._close()
        payload: dict[str, Any] = {"code": code, "message": message}
        if engine is not None:
            payload["engine"] = engine
        self.terminal = Frame("error", payload)
        self._append(self.terminal)
        return True

    def cancel_output(self) -> bool:
        """Close the log as canceled, keeping only what the subscriber already received."""
        if self.terminal is not None:
            return False
        if self.subscribed and self.delivered < len(self.frames):
            del self.frames[self.delivered :]
            self.tokens_out = sum(1 for f in self.frames if f.event == "token")
        return self.finish_end("canceled")

    def _close(self) -> None:
        self.state = TaskState.DONE
        self.finished_at = time.monotonic()

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
