"""The residency planner while a task waits on a load that takes as long as a real one
(RES-108, RES-104): a held load, a swap whose outgoing pool still decodes, a deadline that
passes meanwhile. The planner looks again only on an event or a time it set that is still
ahead, so a wait of any length costs a handful of looks and the CPU of an idle process.

Each load here is held by a gate the test opens (``Engines.gates``), not by a sleep, so
the states last exactly as long as the test needs on a machine of any speed. The window in
which a spinning planner would show is a plain wait: a correct planner takes the same few
looks in it on a fast machine or a slow one, a spinning one thousands.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from orchestratord.app import Orchestrator
from orchestratord.config import PoolConfig
from orchestratord.placement.fit import Need
from orchestratord.residency.state import Residency, State
from tests.unit.conftest import AUTH, collect_stream
from tests.unit.test_residency import Engines, card, eventually, model, orchestrator, pool, submit

__all__ = ["model"]  # the shared fixture

WINDOW_S = 0.6  # long enough for a spinning planner to take thousands of looks
MAX_LOOKS = 6  # per window: the few events in it, and a timer or two
# Of the window. A spinning planner took ~100 %; an idle test process a few percent alone,
# and up to a third measured inside the full loop (coverage tracing, two busy cores). The
# looks bound above is the exact one; this catches a spin the looks would not count.
MAX_CPU_SHARE = 0.6


async def idle_window(orch: Orchestrator) -> tuple[int, float]:
    """The planner's looks and this process's CPU seconds over one quiet window."""
    looks, cpu = orch.residency.steps, time.process_time()
    await asyncio.sleep(WINDOW_S)
    return orch.residency.steps - looks, time.process_time() - cpu


def assert_idle(looks: int, cpu_s: float, what: str) -> None:
    assert looks <= MAX_LOOKS, f"{looks} planner looks in {WINDOW_S} s while {what}"
    assert cpu_s <= MAX_CPU_SHARE * WINDOW_S, f"{cpu_s:.2f} s of CPU in {WINDOW_S} s while {what}"


def two_on_one_card(tmp_path: Path, model: Path, engines: Engines) -> Orchestrator:
    """Pools a and b on a card with room for one of them, a swap wait of 100 ms."""
    pools = [pool(n, model, devices=[0], keep_alive_ms=600_000) for n in ("a", "b")]
    return orchestrator(tmp_path, engines, pools, gpus=card(1, model),
                        residency={"swap_wait_ms": 100})  # fmt: skip


def decoding_a() -> Engines:
    """Engines whose pool a decodes until the test sets ``release``."""
    engines = Engines()
    engines.release.clear()
    engines.held.add("a")
    return engines


async def a_closed_for_b(conductor: Any, orch: Orchestrator) -> tuple[dict[str, Any], ...]:
    """a's task decodes, b's task waits past the swap wait: a is closed for b. Returns the
    two tasks' bodies."""
    a = orch.pools["a"]
    _, running = await submit(conductor, "a")
    await eventually(lambda: bool(a.running) and a.residency.state is State.LOADED)
    _, waiting = await submit(conductor, "b")
    await eventually(lambda: a.residency.closing)
    return running, waiting


@pytest.fixture
def held_engines() -> Engines:
    engines = Engines()
    engines.gates["a"] = asyncio.Event()
    return engines


@pytest.mark.req("RES-108", "RES-104")
async def test_the_planner_sleeps_while_the_pool_in_the_way_loads(
    tmp_path: Path, model: Path, held_engines: Engines
) -> None:
    """Room for one; a's load is held; b waits past its swap wait. Nothing can be done
    until a's load ends, and the planner does nothing until then."""
    engines = held_engines
    orch = two_on_one_card(tmp_path, model, engines)
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        _, first = await submit(conductor, "a")
        await eventually(lambda: orch.pools["a"].residency.state is State.LOADING)
        _, second = await submit(conductor, "b")
        await eventually(lambda: orch.pools["b"].residency.blocked)
        looks, cpu_s = await idle_window(orch)  # b has waited past its 100 ms swap wait
        engines.gates["a"].set()
        a_frames = await collect_stream(conductor, first["task_id"])
        b_frames = await collect_stream(conductor, second["task_id"])
    assert_idle(looks, cpu_s, "a loads and b waits for it")
    assert a_frames[-1][0] == "end" and b_frames[-1][0] == "end"
    assert engines.built == ["a", "b"]


@pytest.mark.req("RES-108", "RES-105")
async def test_the_planner_sleeps_while_a_swapped_out_pool_finishes_its_task(
    tmp_path: Path, model: Path
) -> None:
    """a decodes (held by the test) and is closed for b after the swap wait; until a's task
    ends there is nothing to do, and the planner does nothing."""
    engines = decoding_a()
    orch = two_on_one_card(tmp_path, model, engines)
    a = orch.pools["a"]
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        running, waiting = await a_closed_for_b(conductor, orch)
        _, another = await submit(conductor, "b")  # an event: the planner looks again
        looks, cpu_s = await idle_window(orch)
        still_loaded = a.residency.state
        engines.release.set()
        a_frames = await collect_stream(conductor, running["task_id"])
        b_frames = [await collect_stream(conductor, t["task_id"]) for t in (waiting, another)]
    assert_idle(looks, cpu_s, "a swapped-out pool's last task decodes")
    assert still_loaded is State.LOADED  # the swap never kills work
    assert a_frames[-1][0] == "end" and all(f[-1][0] == "end" for f in b_frames)
    assert engines.built == ["a", "b"]


@pytest.mark.req("RES-108", "RES-103")
async def test_a_task_that_waits_out_its_deadline_costs_the_planner_nothing_meanwhile(
    tmp_path: Path, model: Path, held_engines: Engines
) -> None:
    """b's deadline passes while a's load is held: b ends with DEADLINE_UNMET, and the
    planner took a bounded number of looks for the whole wait."""
    engines = held_engines
    orch = two_on_one_card(tmp_path, model, engines)
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        _, first = await submit(conductor, "a")
        await eventually(lambda: orch.pools["a"].residency.state is State.LOADING)
        looks, cpu = orch.residency.steps, time.process_time()
        _, second = await submit(conductor, "b", deadline_ms=round(WINDOW_S * 1000))
        b_frames = await collect_stream(conductor, second["task_id"])
        looks, cpu_s = orch.residency.steps - looks, time.process_time() - cpu
        engines.gates["a"].set()
        a_frames = await collect_stream(conductor, first["task_id"])
    assert b_frames[-1][0] == "error" and b_frames[-1][1]["code"] == "DEADLINE_UNMET"
    assert_idle(looks, cpu_s, "b waited out its deadline")
    assert a_frames[-1][0] == "end"


@pytest.mark.req("RES-108", "HARD-204")
async def test_a_model_whose_need_is_read_at_its_load_is_read_off_the_event_loop(
    tmp_path: Path, model: Path
) -> None:
    """The need of a model whose file could not be read at start-up is read when a task
    wants it loaded: in a worker thread. Here the read blocks until the loop has served a
    request meanwhile; inside a planner look it would block the loop and never see one."""
    engines = Engines()
    orch = orchestrator(tmp_path, engines, [pool("a", model, devices=[0])], gpus=card(1, model))
    planner = orch.residency
    del planner.needs["a"]  # as if the file had been unreadable at start-up
    read_need, entered, served = planner.size, threading.Event(), threading.Event()
    assert read_need is not None
    served_meanwhile: list[bool] = []

    def slow_read(config: PoolConfig) -> Need:
        entered.set()
        # A slow disk, until the loop proves it is free by serving a request.
        served_meanwhile.append(served.wait(timeout=5))
        return read_need(config)

    planner.size = slow_read
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        _, body = await submit(conductor, "a")
        await eventually(entered.is_set)
        listing = await conductor.simulate_get("/v1/replicasets", headers=AUTH)
        served.set()
        frames = await collect_stream(conductor, body["task_id"])
    assert listing.status_code == 200
    assert served_meanwhile == [True]  # the loop served the listing while the need was read
    assert frames[-1][0] == "end" and "a" in planner.needs


class _NotIterable(deque[float]):
    def __iter__(self) -> Iterator[float]:
        raise AssertionError("recent_demand walked the whole window")


@pytest.mark.req("RES-103")
def test_recent_demand_is_counted_without_walking_the_window() -> None:
    """600,000 admissions in the window: the count drops what is older than ten minutes
    from the front and reads the length, never walking every admission."""
    residency = Residency("on-demand", 1.0, 1.0, State.UNLOADED)
    residency.demand = _NotIterable(float(t) / 1000 for t in range(600_000))  # 0..600 s
    assert residency.recent_demand(900.0) == 300_000  # those at 300 s and later
    assert residency.recent_demand(900.0) == 300_000


@pytest.mark.req("RES-105")
async def test_a_pool_closed_for_a_swap_opens_again_when_the_newcomer_is_cancelled(
    tmp_path: Path, model: Path
) -> None:
    """a decodes and is closed for b; b's task is then cancelled. Nothing wants a's room any
    more, so a is not unloaded and reloaded: it serves its next task where it is."""
    engines = decoding_a()
    orch = two_on_one_card(tmp_path, model, engines)
    a = orch.pools["a"]
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        running, waiting = await a_closed_for_b(conductor, orch)
        cancelled = await conductor.simulate_post(
            f"/v1/tasks/{waiting['task_id']}/cancel", headers=AUTH
        )
        await eventually(lambda: not a.residency.closing)
        _, next_a = await submit(conductor, "a")
        engines.release.set()
        frames = [await collect_stream(conductor, t["task_id"]) for t in (running, next_a)]
        metrics = (await conductor.simulate_get("/metrics")).text
    assert cancelled.status_code in (200, 202, 204), cancelled.json
    assert all(f[-1][0] == "end" and f[-1][1]["finish_reason"] == "length" for f in frames)
    assert engines.built == ["a"]  # never unloaded, never loaded again
    assert a.residency.state is State.LOADED
    assert 'model_unloads_total{pool_id="a"' not in metrics


@pytest.mark.req("RES-101")
async def test_keep_alive_does_not_unload_an_engine_counting_a_prompt(
    tmp_path: Path, model: Path
) -> None:
    """A task's prompt is being counted on the loaded engine when the pool's keep-alive
    passes: the engine is in use, so the pool stays loaded and the task is admitted."""
    engines = Engines()
    engines.count_gates["a"] = asyncio.Event()
    keep_alive_ms = 100
    orch = orchestrator(tmp_path, engines, [pool("a", model, keep_alive_ms=keep_alive_ms)])
    a = orch.pools["a"]
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        _, first = await submit(conductor, "a")
        await collect_stream(conductor, first["task_id"])
        counted = asyncio.create_task(submit(conductor, "a", prompt="word " * 60))
        await eventually(lambda: "a" in engines.counting)
        await asyncio.sleep(3 * keep_alive_ms / 1000)  # the keep-alive passes meanwhile
        state_while_counting = a.residency.state
        engines.count_gates["a"].set()
        answer, body = await counted
        frames = await collect_stream(conductor, body["task_id"])
    assert state_while_counting is State.LOADED
    assert answer.status_code == 202, answer.json
    assert frames[-1][0] == "end" and engines.built == ["a"]
