"""What a task's runner does with each kind of engine answer (mock engine)."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncGenerator
from types import SimpleNamespace
from typing import Any

import pytest

from orchestratord.adapters.base import (
    EngineConnectionLost,
    GenerationRequest,
    StreamEnd,
    StreamEvent,
    TokenChunk,
)
from orchestratord.adapters.mock import MockAdapter
from orchestratord.replicas.runner import on_time_probability
from tests.unit.conftest import AUTH, collect_stream, task_body

Conductor = Any


async def run_one(conductor: Conductor, **fields: Any) -> list[tuple[str, Any]]:
    body = task_body(**fields)
    accepted = await conductor.simulate_post(
        "/v1/tasks", json=body, headers={**AUTH, "X-Correlation-Id": "corr-runner"}
    )
    assert accepted.status_code == 202, accepted.text
    return await collect_stream(conductor, body["task_id"])


def engine(events: list[StreamEvent], seen: list[GenerationRequest] | None = None) -> MockAdapter:
    async def handler(request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        if seen is not None:
            seen.append(request)
        for event in events:
            yield event

    return MockAdapter(handler)


@pytest.mark.req("OC-ADAPT-5011", "HOME-301")
async def test_a_stream_that_stops_without_a_final_event_is_worker_reset(
    conductor_for: Any,
) -> None:
    async with conductor_for(engine([TokenChunk(" a")])) as (_, conductor):
        frames = await run_one(conductor)
    assert frames[-1] == (
        "error",
        {"code": "WORKER_RESET", "message": "engine stream ended early", "engine": "llamacpp"},
    )


async def _drops_before_the_first_token(
    request: GenerationRequest,
) -> AsyncGenerator[StreamEvent, None]:
    if request.max_tokens:  # always: the engine took the request, then the connection broke
        raise EngineConnectionLost("reset by peer at 10.0.0.1:8080")
    yield TokenChunk("")


@pytest.mark.req("OC-POOL-3010", "OC-ADAPT-5011")
async def test_an_engine_that_took_the_task_and_died_resets_it_without_a_retry(
    conductor_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    adapter = MockAdapter(_drops_before_the_first_token)
    async with conductor_for(adapter) as (_, conductor):
        frames = await run_one(conductor)
    assert frames[-1][1]["code"] == "WORKER_RESET"
    # the pool went Unready with the public reason (the supervisor then found it healthy)
    assert "replica p1-r0: the engine connection was lost" in caplog.text
    assert adapter.started == 1  # the engine had it: it is not run a second time
    (record,) = [r for r in caplog.records if "reset by peer" in r.getMessage()]
    message = record.getMessage()
    assert "corr-runner" in message and "replica p1-r0" in message
    assert frames[0][1]["pool_id"] == "p1"


class _Broken(MockAdapter):
    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        yield TokenChunk(" a")
        raise RuntimeError("a bug in an adapter")


@pytest.mark.req("HOME-901", "HOME-301")
async def test_a_bug_ends_the_task_with_a_bare_internal_error_and_logs_it(
    conductor_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="orchestratord.task")
    async with conductor_for(_Broken()) as (_, conductor):
        frames = await run_one(conductor)
    assert frames[-1] == (
        "error",
        {"code": "INTERNAL", "message": "internal error", "engine": "llamacpp"},
    )
    (record,) = [r for r in caplog.records if r.exc_info]
    assert "corr-runner" in record.getMessage()
    assert "a bug in an adapter" in caplog.text


@pytest.mark.req("HOME-302", "OC-CTRL-2022", "OC-METRICS-7110", "ORCH-3100")
async def test_metrics_frames_come_every_n_tokens_and_report_kv_warmth(
    conductor_for: Any,
) -> None:
    tokens = [TokenChunk(f" t{n}") for n in range(10)]
    warm = engine([*tokens, StreamEnd("length", 4, 1, 10, 1.0)])
    session = str(uuid.uuid4())
    async with conductor_for(warm, server={"metrics_frame_every_tokens": 4}) as (_, conductor):
        first = await run_one(conductor, max_tokens=10, session_id=session)
        frames = await run_one(conductor, max_tokens=10, session_id=session)
        scrape = (await conductor.simulate_get("/metrics")).text
    kinds = [e for e, _ in frames]
    metrics = [p for e, p in frames if e == "metrics"]
    # before decoding, after tokens 4 and 8, and before the end
    assert [p["tokens_out"] for p in metrics] == [0, 4, 8, 10]
    assert kinds.index("metrics", 2) == kinds.index("token") + 4
    # The engine reused cached tokens both times, but only the second turn found the
    # session's own cache (the first had none yet): kv_warmth is about the session.
    assert [p["kv_warmth"] for e, p in first if e == "metrics"][-1] is False
    assert [p["kv_warmth"] for p in metrics] == [False, False, False, True]
    labels = 'engine="llamacpp",engine_version="mock-1",pool_id="p1"'
    assert f"latency_first_token_ms_count{{{labels}}} 2.0" in scrape  # one per task


@pytest.mark.req("HOME-207", "OC-CORE-1030")
async def test_the_engine_gets_the_tasks_slot_seed_and_cache_hint(conductor_for: Any) -> None:
    seen: list[GenerationRequest] = []
    adapter = engine([TokenChunk(" a"), StreamEnd("length", 1, 0, 1, 1.0)], seen)
    async with conductor_for(adapter) as (_, conductor):
        await run_one(conductor, seed=2**40 + 5, kv_hint="cold")
        await run_one(conductor)
    cold, warm = seen
    assert cold.slot in (0, 1) and warm.slot in (0, 1)
    assert cold.seed == (2**40 + 5) % 0xFFFFFFFF
    assert cold.reuse_kv is False and warm.reuse_kv is True


def _task(**fields: Any) -> Any:
    base = {"deadline_at": 100.0, "expected_tokens": None, "max_tokens": 100}
    return SimpleNamespace(**{**base, **fields})


@pytest.mark.req("ORCH-3100", "OC-METRICS-7110")
def test_on_time_probability_follows_the_decode_rate() -> None:
    assert on_time_probability(_task(tokens_out=0, started_at=None), now=101.0) == 0.0
    assert on_time_probability(_task(tokens_out=0, started_at=None), now=50.0) == 1.0
    # 10 tokens in 10 s: 90 more need 90 s, 50 s are left
    running = _task(tokens_out=10, started_at=40.0)
    assert on_time_probability(running, now=50.0) == round(50 / 90, 3)
    # the caller's expected length wins over max_tokens
    expected = _task(tokens_out=10, started_at=40.0, expected_tokens=40)
    assert on_time_probability(expected, now=50.0) == 1.0
    assert on_time_probability(_task(tokens_out=100, started_at=40.0), now=50.0) == 1.0
    assert json.dumps(on_time_probability(running, now=50.0)) == "0.556"


@pytest.mark.req("HOME-301", "ORCH-3026")
async def test_a_runner_stopped_before_its_first_step_still_ends_its_task_and_frees_the_slot(
    conductor_for: Any,
) -> None:
    """The original watchdog bug: a runner canceled before it ran, by a canceller that did
    not close the log first. The settle callback must close it and give the slot back."""
    async with conductor_for() as (orch, conductor):
        body = task_body()
        accepted = await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH)
        assert accepted.status_code == 202
        task = orch.registry.get(body["task_id"])
        assert task is not None and task.runner is not None
        task.runner.cancel()  # in the same loop turn as the start: it never ran a step
        frames = await collect_stream(conductor, body["task_id"])
        pool = orch.pools["p1"]
        assert pool.slots_free == 2 and sorted(pool.replicas[0].free_slot_ids) == [0, 1]
        assert len(pool.queue) == 0
    assert frames[-1] == (
        "error",
        {"code": "WORKER_RESET", "message": "task runner stopped", "engine": "llamacpp"},
    )
