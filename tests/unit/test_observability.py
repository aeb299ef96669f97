"""Correlation IDs in every log record and at the engine, JSON logs, the queue-wait histogram."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from orchestratord.adapters.base import GenerationRequest, Sampling
from orchestratord.adapters.openai_compat import OpenAICompatAdapter
from orchestratord.logs import CorrelationFilter, JsonFormatter
from tests.unit.conftest import AUTH, collect_stream, task_body
from tests.unit.scripted_http import scripted_engine, sse_route
from tests.unit.test_openai_adapter import VLLM_STREAM, routes


@pytest.mark.req("HOME-103", "FR-OB-001", "HOME-803")
async def test_the_tasks_log_records_carry_the_admitting_requests_correlation_id(
    conductor_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(CorrelationFilter())
    caplog.set_level("INFO", logger="orchestratord.task")
    async with conductor_for() as (_, conductor):
        body = task_body(max_tokens=2)
        await conductor.simulate_post(
            "/v1/tasks", json=body, headers={**AUTH, "X-Correlation-Id": "trace-42"}
        )
        await collect_stream(conductor, body["task_id"])
    (end,) = [r for r in caplog.records if r.getMessage().startswith("task end")]
    assert getattr(end, "correlation_id", None) == "trace-42"


@pytest.mark.req("HOME-103", "FR-OB-001")
async def test_the_engine_gets_the_correlation_id_and_vllm_its_request_id() -> None:
    async with scripted_engine(routes(sse_route(VLLM_STREAM))) as engine:
        adapter = OpenAICompatAdapter(engine.url, slots=1)
        request = GenerationRequest(
            "hi", 2, 1, Sampling(0.8, 40, 0.95, 0.05, 1.0, False), correlation_id="trace-7"
        )
        _ = [event async for event in adapter.generate(request)]
        await adapter.aclose()
    headers = next(r[3] for r in engine.requests if r[1] == "/v1/completions")
    sent = {k.lower(): v for k, v in headers.items()}
    assert sent["x-correlation-id"] == "trace-7" and sent["x-request-id"] == "trace-7"


def test_json_log_lines_are_one_object_with_the_correlation_id() -> None:
    record = logging.LogRecord(
        "orchestratord.task", logging.INFO, "f", 1, "task end %s", ("x",), None
    )
    record.correlation_id = "c-1"
    line = json.loads(JsonFormatter().format(record))
    assert (line["level"], line["logger"], line["message"], line["correlation_id"]) == (
        "INFO", "orchestratord.task", "task end x", "c-1",
    )  # fmt: skip


@pytest.mark.req("HOME-801")
async def test_queue_wait_is_measured(conductor_for: Any) -> None:
    async with conductor_for() as (_, conductor):
        body = task_body(max_tokens=2)
        await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH)
        await collect_stream(conductor, body["task_id"])
        text = (await conductor.simulate_get("/metrics")).text
    assert (
        'latency_queue_wait_ms_count{engine="llamacpp",engine_version="mock-1",pool_id="p1"} 1.0'
        in text
    )
