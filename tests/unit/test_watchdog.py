"""The idle watchdog and long prompts (HARD-202, ORCH-3016): working through the prompt is
progress, whether the engine reports it or not; a stall after the first token is not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from orchestratord.adapters.base import (
    GenerationRequest,
    PromptProgress,
    StreamEnd,
    StreamEvent,
    TokenChunk,
)
from orchestratord.adapters.mock import MockAdapter
from tests.unit.conftest import AUTH, collect_stream, task_body

IDLE = {"decode_idle_timeout_ms": 200}


def slow_prompt(seconds: float, *, reports: bool) -> MockAdapter:
    """An engine that works through the prompt for ``seconds`` before its first token,
    reporting its progress every 50 ms or saying nothing meanwhile."""

    async def handler(request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        steps = round(seconds / 0.05)
        for step in range(steps):
            await asyncio.sleep(0.05)
            if reports:
                yield PromptProgress(processed=(step + 1) * 64, total=steps * 64)
        yield TokenChunk(" done")
        yield StreamEnd("length", 13, 0, 1, 1.0)

    return MockAdapter(handler)


async def run(conductor_for: Any, adapter: MockAdapter, **server: Any) -> list[Any]:
    async with conductor_for(adapter, server={**IDLE, **server}) as (_, conductor):
        body = task_body(max_tokens=1, deadline_ms=60_000)
        admitted = await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH)
        assert admitted.status_code == 202
        return await collect_stream(conductor, body["task_id"])


@pytest.mark.req("HARD-202", "ORCH-3016")
async def test_reported_prompt_progress_keeps_a_long_prompt_alive(conductor_for: Any) -> None:
    """1 s of prompt work against a 200 ms idle limit and no per-token allowance: alive only
    because the engine reports each batch."""
    frames = await run(conductor_for, slow_prompt(1.0, reports=True), prompt_ms_per_token=0)
    assert frames[-1][0] == "end", frames[-1]


@pytest.mark.req("HARD-202", "ORCH-3016")
async def test_a_silent_prompt_gets_its_per_token_allowance(conductor_for: Any) -> None:
    """'hello there' is at most 13 tokens: at 100 ms a token the task may take 200 ms +
    1.3 s before its first token, so 0.6 s of silence is fine; without the allowance the
    same engine is ended by the watchdog."""
    allowed = await run(conductor_for, slow_prompt(0.6, reports=False), prompt_ms_per_token=100)
    ended = await run(conductor_for, slow_prompt(0.6, reports=False), prompt_ms_per_token=0)
    assert allowed[-1][0] == "end", allowed[-1]
    assert ended[-1][0] == "error" and ended[-1][1]["code"] == "DECODE_TIMEOUT"


@pytest.mark.req("HARD-202", "ORCH-3016", "OC-CORE-1022")
async def test_after_the_first_token_a_stall_is_a_stall(conductor_for: Any) -> None:
    never = asyncio.Event()

    async def stalls(request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        yield TokenChunk(" one")
        await never.wait()
        yield StreamEnd("length", 13, 0, 1, 1.0)

    frames = await run(conductor_for, MockAdapter(stalls), prompt_ms_per_token=10_000)
    assert frames[-1][0] == "error" and frames[-1][1]["code"] == "DECODE_TIMEOUT"
