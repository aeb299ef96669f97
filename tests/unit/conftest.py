"""Fixtures for in-process tests: an Orchestrator whose only pool runs the mock engine."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from orchestratord.adapters.base import (
    EngineAdapter,
    GenerationRequest,
    Sampling,
    StreamEnd,
    StreamEvent,
    TokenChunk,
)
from orchestratord.adapters.mock import Handler, MockAdapter, seeded_words
from orchestratord.app import Orchestrator
from orchestratord.config import (
    CatalogConfig,
    Config,
    GpuConfig,
    OutboundConfig,
    PoolConfig,
    QueueConfig,
    ServerConfig,
    SessionsConfig,
    ToolsConfig,
)
from orchestratord.core.request import TaskRequest
from orchestratord.core.task import Task
from tests.contract_schemas import assert_frames_match
from tests.sse import SSEParser
from tests.unit.standin_resolver import StandInResolver
from xtask.fakes.live_server import task_body as live_task_body

TOKEN = "unit-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "test/mock-model"


def task_body(**overrides: Any) -> dict[str, Any]:
    """A valid task for the mock pool; a None value removes the field."""
    body = live_task_body(model_ref=MODEL, ctx=256, seed=7, prompt="hello there", max_tokens=8)
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def make_config(tmp_path: Path, **pool: Any) -> Config:
    server = pool.pop("server", {})
    queue = pool.pop("queue", {})
    gpus = pool.pop("gpus", {})
    catalog = pool.pop("catalog", {})
    tools = pool.pop("tools", {})
    outbound = pool.pop("outbound", {})
    sessions = pool.pop("sessions", {})
    pool_config = PoolConfig(
        id="p1",
        model_ref=pool.pop("model_ref", MODEL),
        model_path=pool.pop("model_path", tmp_path / "unused.gguf"),
        slots=pool.pop("slots", 2),
        ctx_max=pool.pop("ctx_max", 512),
        queue=QueueConfig(**{"capacity": 2, **queue}),
        **pool,
    )
    # The start-up self-test decodes on the engine; tests that count the mock engine's
    # generations leave it out, tests/unit/test_self_test.py covers it.
    server.setdefault("engine_self_test", False)
    return Config(
        server=ServerConfig(**server),
        gpus=GpuConfig(**gpus),
        catalog=CatalogConfig(**catalog),
        tools=ToolsConfig(**tools),
        outbound=OutboundConfig(**outbound),
        sessions=SessionsConfig(**sessions),
        pools=[pool_config],
        state_dir=tmp_path / "state",
        cache_dir=tmp_path / "c",
    )


def new_task(tokens: int = 0) -> Task:
    """A task outside any pool, with ``tokens`` token frames in its log."""
    request = TaskRequest.model_validate_json(json.dumps(task_body()))
    task = Task(
        request,
        "p1",
        seed=1,
        sampling=Sampling(0.8, 40, 0.95, 0.05, 1.0, False),
        prompt_tokens=None,
        correlation_id="c",
    )
    for n in range(tokens):
        task.append_token(f" w{n}")
    return task


@pytest.fixture
def conductor_for(tmp_path: Path) -> Callable[..., Any]:
    """Build (orchestrator, conductor) for a mock adapter; use as ``async with``."""

    class _Ctx:
        def __init__(
            self,
            adapter: EngineAdapter | list[EngineAdapter] | None = None,
            *,
            config: Config | None = None,
            inventory: Any = None,
            resolver: Any = None,
            **pool: Any,
        ) -> None:
            self.adapter = adapter or MockAdapter()
            self.orch = Orchestrator(
                config or make_config(tmp_path, **pool),
                token=TOKEN,
                adapters={"p1": self.adapter},
                inventory=inventory,
                resolver=resolver if resolver is not None else StandInResolver(),
            )
            self.conductor = falcon.testing.ASGIConductor(self.orch.app)

        async def __aenter__(self) -> tuple[Orchestrator, falcon.testing.ASGIConductor]:
            await self.conductor.__aenter__()
            return self.orch, self.conductor

        async def __aexit__(self, *exc: object) -> None:
            await self.conductor.__aexit__(*exc)

    return _Ctx


# Mutation runs (xtask mutate) shorten it: a mutant that breaks a stream fails sooner.
STREAM_TIMEOUT_S = float(os.environ.get("LLORCH_TEST_STREAM_TIMEOUT_S", "10"))


async def chunks(result: Any, timeout_s: float = STREAM_TIMEOUT_S) -> AsyncIterator[bytes]:
    """Body chunks of a streamed test result as they arrive (bounded in time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        data = await result.stream.read()
        if data:
            yield data
        else:
            await asyncio.sleep(0.002)
    raise TimeoutError("stream produced no terminal frame in time")


async def collect_stream(conductor: falcon.testing.ASGIConductor, task_id: str) -> list[Any]:
    parser = SSEParser()
    async with conductor.simulate_get_stream(f"/v1/tasks/{task_id}/stream", headers=AUTH) as sr:
        async for chunk in chunks(sr):
            for event, _ in parser.feed(chunk):
                if event in ("end", "error"):
                    assert_frames_match(parser.frames)
                    return parser.frames
    return parser.frames


def held_handler(release: asyncio.Event, first_tokens: int = 1) -> Handler:
    """Emit ``first_tokens`` tokens, then hold the slot until ``release`` is set."""

    async def handler(request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        words = seeded_words(request.seed, request.max_tokens)
        for index, word in enumerate(words):
            if index == first_tokens:
                await release.wait()
            yield TokenChunk(word)
        yield StreamEnd("length", 2, 0, len(words), 1.0)

    return handler
