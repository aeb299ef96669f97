"""A session's budget is charged the engine's own prompt count on every adapter (HARD-208),
through the whole server, against scripted engines speaking each protocol: llama.cpp's
``tokens_evaluated``, the OpenAI-compatible ``usage.prompt_tokens``, and for Triton (which
reports none) the adapter's count. Each engine reports a count other than what admission's
``/tokenize`` gave, so a charge from the wrong figure fails. TGI: test_tgi_adapter.py."""

from __future__ import annotations

from typing import Any

import pytest

from orchestratord.adapters.base import EngineAdapter
from orchestratord.adapters.llamacpp import LlamaCppAdapter
from orchestratord.adapters.openai_compat import OpenAICompatAdapter
from orchestratord.adapters.triton import TritonAdapter
from tests.unit import test_openai_adapter as vllm
from tests.unit import test_triton_adapter as triton
from tests.unit.conftest import AUTH, collect_stream, task_body
from tests.unit.scripted_http import json_route, scripted_engine, sse_route

PROMPT = "hello there friend"
LLAMA_PROPS = {"total_slots": 2, "default_generation_settings": {"n_ctx": 512},
               "build_info": "b1-test", "model_path": "m.gguf"}  # fmt: skip
LLAMA_ROUTES = {
    ("GET", "/health"): json_route({"status": "ok"}),
    ("GET", "/props"): json_route(LLAMA_PROPS),
    ("GET", "/slots"): json_route(
        [{"id": 0, "is_processing": False}, {"id": 1, "is_processing": False}]
    ),
    ("GET", "/metrics"): json_route({}, status=404),
    ("POST", "/tokenize"): json_route({"tokens": [1, 2, 3]}),
    ("POST", "/completion"): sse_route(
        [
            {"content": " hi", "stop": False},
            {
                "content": "",
                "stop": True,
                "tokens_evaluated": 7,
                "stop_type": "limit",
                "timings": {"predicted_n": 1, "prompt_n": 7},
            },
        ]
    ),
}
TRITON_STREAM = [{"model_name": "ensemble", "text_output": t} for t in (" a", " b")]


def llamacpp(url: str) -> EngineAdapter:
    return LlamaCppAdapter(url, None, max_connections=2)


def openai_compat(url: str) -> EngineAdapter:
    return OpenAICompatAdapter(url, slots=2)


def triton_server(url: str) -> EngineAdapter:
    return TritonAdapter(url, model="ensemble", slots=2)


CASES = {
    # engine: (routes, adapter, the prompt tokens the engine reports or the adapter counts)
    "llamacpp": (LLAMA_ROUTES, llamacpp, 7),
    "vllm": (vllm.routes(sse_route(vllm.VLLM_STREAM)), openai_compat, 5),
    "triton": (triton.routes(triton.TRT_LLM_INPUTS, sse_route(TRITON_STREAM)), triton_server,
               len(PROMPT.encode()) + 2),
}  # fmt: skip


@pytest.mark.parametrize("engine", sorted(CASES))
@pytest.mark.req("HARD-208")
async def test_the_budget_is_charged_the_engines_prompt_count(
    conductor_for: Any, engine: str
) -> None:
    routes, build, prompt_tokens = CASES[engine]
    async with scripted_engine(routes) as scripted:
        adapter = build(scripted.url)
        pool: dict[str, Any] = {"engine": engine, "endpoints": [{"url": scripted.url}]}
        if engine == "triton":
            pool["endpoints"] = [{"url": scripted.url, "model": "ensemble"}]
        budgets = {"budgets": {"tokens": 1000}}
        try:
            async with conductor_for(adapter, sessions=budgets, **pool) as (orch, conductor):
                body = task_body(engine=engine, prompt=PROMPT, max_tokens=2)
                admitted = await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH)
                frames = await collect_stream(conductor, body["task_id"])
                session = orch.sessions.find(body["session_id"])
        finally:
            await adapter.aclose()
    assert admitted.status_code == 202, admitted.json
    assert frames[-1][0] == "end", frames[-1]
    tokens_out = frames[-1][1]["tokens_out"]
    assert session is not None and session.budget is not None
    assert session.budget.tokens_used == prompt_tokens + tokens_out
