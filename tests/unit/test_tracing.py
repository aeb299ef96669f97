"""OpenTelemetry tracing (FR-OB-002): a span per task with its phases, via the SDK's
in-memory exporter; off by default."""

from __future__ import annotations

from pathlib import Path

import falcon.testing
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestratord.adapters.mock import MockAdapter
from orchestratord.app import Orchestrator
from tests.unit.conftest import AUTH, TOKEN, collect_stream, make_config, task_body


@pytest.mark.req("FR-OB-002")
async def test_a_task_is_a_span_with_admission_queue_decode_and_stream_phases(
    tmp_path: Path,
) -> None:
    exporter = InMemorySpanExporter()
    orch = Orchestrator(
        make_config(tmp_path), token=TOKEN, adapters={"p1": MockAdapter()}, span_exporter=exporter
    )
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        body = task_body(max_tokens=3)
        await conductor.simulate_post(
            "/v1/tasks", json=body, headers={**AUTH, "X-Correlation-Id": "span-1"}
        )
        await collect_stream(conductor, body["task_id"])
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"task", "admission", "queue", "decode", "stream"}
    root = spans["task"]
    assert root.attributes is not None
    assert root.attributes["llorch.task_id"] == body["task_id"]
    assert root.attributes["llorch.correlation_id"] == "span-1"
    assert root.attributes["llorch.outcome"] == "length"
    for name in ("admission", "queue", "decode", "stream"):
        child = spans[name]
        assert child.parent is not None and child.parent.span_id == root.context.span_id
        assert child.context.trace_id == root.context.trace_id
    assert spans["admission"].start_time <= spans["queue"].start_time <= spans["decode"].start_time
    assert spans["decode"].end_time <= root.end_time  # type: ignore[operator]


def test_tracing_is_off_by_default(tmp_path: Path) -> None:
    orch = Orchestrator(make_config(tmp_path), token=TOKEN, adapters={"p1": MockAdapter()})
    assert orch.tracing.enabled is False
