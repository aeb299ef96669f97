"""The TGI adapter. TGI cannot run here: these tests use scripted engines and the protocol
fake (``xtask/fakes/fake_tgi.py``) built from TGI's documented API, not a real TGI server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from orchestratord.adapters.base import (
    EngineConnectionLost,
    EngineReset,
    GenerationRequest,
    Sampling,
    StreamEnd,
    TokenChunk,
)
from orchestratord.adapters.tgi import TgiAdapter
from tests.unit.conftest import AUTH, collect_stream, task_body
from tests.unit.scripted_http import json_route, scripted_engine, sse_route
from xtask.fakes.fake_tgi import build_app, seeded_tokens


@asynccontextmanager
async def protocol_fake() -> AsyncIterator[str]:
    runner = web.AppRunner(build_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def request(temperature: float = 0.8, max_tokens: int = 5) -> GenerationRequest:
    return GenerationRequest(
        prompt="tell me a story",
        max_tokens=max_tokens,
        seed=99,
        sampling=Sampling(temperature, 40, 0.95, 0.05, 1.0, False),
    )


async def collect(adapter: TgiAdapter, req: GenerationRequest) -> list[Any]:
    return [event async for event in adapter.generate(req)]


@pytest.mark.req("ORCH-3057", "ORCH-3054", "OC-ADAPT-5001")
async def test_against_the_tgi_protocol_fake_info_tokens_and_stream() -> None:
    async with protocol_fake() as url:
        adapter = TgiAdapter(url, slots=4)
        try:
            assert await adapter.healthy()
            info = await adapter.info()
            assert (info.engine, info.engine_version, info.slots_total, info.ctx_per_slot) == (
                "tgi",
                "tgi 3.0.1-protocol-fake",
                4,
                4096,
            )
            assert await adapter.count_tokens("tell me a story") == 4
            events = await collect(adapter, request())
            again = await collect(adapter, request())
            assert "tgi_request_count" in await adapter.metrics_text()
        finally:
            await adapter.aclose()
    words = seeded_tokens(99, 5)
    # TGI names the prompt's tokens only when asked for decoder input details: 0 here, and
    # the runner counts the prompt with /tokenize instead (test below).
    assert events == [*(TokenChunk(w) for w in words), StreamEnd("length", 0, 0, 5, 0.0)]
    assert again == events


@pytest.mark.req("ORCH-3057")
async def test_greedy_sampling_is_sent_as_tgi_takes_it() -> None:
    async with protocol_fake() as url:
        adapter = TgiAdapter(url, slots=1)
        events = await collect(adapter, request(temperature=0.0, max_tokens=2))
        await adapter.aclose()
    assert isinstance(events[-1], StreamEnd)  # the fake refuses temperature 0 with a 422


@pytest.mark.req("ORCH-3057", "OC-ADAPT-5011")
async def test_special_tokens_are_hidden_and_failures_are_contract_errors() -> None:
    eos = {"token": {"id": 2, "text": "</s>", "special": True}, "details": None}
    word = {"token": {"id": 5, "text": " hi", "special": False}, "details": None}
    final = {
        "token": {"id": 2, "text": "", "special": True},
        "details": {"finish_reason": "eos_token", "generated_tokens": 2},
    }
    routes: dict[tuple[str, str], Any] = {
        ("POST", "/generate_stream"): sse_route([word, eos, final])
    }
    async with scripted_engine(routes) as engine:
        adapter = TgiAdapter(engine.url, slots=1)
        events = await collect(adapter, request())
        await adapter.aclose()
    assert events == [TokenChunk(" hi"), StreamEnd("stop", 0, 0, 2, 0.0)]
    failing = {
        ("POST", "/generate_stream"): sse_route(
            [word, {"error": "CUDA out of memory", "error_type": "generation"}]
        )
    }
    async with scripted_engine(failing) as engine:
        adapter = TgiAdapter(engine.url, slots=1)
        with pytest.raises(EngineReset, match="CUDA out of memory") as raised:
            await collect(adapter, request())
        await adapter.aclose()
    assert not raised.value.engine_down  # one request failed, not the engine
    cut = {("POST", "/generate_stream"): sse_route([word, word]), ("GET", "/info"): json_route({})}
    async with scripted_engine(cut) as engine:
        adapter = TgiAdapter(engine.url, slots=1)
        with pytest.raises(EngineConnectionLost, match="without details"):
            await collect(adapter, request())
        await adapter.aclose()


@pytest.mark.req("HARD-208", "HOME-402")
async def test_a_tgi_task_is_charged_its_prompt_counted_by_the_engine(
    conductor_for: Any,
) -> None:
    async with protocol_fake() as url:
        adapter = TgiAdapter(url, slots=2)
        budgets = {"budgets": {"tokens": 1000}}
        tgi = {"engine": "tgi", "endpoints": [{"url": url}]}
        async with conductor_for(adapter, sessions=budgets, **tgi) as (orch, conductor):
            body = task_body(engine="tgi", prompt="hello there friend", max_tokens=5)
            admitted = await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH)
            frames = await collect_stream(conductor, body["task_id"])
            session = orch.sessions.find(body["session_id"])
        await adapter.aclose()
    assert admitted.status_code == 202 and frames[-1][0] == "end"
    assert session is not None and session.budget is not None
    assert session.budget.tokens_used == 3 + 5  # /tokenize's 3 words, not 0


@pytest.mark.req("HARD-211")
async def test_a_tgi_request_error_ends_the_task_not_the_replica(conductor_for: Any) -> None:
    word = {"token": {"id": 5, "text": " hi", "special": False}, "details": None}
    routes: dict[tuple[str, str], Any] = {
        ("POST", "/generate_stream"): sse_route(
            [word, {"error": "Input validation error: too long", "error_type": "validation"}]
        ),
        ("GET", "/health"): json_route({}),
        ("GET", "/info"): json_route({"model_id": "m", "max_total_tokens": 4096}),
    }
    async with scripted_engine(routes) as engine:
        adapter = TgiAdapter(engine.url, slots=2)
        tgi = {"engine": "tgi", "endpoints": [{"url": engine.url}]}
        async with conductor_for(adapter, **tgi) as (orch, conductor):
            body = task_body(engine="tgi")
            await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH)
            frames = await collect_stream(conductor, body["task_id"])
            ready = orch.pools["p1"].ready
        await adapter.aclose()
    assert frames[-1][0] == "error" and frames[-1][1]["code"] == "WORKER_RESET"
    assert "validation error" in frames[-1][1]["message"]
    assert ready  # the replica keeps serving: one request failed, not the engine
