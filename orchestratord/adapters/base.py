"""The worker contract every engine adapter implements (OC-ADAPT-5001).

An adapter maps one engine's native API onto: health, info (version, slots, model digest),
token counting, a streamed generation that is cancelled by closing it, and a metrics scrape.
Transport failures are translated here, at the boundary, into :class:`EngineError` subclasses
carrying the public error code; nothing above this layer sees an HTTP client exception.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal

from orchestratord.errors import ErrorCode

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class Sampling:
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repeat_penalty: float
    ignore_eos: bool


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt: str
    max_tokens: int
    seed: int
    sampling: Sampling
    reuse_kv: bool = True
    # The engine slot the orchestrator assigned; adapters that can pin a slot must use it.
    slot: int | None = None
    # Sent to the engine as X-Correlation-Id, so its own logs can be matched with ours.
    correlation_id: str | None = None


@dataclass(frozen=True, slots=True)
class TokenChunk:
    """A piece of text the engine released; it may carry more than one engine token when the
    engine holds bytes back to keep UTF-8 valid."""

    text: str


@dataclass(frozen=True, slots=True)
class StreamEnd:
    finish_reason: FinishReason
    tokens_in: int
    tokens_cached: int
    tokens_out: int
    decode_ms: float


@dataclass(frozen=True, slots=True)
class PromptProgress:
    """The engine's own report that it is working through the prompt (no text yet): a long
    prompt on a slow device is progress, not a stall (HARD-202)."""

    processed: int
    total: int


StreamEvent = TokenChunk | StreamEnd | PromptProgress


@dataclass(frozen=True, slots=True)
class EngineInfo:
    engine: str
    engine_version: str | None
    model_digest: str | None
    slots_total: int
    ctx_per_slot: int
    # The model file the engine says it serves (identity check); None if it does not say.
    model_path: str | None = None


@dataclass(frozen=True, slots=True)
class SlotState:
    id: int
    busy: bool


class EngineError(Exception):
    """An engine failure, translated at the adapter boundary.

    ``public_message`` is what a client may see (no addresses, no engine bodies); the
    exception's own text (``detail``) goes to the log with the task's correlation ID.
    ``engine_down`` says the engine itself could not be reached or dropped the connection,
    so the pool must stop dispatching until its engine answers again.
    """

    code: ErrorCode = ErrorCode.WORKER_RESET
    retriable: bool = True
    public_message = "the engine failed"
    engine_down = False

    def __init__(self, detail: str, *, public_message: str | None = None) -> None:
        super().__init__(detail)
        if public_message is not None:
            self.public_message = public_message

    @property
    def detail(self) -> str:
        return str(self)


class EngineUnavailable(EngineError):
    """The engine cannot be reached at all (process gone, connection refused): nothing ran."""

    code = ErrorCode.POOL_UNAVAILABLE
    public_message = "the engine is unavailable"
    engine_down = True


class EngineReset(EngineError):
    """The engine broke off a generation midway or answered nonsense."""

    code = ErrorCode.WORKER_RESET
    public_message = "the engine broke off the generation"


class EngineConnectionLost(EngineReset):
    """The engine dropped the connection mid-generation (it crashed or was killed)."""

    public_message = "the engine connection was lost"
    engine_down = True


class EngineAdapter(abc.ABC):
    engine: str
    # Longest text one token can cover, in bytes, once known (see models/vocab.py); lets
    # admission refuse a prompt that cannot fit before any tokenizer round trip.
    max_token_bytes: int | None = None

    @abc.abstractmethod
    async def healthy(self) -> bool:
        """True when the engine can take work now (model loaded)."""

    @abc.abstractmethod
    async def info(self) -> EngineInfo: ...

    @abc.abstractmethod
    async def slots(self) -> list[SlotState]: ...

    @abc.abstractmethod
    async def count_tokens(self, text: str) -> int: ...

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream a generation. Closing the iterator early (``aclose``) cancels it and returns
        only once the engine slot it used is idle again."""

    @abc.abstractmethod
    async def metrics_text(self) -> str:
        """The engine's own Prometheus exposition (empty if it has none)."""

    async def kv_usage_ratio(self) -> float | None:
        """Share of the engine's KV cache in use, 0..1, or None if it cannot tell."""
        return None

    async def evict(self, slot: int) -> bool:
        """Drop the prompt cache an engine slot holds; False if the engine cannot."""
        return False

    async def aclose(self) -> None:
        return None
