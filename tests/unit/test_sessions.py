"""Sessions (HOME-401, HOME-403, ORCH-2004, ORCH-2005, ORCH-3009, ORCH-3021, OC-CORE-1013)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from orchestratord.adapters.base import GenerationRequest, StreamEnd, StreamEvent, TokenChunk
from orchestratord.adapters.mock import MockAdapter
from tests.contract_schemas import assert_matches
from tests.unit.conftest import AUTH, collect_stream, held_handler, task_body


class CachingEngine(MockAdapter):
    """Reports a prompt cache hit when a slot last ran a prompt this one extends."""

    def __init__(self) -> None:
        super().__init__(self._generate, slots=2)
        self.slot_prompts: dict[int | None, str] = {}
        self.evicted: list[int] = []

    async def _generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        cached = self.slot_prompts.get(request.slot, "")
        hit = len(cached.split()) if cached and request.prompt.startswith(cached) else 0
        self.slot_prompts[request.slot] = request.prompt
        for index in range(request.max_tokens):
            yield TokenChunk(f" w{index}")
        yield StreamEnd("length", len(request.prompt.split()), hit, request.max_tokens, 1.0)

    async def evict(self, slot: int) -> bool:
        self.evicted.append(slot)
        self.slot_prompts.pop(slot, None)
        return True


async def turn(conductor: Any, session: str, prompt: str, **fields: Any) -> tuple[Any, list[Any]]:
    body = task_body(session_id=session, prompt=prompt, max_tokens=2, **fields)
    admitted = await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH)
    frames = await collect_stream(conductor, body["task_id"]) if admitted.status_code == 202 else []
    return admitted, frames


async def info(conductor: Any, session: str) -> Any:
    return await conductor.simulate_get(f"/v1/sessions/{session}", headers=AUTH)


@pytest.mark.req("HOME-401", "HOME-403", "ORCH-2004", "ORCH-3009", "OC-CORE-1013")
async def test_a_session_keeps_its_slot_and_its_cache_warm(conductor_for: Any) -> None:
    engine = CachingEngine()
    session, other = str(uuid.uuid4()), str(uuid.uuid4())
    async with conductor_for(engine) as (_orch, conductor):
        await turn(conductor, session, "one two three")
        # Another conversation runs in between; it must not take the session's slot.
        await turn(conductor, other, "unrelated words here")
        _, second = await turn(conductor, session, "one two three four five")
        read = await info(conductor, session)
    ends = [p for e, p in second if e == "metrics"]
    assert ends[-1]["kv_warmth"] is True
    assert read.status_code == 200
    assert_matches("data", "SessionInfo", read.json)
    body = read.json
    assert (body["turns"], body["max_turns"], body["kv_warmth"]) == (2, 8, True)
    assert body["replica_id"] == "p1-r0" and body["slot_id"] is not None
    assert body["kv_tokens"] == 5 + 2  # the prompt's tokens plus the two generated
    assert 0 < body["ttl_ms_remaining"] <= 600_000
    assert engine.slot_prompts[body["slot_id"]] == "one two three four five"


@pytest.mark.req("HOME-403", "OC-CORE-1013", "ORCH-3009")
async def test_after_a_failover_kv_warmth_is_false(conductor_for: Any) -> None:
    engines = [CachingEngine(), CachingEngine()]
    session = str(uuid.uuid4())
    async with conductor_for(engines, replicas=2, slots=2) as (orch, conductor):
        await turn(conductor, session, "a b c")
        first = (await info(conductor, session)).json["replica_id"]
        home = orch.pools["p1"].replica(first)
        assert home is not None
        home.ready = False  # its replica fails; the next turn must go to the other
        _, frames = await turn(conductor, session, "a b c d")
        after = (await info(conductor, session)).json
        home.ready = True
    assert after["replica_id"] != first
    assert after["kv_warmth"] is False
    assert [p for e, p in frames if e == "metrics"][-1]["kv_warmth"] is False


@pytest.mark.req("HOME-401", "ORCH-2005", "FR-DP-004")
async def test_delete_ends_the_session_and_erases_its_slot(conductor_for: Any) -> None:
    engine = CachingEngine()
    session = str(uuid.uuid4())
    async with conductor_for(engine) as (_, conductor):
        await turn(conductor, session, "to be forgotten")
        slot = (await info(conductor, session)).json["slot_id"]
        deleted = await conductor.simulate_delete(f"/v1/sessions/{session}", headers=AUTH)
        gone = await info(conductor, session)
        refused, _ = await turn(conductor, session, "again")
        again = await conductor.simulate_delete(f"/v1/sessions/{session}", headers=AUTH)
    assert deleted.status_code == 204
    assert engine.evicted == [slot] and slot not in engine.slot_prompts
    assert gone.status_code == 404 and gone.json["code"] == "NOT_FOUND"
    assert refused.status_code == 409 and "was deleted" in refused.json["message"]
    assert again.status_code == 404


@pytest.mark.req("HOME-401", "ORCH-3021")
async def test_a_session_ends_after_its_turns_or_its_lifetime(conductor_for: Any) -> None:
    session, short = str(uuid.uuid4()), str(uuid.uuid4())
    sessions = {"max_turns": 2, "ttl_ms": 1000}
    async with conductor_for(sessions=sessions) as (_, conductor):
        statuses = [(await turn(conductor, session, "x"))[0].status_code for _ in range(3)]
        refused = (await turn(conductor, short, "y"))[0]
        await asyncio.sleep(1.1)  # the sessions' lifetime (1 s here) is over
        expired = await info(conductor, short)
        after_lifetime, _ = await turn(conductor, short, "y")
    assert statuses == [202, 202, 409]
    assert refused.status_code == 202
    assert expired.status_code == 404
    assert after_lifetime.status_code == 409 and after_lifetime.json["code"] == "CONFLICT"
    assert "expired" in after_lifetime.json["message"]


@pytest.mark.req("HOME-401", "ORCH-2005")
async def test_delete_ends_the_sessions_running_and_queued_tasks(conductor_for: Any) -> None:
    session = str(uuid.uuid4())
    release = asyncio.Event()
    async with conductor_for(MockAdapter(held_handler(release)), slots=1) as (orch, conductor):

        async def submit(session_id: str) -> Any:
            body = task_body(session_id=session_id, max_tokens=4)
            return await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH)

        running, queued = await submit(session), await submit(session)
        other = await submit(str(uuid.uuid4()))
        deleted = await conductor.simulate_delete(f"/v1/sessions/{session}", headers=AUTH)
        ended = [await collect_stream(conductor, r.json["task_id"]) for r in (running, queued)]
        release.set()
        untouched = await collect_stream(conductor, other.json["task_id"])
        slots = orch.pools["p1"].slots_free
    assert deleted.status_code == 204
    for frames in ended:
        assert frames[-1][0] == "end" and frames[-1][1]["finish_reason"] == "canceled"
    assert untouched[-1][0] == "end" and untouched[-1][1]["finish_reason"] != "canceled"
    assert slots == 1


@pytest.mark.req("HOME-401", "HOME-901")
async def test_bad_session_ids_are_400_and_unknown_ones_404(conductor_for: Any) -> None:
    async with conductor_for() as (_, conductor):
        malformed = await info(conductor, "not-a-uuid")
        unknown = await info(conductor, str(uuid.uuid4()))
        delete_unknown = await conductor.simulate_delete(
            f"/v1/sessions/{uuid.uuid4()}", headers=AUTH
        )
    assert malformed.status_code == 400 and malformed.json["code"] == "INVALID_PARAMS"
    assert unknown.status_code == 404 and delete_unknown.status_code == 404
