"""Task lifecycle invariants under random interleavings of everything that can happen.

Hypothesis draws a schedule of submits (priorities, strict determinism, short deadlines),
cancels, stream reads that disconnect midway, reconnects, engine crashes and recoveries,
engine hangs (the watchdog must end stalled decodes), pauses, and a shutdown, and runs it on
the mock engine. After every schedule:

- every admitted task ended with exactly one terminal frame, and it is the last frame;
- ``end.tokens_out`` equals the token frames in the log;
- every task passed the finish hook exactly once (log line, retention);
- slots, engine slot ids and running entries all came back: an idle pool has
  ``slots_free == slots_total``, an empty queue and an engine running nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from orchestratord.api.stream import TaskStreamResource
from orchestratord.app import Orchestrator
from orchestratord.core.request import TaskRequest
from orchestratord.core.task import Task
from orchestratord.errors import ApiError
from tests.unit.conftest import MODEL, TOKEN, make_config, task_body
from tests.unit.faulty_engine import FaultyEngine

SLOTS = 2
# xtask mutate sets this: fewer schedules, and no shrinking of a failing one.
EXAMPLES = int(os.environ.get("LLORCH_PROPERTY_EXAMPLES", "60"))
MUTATION_RUN = "LLORCH_PROPERTY_EXAMPLES" in os.environ


OPS = st.one_of(
    st.tuples(
        st.just("submit"),
        st.sampled_from(["interactive", "batch"]),
        st.booleans(),  # strict
        st.integers(1, 12),  # max_tokens
        st.sampled_from([30, 400, 5000]),  # deadline_ms
    ),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("stream"), st.integers(0, 30), st.integers(1, 6)),
    st.tuples(st.just("crash")),
    st.tuples(st.just("recover")),
    st.tuples(st.just("hang")),
    st.tuples(st.just("unhang")),
    st.tuples(st.just("sleep"), st.integers(0, 40)),
    st.tuples(st.just("shutdown")),
)


async def read_then_leave(resource: TaskStreamResource, task: Task, items: int) -> None:
    """Attach, read ``items`` writes (frames or pings), then go away (a disconnect)."""
    if task.subscribed:
        return
    task.subscribed = True
    task.delivered = 0
    stream = resource.emit(task)
    try:
        async with asyncio.timeout(0.3):
            for _ in range(items):
                await anext(stream)
    except (StopAsyncIteration, TimeoutError):
        pass
    finally:
        await stream.aclose()


class Schedule:
    """Applies one drawn operation at a time to a live Orchestrator on the faulty engine."""

    def __init__(self, orch: Orchestrator, engine: FaultyEngine) -> None:
        self.orch = orch
        self.engine = engine
        self.resource = TaskStreamResource(orch)
        self.admitted: list[Task] = []
        self.refusals: list[int] = []
        self.readers: list[asyncio.Task[None]] = []

    def pick(self, index: int) -> Task:
        return self.admitted[index % len(self.admitted)]

    async def submit(self, priority: str, strict: bool, tokens: int, deadline: int) -> None:
        body = task_body(
            task_id=str(uuid.uuid4()),
            model_ref=MODEL,
            priority=priority,
            determinism="strict" if strict else "best_effort",
            max_tokens=tokens,
            deadline_ms=deadline,
        )
        request = TaskRequest.model_validate_json(json.dumps(body))
        try:
            result = await self.orch.admission.admit(request, "prop")
        except ApiError as refused:
            self.refusals.append(refused.status)
            return
        self.admitted.append(result.task)

    async def apply(self, op: tuple[Any, ...]) -> None:
        kind, *args = op
        engine = self.engine
        if kind == "submit":
            await self.submit(*args)
        elif kind == "cancel" and self.admitted:
            await self.orch.cancel(self.pick(args[0]), reason="client")
        elif kind == "stream" and self.admitted:
            reader = read_then_leave(self.resource, self.pick(args[0]), args[1])
            self.readers.append(asyncio.create_task(reader))
        elif kind in ("crash", "recover"):
            engine.down = kind == "crash"
        elif kind == "hang":
            engine.hang()
        elif kind == "unhang":
            engine.unhang()
        elif kind == "sleep":
            await asyncio.sleep(args[0] / 1000)
        elif kind == "shutdown":
            await self.orch.begin_shutdown(0.05)

    async def settle(self) -> None:
        self.engine.down = False
        self.engine.unhang()
        await asyncio.gather(*self.readers)
        pool = self.orch.pools["p1"]
        async with asyncio.timeout(10):  # every deadline is at most 5 s away
            while not all(t.finished for t in self.admitted) or pool.running:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        await asyncio.sleep(0)


async def run_schedule(tmp_path: Path, policy: str, ops: list[tuple[Any, ...]]) -> None:
    engine = FaultyEngine(slots=SLOTS)
    config = make_config(
        tmp_path,
        slots=SLOTS,
        queue={"capacity": 4, "full_policy": policy},
        server={"decode_idle_timeout_ms": 100, "heartbeat_ms": 50},
    )
    orch = Orchestrator(config, token=TOKEN, adapters={"p1": engine})
    pool = orch.pools["p1"]
    (replica,) = pool.replicas
    replica.runtime = dataclasses.replace(
        replica.runtime, monitor_interval_s=0.005, restart_backoff_s=0.005
    )
    finished: Counter[str] = Counter()
    original = orch.task_finished

    def count_finish(task: Task) -> None:
        finished[task.id] += 1
        original(task)

    orch.admission.on_task_finished = count_finish
    await orch.start()
    schedule = Schedule(orch, engine)
    try:
        for op in ops:
            await schedule.apply(op)
        await schedule.settle()
        assert_idle(orch, engine)
    finally:
        await orch.stop()
    assert_idle(orch, engine)
    assert set(schedule.refusals) <= {429, 503}  # a full queue, an Unready pool, a shutdown
    for task in schedule.admitted:
        assert_one_terminal(task)
        assert finished[task.id] == 1, (task.id, finished[task.id])


def assert_one_terminal(task: Task) -> None:
    log = b"".join(task.frames)
    frames = [f for f in log.split(b"\n\n") if f]
    kinds = [f.split(b"\n", 1)[0].removeprefix(b"event: ").decode() for f in frames]
    terminals = [k for k in kinds if k in ("end", "error")]
    assert terminals == [kinds[-1]], kinds
    if kinds[-1] == "end":
        end = json.loads(frames[-1].split(b"data: ", 1)[1])
        assert end["tokens_out"] == kinds.count("token")


def assert_idle(orch: Orchestrator, engine: FaultyEngine) -> None:
    pool = orch.pools["p1"]
    (replica,) = pool.replicas
    assert not pool.running
    assert sorted(replica.free_slot_ids) == list(range(SLOTS))
    assert sum(r.slots_free for r in pool.replicas) == pool.slots_total
    assert len(pool.queue) == 0
    assert not replica.strict_running
    assert engine.active == 0


@pytest.mark.req("HOME-301", "HOME-304", "HOME-305", "ORCH-3026", "FR-DP-002")
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    # Mutation runs only need to know whether a schedule breaks an invariant, not the
    # smallest one that does.
    phases=[Phase.explicit, Phase.reuse, Phase.generate]
    if MUTATION_RUN
    else [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
@given(
    policy=st.sampled_from(["reject", "drop-lru", "shed-low-priority"]),
    ops=st.lists(OPS, min_size=1, max_size=40),
)
def test_every_task_ends_once_and_every_slot_comes_back(
    tmp_path: Path, policy: str, ops: list[tuple[Any, ...]]
) -> None:
    asyncio.run(run_schedule(tmp_path, policy, ops))
