"""A deterministic in-process engine for fast unit tests only.

Behaviour comes from a handler (request -> async stream of events), so a test states exactly
what the "engine" does; the default handler emits seed-determined words. The adapter counts
concurrent generations so tests can prove the orchestrator never over-subscribes slots.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Callable

from orchestratord.adapters.base import (
    EngineAdapter,
    EngineInfo,
    GenerationRequest,
    SlotState,
    StreamEnd,
    StreamEvent,
    TokenChunk,
)

Handler = Callable[[GenerationRequest], AsyncGenerator[StreamEvent, None]]

_WORDS = ("alpha", "beta", "gamma", "delta", "omega", "llama", "queue", "slot", "token", "seed")


def seeded_words(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return [f" {rng.choice(_WORDS)}" for _ in range(count)]


def word_handler(token_delay_s: float = 0.0) -> Handler:
    async def handler(request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        words = seeded_words(request.seed, request.max_tokens)
        for word in words:
            await asyncio.sleep(token_delay_s)
            yield TokenChunk(word)
        yield StreamEnd("length", len(request.prompt.split()), 0, len(words), 0.0)

    return handler


class MockAdapter(EngineAdapter):
    engine = "mock"

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        slots: int = 2,
        ctx_per_slot: int = 2048,
        version: str = "mock-1",
    ) -> None:
        self.handler = handler or word_handler()
        self._slots = slots
        self._ctx = ctx_per_slot
        self._version = version
        self.active = 0
        self.max_active = 0
        self.started = 0
        self.healthy_flag = True

    async def healthy(self) -> bool:
        return self.healthy_flag

    async def info(self) -> EngineInfo:
        return EngineInfo("mock", self._version, "sha256:mock", self._slots, self._ctx)

    async def slots(self) -> list[SlotState]:
        return [SlotState(i, i < self.active) for i in range(self._slots)]

    async def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        self.active += 1
        self.started += 1
        self.max_active = max(self.max_active, self.active)
        try:
            async for event in self.handler(request):
                yield event
        finally:
            self.active -= 1

    async def metrics_text(self) -> str:
        return ""
