"""One request per task (PERF-101, PERF-102): ``POST /v1/tasks`` answered with its stream.

The same admission as the two-request form (refusals are the same JSON errors, before any
stream), then ``accepted`` carrying the 202's body and exactly the stream's frames; the open
stream is the task's subscriber.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from falcon.testing.client import _AsyncContextManager

from orchestratord.adapters.mock import MockAdapter
from tests.contract_schemas import assert_frames_match
from tests.sse import SSEParser
from tests.unit.conftest import AUTH, chunks, collect_stream, held_handler, task_body

STREAMING = {**AUTH, "Accept": "text/event-stream"}


def post_stream(conductor: Any, body: dict[str, Any], headers: dict[str, str]) -> Any:
    """``POST /v1/tasks`` with its response body read as it arrives."""
    return _AsyncContextManager(
        conductor.simulate_request(
            "POST", "/v1/tasks", json=body, headers=headers, _stream_result=True
        )
    )


async def frames_of(result: Any) -> list[tuple[str, Any]]:
    parser = SSEParser()
    frames: list[tuple[str, Any]] = []
    async for chunk in chunks(result):
        frames.extend(parser.feed(chunk))
        if frames and frames[-1][0] in ("end", "error"):
            break
    return frames


@pytest.mark.req("PERF-101")
async def test_an_admitted_task_is_answered_with_accepted_then_the_streams_frames(
    conductor_for: Any,
) -> None:
    async with conductor_for(MockAdapter()) as (_, conductor):
        one = task_body(seed=7, max_tokens=6)
        async with post_stream(conductor, one, STREAMING) as result:
            frames = await frames_of(result)
            status, headers = result.status_code, result.headers
        two = task_body(seed=7, max_tokens=6)
        admitted = await conductor.simulate_post("/v1/tasks", json=two, headers=AUTH)
        replayed = await collect_stream(conductor, two["task_id"])
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert headers["location"] == f"/v1/tasks/{one['task_id']}/stream"
    assert frames[0][0] == "accepted"
    assert set(frames[0][1]) == set(admitted.json) and frames[0][1]["task_id"] == one["task_id"]
    assert_frames_match(frames)
    # After `accepted`, what the two-request form's stream sends for the same task.
    assert [e for e, _ in frames[1:]] == [e for e, _ in replayed]
    tokens = [p["t"] for e, p in frames if e == "token"]
    assert tokens == [p["t"] for e, p in replayed if e == "token"] and len(tokens) == 6


@pytest.mark.req("PERF-101")
async def test_without_a_preference_for_the_stream_the_answer_is_the_202(
    conductor_for: Any,
) -> None:
    async with conductor_for(MockAdapter()) as (_, conductor):
        answers = []
        for accept in ("*/*", "application/json", "application/json, text/event-stream;q=0.5"):
            body = task_body()
            answers.append(await conductor.simulate_post(
                "/v1/tasks", json=body, headers={**AUTH, "Accept": accept}))  # fmt: skip
            await collect_stream(conductor, body["task_id"])
    assert [a.status_code for a in answers] == [202, 202, 202]


@pytest.mark.req("PERF-101")
async def test_a_refused_task_gets_the_same_json_error_before_any_stream(
    conductor_for: Any,
) -> None:
    release = asyncio.Event()
    adapter = MockAdapter(held_handler(release, first_tokens=0))
    async with conductor_for(adapter, slots=1, queue={"capacity": 1}) as (orch, conductor):
        invalid = await conductor.simulate_post(
            "/v1/tasks", json={**task_body(), "ctx": "big"}, headers=STREAMING
        )
        running, queued = task_body(), task_body()
        for body in (running, queued):
            assert (
                await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH)
            ).status_code == 202
            async with asyncio.timeout(10):  # the first has its slot before the second
                while orch.pools["p1"].slots_free:  # noqa: ASYNC110 - server state, polled
                    await asyncio.sleep(0.005)
        full = await conductor.simulate_post("/v1/tasks", json=task_body(), headers=STREAMING)
        json_full = await conductor.simulate_post("/v1/tasks", json=task_body(), headers=AUTH)
        release.set()
        for body in (running, queued):
            await collect_stream(conductor, body["task_id"])
    assert invalid.status_code == 400 and invalid.json["code"] == "INVALID_PARAMS"
    assert invalid.headers["content-type"].startswith("application/json")
    assert full.status_code == json_full.status_code == 429
    assert full.json["code"] == json_full.json["code"] == "ADMISSION_REJECT"
    assert full.headers["content-type"].startswith("application/json")
    assert "retry-after" in full.headers and "x-backoff-ms" in full.headers


def comparable(answer: Any) -> tuple[int, str, dict[str, Any], set[str]]:
    """An answer without what differs per request (the correlation id)."""
    body = {k: v for k, v in answer.json.items() if k != "correlation_id"}
    kept = {"retry-after", "x-backoff-ms", "content-type"}
    return answer.status_code, answer.headers["content-type"], body, kept & set(answer.headers)


@pytest.mark.req("PERF-101")
async def test_409_413_and_503_refusals_are_the_two_request_forms_json(
    conductor_for: Any,
) -> None:
    """Each refusal asked both ways gets the same status, JSON body and hint headers; and
    an admitted task's stream carries the 202's budget headers."""
    release = asyncio.Event()
    adapter = MockAdapter(held_handler(release, first_tokens=0))
    server = {"max_body_bytes": 4096}
    sessions = {"budgets": {"tokens": 1000}}
    async with conductor_for(adapter, server=server, sessions=sessions) as (_, conductor):
        entry = {"id": "old-model", "digest": "sha256:" + "0" * 64}
        await conductor.simulate_post("/v1/catalog/models", json=entry, headers=AUTH)
        state = {"state": "Deprecated", "deadline_ms": 5000}
        await conductor.simulate_post(
            "/v1/catalog/models/old-model/state", json=state, headers=AUTH
        )
        first = task_body()
        two_form = await conductor.simulate_post("/v1/tasks", json=first, headers=AUTH)
        async with post_stream(conductor, task_body(session_id=first["session_id"]),
                               STREAMING) as result:  # fmt: skip
            budget_headers = {k: v for k, v in result.headers.items() if "budget" in k}
        pairs = {}
        for name, body in {
            "409": {**task_body(), "task_id": first["task_id"]},
            "413": task_body(prompt="x" * 5000),
            "503": task_body(model_ref="old-model"),
        }.items():
            both = [await conductor.simulate_post("/v1/tasks", json=body, headers=h)
                    for h in (AUTH, STREAMING)]  # fmt: skip
            pairs[name] = [comparable(answer) for answer in both]
        release.set()
    two_form_budgets = {k: v for k, v in two_form.headers.items() if "budget" in k}
    assert two_form_budgets and set(budget_headers) == set(two_form_budgets), budget_headers
    for name, (json_form, stream_form) in pairs.items():
        assert json_form[0] == int(name) and json_form[1].startswith("application/json")
        assert stream_form == json_form, name


@pytest.mark.req("PERF-102")
async def test_the_open_stream_is_the_subscriber_and_closing_it_cancels_the_task(
    conductor_for: Any,
) -> None:
    release = asyncio.Event()
    adapter = MockAdapter(held_handler(release, first_tokens=1))
    async with conductor_for(adapter) as (orch, conductor):
        body = task_body(max_tokens=10)
        parser = SSEParser()
        async with post_stream(conductor, body, STREAMING) as result:
            async for chunk in chunks(result):
                if any(e == "token" for e, _ in parser.feed(chunk)):
                    break
            second = await conductor.simulate_get(
                f"/v1/tasks/{body['task_id']}/stream", headers=AUTH
            )
        task = orch.registry.get(body["task_id"])
        assert task is not None
        for _ in range(200):
            if task.finished and adapter.active == 0:
                break
            await asyncio.sleep(0.01)
        slots_free = orch.pools["p1"].slots_free
        replay = await collect_stream(conductor, body["task_id"])
    assert second.status_code == 409  # one subscriber: the open POST
    assert task.terminal is not None and task.terminal["finish_reason"] == "canceled"
    assert adapter.active == 0 and slots_free == 2
    assert replay[0][0] == "started" and replay[-1][0] == "end"  # replayable, no `accepted`
