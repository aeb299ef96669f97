"""Session budgets (HOME-402, HOME-303, ORCH-3099, ORCH-3100, OC-CORE-1023/1024,
OC-CTRL-2068, OC-METRICS-7111): reserved at admission, settled at the end, time enforced
while decoding, shown in headers, metrics frames and the session."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from orchestratord.adapters.base import GenerationRequest, StreamEnd, StreamEvent, TokenChunk
from orchestratord.adapters.mock import MockAdapter
from orchestratord.config import BudgetsConfig
from orchestratord.core.budgets import Budget
from tests.contract_schemas import assert_frames_match
from tests.unit.conftest import AUTH, collect_stream, task_body

BUDGETS = {"tokens": 40, "cost": 1.0}


async def submit(conductor: Any, session: str, **fields: Any) -> Any:
    body = task_body(session_id=session, **fields)
    return await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH), body


@pytest.mark.req(
    "HOME-402", "HOME-303", "ORCH-3099", "ORCH-3100", "OC-CORE-1023", "OC-CORE-1024",
    "OC-CTRL-2068", "OC-METRICS-7111", "FR-MA-002",
)  # fmt: skip
async def test_tokens_and_cost_are_reserved_settled_and_reported(conductor_for: Any) -> None:
    session = str(uuid.uuid4())
    async with conductor_for(cost_per_1k_tokens=10.0, sessions={"budgets": BUDGETS}) as (
        _,
        conductor,
    ):
        # Admission reserves the most a task may use: "hello there" has 11 bytes, so at most
        # 13 prompt tokens, plus 8: 21. It really uses 2 + 8 = 10 (the mock engine counts
        # words), which is what is settled when it ends.
        first, body = await submit(conductor, session, max_tokens=8)
        frames = await collect_stream(conductor, body["task_id"])
        async with conductor.simulate_get_stream(
            f"/v1/tasks/{body['task_id']}/stream", headers=AUTH
        ) as replay:
            stream_headers = dict(replay.headers)
        info = (await conductor.simulate_get(f"/v1/sessions/{session}", headers=AUTH)).json
        too_big, _ = await submit(conductor, session, max_tokens=18)  # 13 + 18 > 30 left
        fits, _ = await submit(conductor, session, max_tokens=17)
    assert first.headers["X-Budget-Tokens-Remaining"] == "19"  # 40 - 21 reserved
    assert first.headers["X-Budget-Cost-Remaining"] == "0.79"  # 1.0 - 21 x 10 / 1000
    assert "x-budget-tokens-remaining" in {k.lower() for k in stream_headers}
    metrics = [p for e, p in frames if e == "metrics"]
    assert metrics[-1]["tokens_budget_remaining"] == 19  # still reserved while it runs
    assert metrics[-1]["cost_budget_remaining"] == 0.79
    assert_frames_match(frames)
    assert info["tokens_budget_remaining"] == 30 and info["cost_budget_remaining"] == 0.9
    assert too_big.status_code == 409 and too_big.json["code"] == "BUDGET_EXHAUSTED"
    assert too_big.json["retriable"] is False and "30 tokens left" in too_big.json["message"]
    assert fits.status_code == 202


class SlowEngine(MockAdapter):
    def __init__(self) -> None:
        super().__init__(self._generate)

    async def _generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        for index in range(request.max_tokens):
            await asyncio.sleep(0.01)
            yield TokenChunk(f" t{index}")
        yield StreamEnd("length", 1, 0, request.max_tokens, 1.0)


@pytest.mark.req("HOME-402", "OC-CORE-1024")
async def test_a_task_ends_when_the_sessions_time_budget_runs_out(conductor_for: Any) -> None:
    session = str(uuid.uuid4())
    async with conductor_for(SlowEngine(), sessions={"budgets": {"time_ms": 100}}) as (
        orch,
        conductor,
    ):
        admitted, body = await submit(conductor, session, max_tokens=200)
        frames = await collect_stream(conductor, body["task_id"])
        refused, _ = await submit(conductor, session, max_tokens=2)
        slots = orch.pools["p1"].slots_free
        found = orch.sessions.find(session)
        assert found is not None and found.budget is not None
        left_ms = found.budget.remaining()["time_budget_remaining_ms"]
    assert admitted.status_code == 202
    assert frames[-1][0] == "error" and frames[-1][1]["code"] == "BUDGET_EXHAUSTED"
    tokens = sum(1 for e, _ in frames if e == "token")
    # Stopped once the 100 ms were spent (not before: none of it is left), long before
    # max_tokens; how many tokens fit in them depends on the machine, so only "some".
    assert left_ms == 0 and 1 <= tokens < 200
    assert refused.status_code == 409 and refused.json["code"] == "BUDGET_EXHAUSTED"
    assert slots == 2  # the stopped task gave its slot back


@pytest.mark.req("OC-CORE-1024", "HARD-111")
async def test_a_refused_admission_gives_its_reservation_back(conductor_for: Any) -> None:
    session, newcomer = str(uuid.uuid4()), str(uuid.uuid4())
    release = asyncio.Event()

    async def hold(request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        await release.wait()
        yield StreamEnd("length", 1, 0, 0, 1.0)

    budgets = {"budgets": {"tokens": 1000}}
    async with conductor_for(
        MockAdapter(hold), slots=1, queue={"capacity": 1}, sessions=budgets
    ) as (orch, conductor):
        await submit(conductor, session, max_tokens=4)  # holds the slot: 21 reserved
        await submit(conductor, str(uuid.uuid4()), max_tokens=4)  # fills the queue
        full, _ = await submit(conductor, session, max_tokens=100)
        refused_newcomer, _ = await submit(conductor, newcomer, max_tokens=4)
        info = orch.sessions.find(session)
        assert info is not None and info.budget is not None
        remaining = info.budget.remaining()["tokens_budget_remaining"]
        left_behind = orch.sessions.find(newcomer)
        release.set()
    assert full.status_code == 429 and refused_newcomer.status_code == 429
    assert remaining == 1000 - 17  # only the running task's 13 + 4 stay reserved
    assert info.turns == 1  # the refused task took no turn
    assert left_behind is None  # a task refused at admission leaves no session behind


@pytest.mark.req("HOME-402", "OC-CORE-1024", "HARD-208")
def test_tasks_decoding_side_by_side_share_the_time_budget() -> None:
    budget = Budget.from_config(BudgetsConfig(time_ms=100))
    first, second = object(), object()
    budget.task_started(first, 10.0)
    budget.task_started(second, 10.0)
    assert not budget.time_exhausted(10.04)  # 2 x 40 ms of the 100
    assert budget.time_exhausted(10.05)  # 2 x 50 ms: spent, for both of them
    budget.task_stopped(first, 10.05)
    budget.task_stopped(second, 10.05)
    assert budget.time_used_ms == pytest.approx(100.0)


@pytest.mark.req("HOME-402", "OC-CORE-1024", "HARD-208")
async def test_a_task_settles_with_the_session_that_reserved_it(conductor_for: Any) -> None:
    """A task that outlives its session's lifetime settles against that session, not a new
    one that took over its id."""
    session = str(uuid.uuid4())
    release, never = asyncio.Event(), asyncio.Event()

    async def hold(request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        await (release if request.max_tokens == 4 else never).wait()
        yield TokenChunk(" a")
        yield StreamEnd("length", 2, 0, 1, 1.0)

    sessions = {"ttl_ms": 1000, "budgets": {"tokens": 1000}}
    async with conductor_for(MockAdapter(hold), sessions=sessions) as (orch, conductor):
        first, first_body = await submit(conductor, session, max_tokens=4)
        old = orch.sessions.find(session)
        # Its lifetime (1 s) is over, and the one more lifetime its id is remembered for:
        # the id may start a new session, while the old session's task still runs.
        await asyncio.sleep(2.1)
        second, _ = await submit(conductor, session, max_tokens=5)
        new = orch.sessions.find(session)
        release.set()
        await collect_stream(conductor, first_body["task_id"])
        assert old is not None and new is not None and old is not new
        assert old.budget is not None and new.budget is not None
        settled = (old.budget.tokens_used, old.budget.tokens_reserved)
        untouched = (new.budget.tokens_used, new.budget.tokens_reserved)
        never.set()
    assert first.status_code == 202 and second.status_code == 202
    assert settled == (3, 0)  # 2 prompt + 1 output, against the session that reserved it
    assert untouched == (0, 13 + 5)  # the new session holds only its own reservation


@pytest.mark.parametrize(
    "fields", [{"tokens": -5}, {"tokens": 0}, {"time_ms": 10**12}, {"cost": -1.0}]
)
def test_negative_or_absurd_budgets_are_config_errors(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"tokens|time_ms|cost"):
        BudgetsConfig(**fields)
