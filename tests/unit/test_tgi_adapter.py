"""The TGI adapter. TGI cannot run here: these tests use scripted engines and the protocol
fake (``xtask/fake_tgi.py``) built from TGI's documented API, not a real TGI server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from orchestratord.adapters.base import (
    EngineConnectionLost,
    GenerationRequest,
    Sampling,
    StreamEnd,
    TokenChunk,
)
from orchestratord.adapters.tgi import TgiAdapter
from tests.unit.scripted_http import json_route, scripted_engine, sse_route
from xtask.fake_tgi import build_app, seeded_tokens


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
    assert events == [*(TokenChunk(w) for w in words), StreamEnd("length", 4, 0, 5, 0.0)]
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
        with pytest.raises(EngineConnectionLost, match="CUDA out of memory"):
            await collect(adapter, request())
        await adapter.aclose()
    cut = {("POST", "/generate_stream"): sse_route([word, word]), ("GET", "/info"): json_route({})}
    async with scripted_engine(cut) as engine:
        adapter = TgiAdapter(engine.url, slots=1)
        with pytest.raises(EngineConnectionLost, match="without details"):
            await collect(adapter, request())
        await adapter.aclose()
