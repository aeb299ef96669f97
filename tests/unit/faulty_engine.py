"""A mock engine whose faults a test scripts: crash (connections drop, new ones are refused,
health fails) and hang (decodes stall, health goes unanswered)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from orchestratord.adapters.base import (
    EngineConnectionLost,
    EngineUnavailable,
    GenerationRequest,
    StreamEnd,
    StreamEvent,
    TokenChunk,
)
from orchestratord.adapters.mock import MockAdapter


class FaultyEngine(MockAdapter):
    def __init__(self, *, slots: int = 2, token_delay_s: float = 0.001) -> None:
        super().__init__(self._generate, slots=slots)
        self.token_delay_s = token_delay_s
        self.down = False
        self.connect_attempts = 0
        self._running = asyncio.Event()
        self._running.set()  # cleared while hung

    @property
    def hung(self) -> bool:
        return not self._running.is_set()

    def hang(self) -> None:
        self._running.clear()

    def unhang(self) -> None:
        self._running.set()

    async def healthy(self) -> bool:
        return not self.down and not self.hung

    async def _generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        self.connect_attempts += 1
        if self.down:
            raise EngineUnavailable("connection refused")
        for index in range(request.max_tokens):
            await self._running.wait()
            await asyncio.sleep(self.token_delay_s * (index % 3))
            if self.down:
                raise EngineConnectionLost("connection dropped mid-stream")
            yield TokenChunk(f" t{index}")
        yield StreamEnd("length", 1, 0, request.max_tokens, 1.0)
