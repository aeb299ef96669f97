"""The Triton adapter on scripted engines speaking KServe v2 (the e2e test runs a real one)."""

from __future__ import annotations

from typing import Any

import pytest

from orchestratord.adapters.base import (
    EngineReset,
    GenerationRequest,
    Sampling,
    StreamEnd,
    TokenChunk,
)
from orchestratord.adapters.triton import TritonAdapter
from tests.unit.scripted_http import json_route, scripted_engine, sse_route

TRT_LLM_INPUTS = [
    {"name": n, "datatype": "BYTES" if n == "text_input" else "INT32", "shape": [-1, 1]}
    for n in ("text_input", "max_tokens", "random_seed", "temperature", "top_k", "stream")
]


def routes(inputs: list[dict[str, Any]], stream: Any) -> dict[tuple[str, str], Any]:
    return {
        ("GET", "/v2"): json_route({"name": "triton", "version": "2.51.0"}),
        ("GET", "/v2/models/ensemble"): json_route({"name": "ensemble", "inputs": inputs}),
        ("GET", "/v2/models/ensemble/ready"): json_route({}),
        ("POST", "/v2/models/ensemble/generate_stream"): stream,
    }


def request(max_tokens: int) -> GenerationRequest:
    return GenerationRequest("hi", max_tokens, 5, Sampling(0.7, 20, 0.9, 0.0, 1.0, False))


async def collect(adapter: TritonAdapter, req: GenerationRequest) -> list[Any]:
    return [event async for event in adapter.generate(req)]


@pytest.mark.req("ORCH-3058", "ORCH-3054", "OC-ADAPT-5001")
async def test_only_the_inputs_a_model_declares_are_sent_and_the_stream_maps() -> None:
    events = [{"model_name": "ensemble", "text_output": t} for t in (" a", " b", " c")]
    async with scripted_engine(routes(TRT_LLM_INPUTS, sse_route(events))) as engine:
        adapter = TritonAdapter(engine.url, model="ensemble", slots=2)
        try:
            assert await adapter.healthy()
            info = await adapter.info()
            assert (info.engine, info.engine_version, info.slots_total) == (
                "triton",
                "triton 2.51.0",
                2,
            )
            assert await adapter.count_tokens("héllo") == 8  # UTF-8 bytes + 2: an upper bound
            full = await collect(adapter, request(3))
            short = await collect(adapter, request(5))
        finally:
            await adapter.aclose()
    assert full == [
        TokenChunk(" a"),
        TokenChunk(" b"),
        TokenChunk(" c"),
        StreamEnd("length", 0, 0, 3, 0.0),
    ]
    assert short[-1] == StreamEnd("stop", 0, 0, 3, 0.0)  # ended before max_tokens
    body = engine.bodies("/v2/models/ensemble/generate_stream")[0]
    assert body == {
        "text_input": "hi",
        "max_tokens": 3,
        "random_seed": 5,
        "temperature": 0.7,
        "top_k": 20,
        "stream": True,
    }


@pytest.mark.req("ORCH-3058", "OC-ADAPT-5011", "HARD-211")
async def test_a_model_without_text_input_or_a_failing_stream_is_an_engine_error() -> None:
    image_model = [{"name": "pixels", "datatype": "FP32", "shape": [-1, 3]}]
    async with scripted_engine(routes(image_model, sse_route([]))) as engine:
        adapter = TritonAdapter(engine.url, model="ensemble", slots=1)
        with pytest.raises(EngineReset, match="no text_input"):
            await adapter.info()
        await adapter.aclose()
    failing = sse_route([{"text_output": " a"}, {"error": "model crashed"}])
    async with scripted_engine(routes(TRT_LLM_INPUTS, failing)) as engine:
        adapter = TritonAdapter(engine.url, model="ensemble", slots=1)
        with pytest.raises(EngineReset, match="model crashed") as raised:
            await collect(adapter, request(3))
        await adapter.aclose()
    assert not raised.value.engine_down  # the request failed; the server is fine (HARD-211)
    async with scripted_engine(
        {("GET", "/v2/models/ensemble/ready"): json_route({}, 400)}
    ) as engine:
        adapter = TritonAdapter(engine.url, model="ensemble", slots=1)
        assert not await adapter.healthy()  # the server answers, the model is not ready
        await adapter.aclose()
