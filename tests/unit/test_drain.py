"""Drain and resume (HOME-504, ORCH-2101, OC-CTRL-2002)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from orchestratord.adapters.mock import MockAdapter
from tests.contract_schemas import assert_matches
from tests.unit.conftest import AUTH, collect_stream, held_handler, task_body


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - observing state from outside, as a client would
            await asyncio.sleep(0.005)


async def submit(conductor: Any, **fields: Any) -> Any:
    return await conductor.simulate_post("/v1/tasks", json=task_body(**fields), headers=AUTH)


async def drain(conductor: Any, deadline_ms: Any, pool: str = "p1") -> Any:
    return await conductor.simulate_post(
        f"/v1/pools/{pool}/drain", json={"deadline_ms": deadline_ms}, headers=AUTH
    )


async def health(conductor: Any) -> Any:
    return (await conductor.simulate_get("/v1/pools/p1/health", headers=AUTH)).json


@pytest.mark.req("HOME-504", "ORCH-2101", "OC-CTRL-2002", "HOME-506")
async def test_a_drain_refuses_new_work_and_lets_running_and_queued_work_finish(
    conductor_for: Any,
) -> None:
    release = asyncio.Event()
    async with conductor_for(
        MockAdapter(held_handler(release)), slots=1, queue={"capacity": 4}
    ) as (
        orch,
        conductor,
    ):
        running = (await submit(conductor, max_tokens=4)).json["task_id"]
        queued = (await submit(conductor, max_tokens=3)).json["task_id"]
        accepted = await drain(conductor, 60_000)
        refused = await submit(conductor)
        during = await health(conductor)
        release.set()
        frames = [await collect_stream(conductor, t) for t in (running, queued)]
        await eventually(lambda: orch.pools["p1"].drain.state == "drained")  # type: ignore[union-attr]
        after = await health(conductor)
        again = await drain(conductor, 10)
        resumed = await conductor.simulate_post("/v1/pools/p1/resume", headers=AUTH)
        admitted = await submit(conductor, max_tokens=2)
        finished = await collect_stream(conductor, admitted.json["task_id"])
        not_drained = await conductor.simulate_post("/v1/pools/p1/resume", headers=AUTH)
    assert accepted.status_code == 202 and accepted.json["drain"]["state"] == "draining"
    assert refused.status_code == 503 and refused.json["code"] == "POOL_UNAVAILABLE"
    assert refused.json["retriable"] is True and "draining" in refused.json["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert during["draining"] is True and during["drain"]["state"] == "draining"
    assert_matches("control", "PoolHealth", during)
    assert [f[-1][0] for f in frames] == ["end", "end"]  # both finished normally
    assert after["draining"] is True and after["drain"]["state"] == "drained"
    assert after["drain"]["ended_tasks"] == 0
    assert again.status_code == 409 and again.json["code"] == "CONFLICT"
    assert resumed.status_code == 200 and resumed.json == {"pool_id": "p1", "draining": False}
    assert admitted.status_code == 202 and finished[-1][0] == "end"
    assert not_drained.status_code == 409


@pytest.mark.req("HOME-504", "ORCH-2101")
async def test_at_the_deadline_what_is_left_ends_with_one_error_frame(conductor_for: Any) -> None:
    release = asyncio.Event()
    async with conductor_for(
        MockAdapter(held_handler(release)), slots=1, queue={"capacity": 4}
    ) as (
        orch,
        conductor,
    ):
        running = (await submit(conductor, max_tokens=4)).json["task_id"]
        queued = (await submit(conductor, max_tokens=3)).json["task_id"]
        await drain(conductor, 50)
        frames = [await collect_stream(conductor, t) for t in (running, queued)]
        after = await health(conductor)
        pool = orch.pools["p1"]
        assert pool.slots_free == 1 and not pool.running and not len(pool.queue)
    for task_frames in frames:
        terminals = [e for e, _ in task_frames if e in ("end", "error")]
        assert terminals == ["error"]
        assert task_frames[-1][1]["code"] == "POOL_UNAVAILABLE"
        assert "drained" in task_frames[-1][1]["message"]
    assert after["drain"]["state"] == "drained" and after["drain"]["ended_tasks"] == 2


@pytest.mark.parametrize(
    ("pool", "body", "status"),
    [
        ("p1", {"deadline_ms": -1}, 400),
        ("p1", {"deadline_ms": "soon"}, 400),
        ("p1", {}, 400),
        ("p1", {"deadline_ms": 10, "extra": True}, 400),
        ("nope", {"deadline_ms": 10}, 404),
    ],
)
@pytest.mark.req("HOME-504", "HOME-901")
async def test_bad_drain_requests_are_typed_4xx_and_change_nothing(
    conductor_for: Any, pool: str, body: dict[str, Any], status: int
) -> None:
    async with conductor_for() as (orch, conductor):
        response = await conductor.simulate_post(f"/v1/pools/{pool}/drain", json=body, headers=AUTH)
        assert orch.pools["p1"].drain is None
    assert response.status_code == status
    assert response.json["code"] in ("INVALID_PARAMS", "NOT_FOUND")
