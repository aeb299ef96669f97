"""Nothing one client creates grows without limit (HARD-110, HARD-111, HARD-112)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from orchestratord.adapters.base import GenerationRequest, StreamEnd, StreamEvent
from orchestratord.adapters.mock import MockAdapter
from tests.unit.conftest import AUTH, task_body

DIGEST = "sha256:" + "0" * 64


async def submit(conductor: Any, **fields: Any) -> Any:
    body = task_body(**fields)
    return await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH)


@pytest.mark.req("HARD-110")
async def test_live_sessions_are_bounded(conductor_for: Any) -> None:
    first, second, third = (str(uuid.uuid4()) for _ in range(3))
    async with conductor_for(sessions={"max_live": 2}, queue={"capacity": 16}) as (orch, c):
        answers = [await submit(c, session_id=s) for s in (first, second, third)]
        again = await submit(c, session_id=first)  # an existing session goes on
        refused = orch.sessions.find(third)
        metrics = (await c.simulate_get("/metrics")).text
    assert [a.status_code for a in answers] == [202, 202, 429]
    full = answers[2]
    assert full.json["code"] == "ADMISSION_REJECT" and full.json["policy_label"] == "sessions"
    assert "sessions.max_live" in full.json["message"] and int(full.headers["X-Backoff-Ms"]) > 0
    assert again.status_code == 202
    assert refused is None
    assert 'admission_backpressure_events_total{engine="llamacpp",policy="sessions"} 1.0' in (
        metrics
    )


@pytest.mark.req("HARD-110", "HOME-401")
async def test_a_deleted_session_makes_room_under_max_live(conductor_for: Any) -> None:
    first, second, third = (str(uuid.uuid4()) for _ in range(3))
    async with conductor_for(sessions={"max_live": 2}, queue={"capacity": 16}) as (_, c):
        answers = [await submit(c, session_id=s) for s in (first, second)]
        deleted = await c.simulate_delete(f"/v1/sessions/{first}", headers=AUTH)
        took_its_place = await submit(c, session_id=third)
        deleted_again = await submit(c, session_id=first)  # its id still refuses
    assert [a.status_code for a in answers] == [202, 202] and deleted.status_code == 204
    assert took_its_place.status_code == 202, took_its_place.json
    assert deleted_again.status_code == 409 and "was deleted" in deleted_again.json["message"]


@pytest.mark.req("HARD-111")
async def test_a_refused_task_leaves_no_session_and_spends_no_rate_token(
    conductor_for: Any,
) -> None:
    queue = {"rate_limit_rps": {"interactive": 0.01}, "rate_limit_burst": 1}
    sessions = [str(uuid.uuid4()) for _ in range(4)]
    async with conductor_for(queue=queue) as (orch, c):
        too_long = await submit(c, session_id=sessions[0], ctx=100_000)  # 400: ctx
        unknown = await submit(c, session_id=sessions[1], model_ref="nobody/serves-this")
        admitted = await submit(c, session_id=sessions[2])  # takes the only token
        limited = await submit(c, session_id=sessions[3])
        found = [orch.sessions.find(s) is not None for s in sessions]
    assert [too_long.status_code, unknown.status_code] == [400, 400]
    assert admitted.status_code == 202  # the refused tasks spent no token
    assert limited.status_code == 429 and limited.json["policy_label"] == "rate-limit"
    assert found == [False, False, True, False]


@pytest.mark.req("HARD-111")
async def test_409_and_503_refusals_leave_no_session_and_spend_no_rate_token(
    conductor_for: Any,
) -> None:
    """Three tokens: a running and a queued task take two; a duplicate task id (409), a
    budget the task cannot fit (409), a deprecated model (503) and a full queue (429), each
    with a new session, are refused; once the queued task is cancelled the next task finds
    the third token, and only the one after it is rate-limited."""
    release = asyncio.Event()

    async def hold(request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        await release.wait()
        yield StreamEnd("length", 1, 0, 0, 1.0)

    queue = {"rate_limit_rps": {"interactive": 0.001}, "rate_limit_burst": 3, "capacity": 1}
    sessions = {"budgets": {"tokens": 100}}
    new = [str(uuid.uuid4()) for _ in range(8)]
    async with conductor_for(MockAdapter(hold), slots=1, queue=queue, sessions=sessions) as (
        orch,
        c,
    ):
        try:
            entry = {"id": "old-model", "digest": DIGEST}
            made = await c.simulate_post("/v1/catalog/models", json=entry, headers=AUTH)
            state = {"state": "Deprecated", "deadline_ms": 5000}
            url = "/v1/catalog/models/old-model/state"
            deprecating = await c.simulate_post(url, json=state, headers=AUTH)
            assert (made.status_code, deprecating.status_code) == (201, 202)
            running = await submit(c, session_id=new[0])
            queued = await submit(c, session_id=new[1])
            twin = await submit(c, session_id=new[2], task_id=running.json["task_id"])
            over_budget = await submit(c, session_id=new[3], max_tokens=200)
            deprecated = await submit(c, session_id=new[4], model_ref="old-model")
            full = await submit(c, session_id=new[5])
            left = [orch.sessions.find(s) is not None for s in new[:6]]
            cancel = f"/v1/tasks/{queued.json['task_id']}/cancel"
            assert (await c.simulate_post(cancel, headers=AUTH)).status_code in (200, 202, 204)
            admitted = await submit(c, session_id=new[6])
            limited = await submit(c, session_id=new[7])
        finally:
            release.set()
    assert [running.status_code, queued.status_code] == [202, 202]
    assert twin.status_code == 409 and twin.json["code"] == "CONFLICT", twin.json
    assert over_budget.status_code == 409 and over_budget.json["code"] == "BUDGET_EXHAUSTED"
    assert deprecated.status_code == 503 and deprecated.json["code"] == "MODEL_DEPRECATED"
    assert full.status_code == 429 and full.json["policy_label"] != "rate-limit", full.json
    assert left == [True, True, False, False, False, False]
    assert admitted.status_code == 202, admitted.json  # no refusal spent a token
    assert limited.status_code == 429 and limited.json["policy_label"] == "rate-limit"


@pytest.mark.req("HARD-110")
async def test_catalog_entries_are_bounded(conductor_for: Any) -> None:
    async with conductor_for(catalog={"max_entries": 2}) as (orch, c):
        answers = [
            await c.simulate_post(
                "/v1/catalog/models", json={"id": f"m{n}", "digest": DIGEST}, headers=AUTH
            )
            for n in range(3)
        ]
        series = [
            line for line in (await c.simulate_get("/metrics")).text.splitlines()
            if line.startswith("model_state{")
        ]  # fmt: skip
    assert [a.status_code for a in answers] == [201, 201, 409]
    assert "catalog.max_entries (2)" in answers[2].json["message"]
    assert len(series) == 2 and orch.catalog.get("m2") is None


@pytest.mark.req("HARD-110")
async def test_artifacts_are_bounded_by_count_and_bytes(conductor_for: Any) -> None:
    def artifact(n: int, size: int) -> dict[str, Any]:
        return {"kind": "trace", "content": {"n": n, "pad": "x" * size}}

    by_count = {"max_artifacts": 2}
    async with conductor_for(server=by_count) as (_, c):
        posts = [await c.simulate_post("/v1/artifacts", json=artifact(n, 10), headers=AUTH)
                 for n in range(3)]  # fmt: skip
        repost = await c.simulate_post("/v1/artifacts", json=artifact(0, 10), headers=AUTH)
    assert [p.status_code for p in posts] == [201, 201, 409]
    assert "server.max_artifacts (2)" in posts[2].json["message"]
    assert repost.status_code == 201  # the same artifact again is not a new one

    by_bytes = {"max_artifact_store_bytes": 1024 * 1024, "max_body_bytes": 1024 * 1024}
    async with conductor_for(server=by_bytes) as (_, c):
        posts = [await c.simulate_post("/v1/artifacts", json=artifact(n, 400_000), headers=AUTH)
                 for n in range(3)]  # fmt: skip
    assert [p.status_code for p in posts] == [201, 201, 409]
    assert "server.max_artifact_store_bytes" in posts[2].json["message"]


@pytest.mark.parametrize(
    ("host", "auth", "open_"),
    [
        ("127.0.0.1", "auto", True),
        ("::1", "auto", True),
        ("localhost", "auto", True),
        ("0.0.0.0", "auto", False),
        ("192.168.1.20", "auto", False),
        ("127.0.0.1", "always", False),
        ("0.0.0.0", "never", True),
    ],
)
@pytest.mark.req("HARD-112", "HOME-102")
async def test_metrics_need_the_token_off_loopback(
    conductor_for: Any, host: str, auth: str, open_: bool
) -> None:
    async with conductor_for(server={"host": host, "metrics_auth": auth}) as (_, c):
        anonymous = await c.simulate_get("/metrics")
        with_token = await c.simulate_get("/metrics", headers=AUTH)
    assert anonymous.status_code == (200 if open_ else 401)
    assert with_token.status_code == 200 and "queue_depth" in with_token.text
