"""The vLLM (OpenAI-compatible) adapter against a scripted engine speaking vLLM's protocol."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from orchestratord.adapters.base import (
    EngineConnectionLost,
    EngineReset,
    EngineUnavailable,
    GenerationRequest,
    Sampling,
    StreamEnd,
    TokenChunk,
)
from orchestratord.adapters.openai_compat import OpenAICompatAdapter
from orchestratord.replicas.engine_process import free_loopback_port
from tests.unit.scripted_http import json_route, scripted_engine, sse_route

MODELS = {"object": "list", "data": [{"id": "meta-llama/Llama-3.1-8B", "max_model_len": 8192}]}


def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    return {
        "object": "text_completion",
        "choices": [{"index": 0, "text": text, "finish_reason": finish}],
    }


# vLLM sends the usage in a chunk of its own, with no choices, before [DONE].
VLLM_STREAM = [
    chunk(" Once"),
    chunk(" upon"),
    chunk("", "length"),
    {
        "choices": [],
        "usage": {
            "prompt_tokens": 5,
            "completion_tokens": 2,
            "prompt_tokens_details": {"cached_tokens": 3},
        },
    },
    b"[DONE]",
]


def request(max_tokens: int = 2, repeat_penalty: float = 1.0) -> GenerationRequest:
    return GenerationRequest(
        prompt="hello",
        max_tokens=max_tokens,
        seed=7,
        sampling=Sampling(0.8, 40, 0.95, 0.05, repeat_penalty, True),
    )


def routes(stream: Any) -> dict[tuple[str, str], Any]:
    return {
        ("GET", "/health"): json_route({}),
        ("GET", "/v1/models"): json_route(MODELS),
        ("GET", "/version"): json_route({"version": "0.6.3"}),
        ("POST", "/tokenize"): json_route(
            {"count": 4, "tokens": [1, 2, 3, 4], "max_model_len": 8192}
        ),
        ("POST", "/v1/completions"): stream,
        ("GET", "/metrics"): json_route("vllm:num_requests_running 0"),
    }


async def collect(adapter: OpenAICompatAdapter, req: GenerationRequest) -> list[Any]:
    return [event async for event in adapter.generate(req)]


@pytest.mark.req("ORCH-3056", "ORCH-3054", "OC-ADAPT-5001")
async def test_info_tokens_and_a_stream_map_onto_the_worker_contract(tmp_path: Path) -> None:
    model_file = tmp_path / "model.gguf"
    model_file.write_bytes(b"weights")
    async with scripted_engine(routes(sse_route(VLLM_STREAM))) as engine:
        adapter = OpenAICompatAdapter(engine.url, slots=4, model_path=model_file, auth_token="k")
        try:
            assert await adapter.healthy()
            info = await adapter.info()
            assert (info.engine, info.engine_version, info.slots_total, info.ctx_per_slot) == (
                "vllm",
                "vllm 0.6.3",
                4,
                8192,
            )
            assert info.model_digest == "sha256:" + hashlib.sha256(b"weights").hexdigest()
            assert await adapter.count_tokens("hello there") == 4
            events = await collect(adapter, request(repeat_penalty=1.1))
        finally:
            await adapter.aclose()
    assert events == [TokenChunk(" Once"), TokenChunk(" upon"), StreamEnd("length", 5, 3, 2, 0.0)]
    (body,) = engine.bodies("/v1/completions")
    assert body["model"] == "meta-llama/Llama-3.1-8B" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["seed"], body["max_tokens"], body["top_k"], body["min_p"]) == (7, 2, 40, 0.05)
    assert body["repetition_penalty"] == 1.1 and body["ignore_eos"] is True
    assert all(h.get("Authorization") == "Bearer k" for *_, h in engine.requests)


@pytest.mark.req("ORCH-3056", "OC-ADAPT-5011")
async def test_stream_failures_become_the_contract_errors() -> None:
    cut = sse_route(VLLM_STREAM, drop_after=1)
    async with scripted_engine(routes(cut)) as engine:
        adapter = OpenAICompatAdapter(engine.url, slots=1)
        with pytest.raises(EngineConnectionLost):
            await collect(adapter, request())
        await adapter.aclose()
    no_done = sse_route(VLLM_STREAM[:-1])
    async with scripted_engine(routes(no_done)) as engine:
        adapter = OpenAICompatAdapter(engine.url, slots=1)
        with pytest.raises(EngineConnectionLost, match="without \\[DONE\\]"):
            await collect(adapter, request())
        await adapter.aclose()
    async with scripted_engine(routes(json_route({"error": "bad"}, status=400))) as engine:
        adapter = OpenAICompatAdapter(engine.url, slots=1)
        with pytest.raises(EngineReset) as refused:
            await collect(adapter, request())
        assert refused.value.public_message == "the engine refused the request (HTTP 400)"
        await adapter.aclose()
    adapter = OpenAICompatAdapter(f"http://127.0.0.1:{free_loopback_port()}", slots=1)
    with pytest.raises(EngineUnavailable):
        await adapter.info()
    assert not await adapter.healthy()
    await adapter.aclose()


@pytest.mark.req("ORCH-3056")
async def test_a_server_without_version_or_models_is_handled() -> None:
    plain = routes(sse_route(VLLM_STREAM))
    del plain[("GET", "/version")]
    async with scripted_engine(plain) as engine:
        adapter = OpenAICompatAdapter(engine.url, slots=1)
        assert (await adapter.info()).engine_version is None
        await adapter.aclose()
    empty = routes(sse_route(VLLM_STREAM))
    empty[("GET", "/v1/models")] = json_route({"object": "list", "data": []})
    async with scripted_engine(empty) as engine:
        adapter = OpenAICompatAdapter(engine.url, slots=1)
        with pytest.raises(EngineConnectionLost, match="no model"):
            await adapter.info()
        await adapter.aclose()
