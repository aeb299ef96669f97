"""The parts of RES-101..103 and RES-201 that the scenario-sized tests leave out: a task's
keep-alive bounded by the pool's ``max_keep_alive_ms``, a fit counted against the loads
still under way, eviction by recent demand and not by arrival order, and when a waiting
stream is told its predicted start again.

Loads are held by gates the test opens (Engines.gates); nothing waits on the mock being
slow or fast."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from orchestratord.adapters.mock import MockAdapter
from orchestratord.core import waiting
from orchestratord.residency.state import State
from tests.unit.conftest import AUTH, collect_stream, held_handler, task_body
from tests.unit.test_residency import (
    Engines,
    card,
    eventually,
    model,
    need_mb,
    orchestrator,
    pool,
    settled,
    submit,
)

__all__ = ["model"]  # the shared fixture


async def replicasets(conductor: Any) -> dict[str, dict[str, Any]]:
    answer = await conductor.simulate_get("/v1/replicasets", headers=AUTH)
    return {s["id"]: s["residency"] for s in answer.json}


@pytest.mark.req("RES-101")
async def test_a_tasks_keep_alive_is_bounded_by_the_pools_max_keep_alive(
    tmp_path: Path, model: Path
) -> None:
    engines = Engines()
    pools = [pool("a", model, keep_alive_ms=100, max_keep_alive_ms=300)]
    orch = orchestrator(tmp_path, engines, pools)
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        _, body = await submit(conductor, "a", keep_alive_ms=3_600_000)  # asks for an hour
        frames = await collect_stream(conductor, body["task_id"])
        await settled(orch, ("a",))
        kept = (await replicasets(conductor))["a"]["keep_alive_ms"]
        await eventually(lambda: orch.pools["a"].residency.state is State.UNLOADED)
        metrics = (await conductor.simulate_get("/metrics")).text
    assert frames[-1][0] == "end"
    assert kept == 300  # the pool's bound, not the task's hour
    assert 'model_unloads_total{pool_id="a",reason="idle"} 1.0' in metrics


@pytest.mark.req("RES-102")
async def test_a_load_is_fitted_against_the_loads_still_under_way(
    tmp_path: Path, model: Path
) -> None:
    """Room for one. a's load is held; a task for b arrives meanwhile. Nothing is resident
    yet, so a fit that counted only resident engines would start b beside a: b waits, and
    its engine is built only once a's has been stopped for it."""
    engines = Engines()
    engines.gates["a"] = asyncio.Event()
    pools = [pool(n, model, devices=[0], keep_alive_ms=600_000) for n in ("a", "b")]
    orch = orchestrator(tmp_path, engines, pools, gpus=card(1, model),
                        residency={"swap_wait_ms": 100})  # fmt: skip
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        _, first = await submit(conductor, "a")
        await eventually(lambda: orch.pools["a"].residency.state is State.LOADING)
        _, second = await submit(conductor, "b")
        await eventually(lambda: bool(orch.pools["b"].queue))
        during = (orch.pools["b"].residency.state, list(engines.built))
        engines.gates["a"].set()
        a_frames = await collect_stream(conductor, first["task_id"])
        b_frames = await collect_stream(conductor, second["task_id"])
    assert during == (State.UNLOADED, ["a"])  # b was not started beside the loading a
    assert a_frames[-1][0] == "end" and b_frames[-1][0] == "end"
    assert engines.built == ["a", "b"]
    b_built_beside = dict(engines.existing_at_build)["b"]
    assert "a" not in b_built_beside  # a's engine was gone before b's was built


@pytest.mark.req("RES-103")
async def test_eviction_weighs_recent_demand_not_the_order_of_loading_or_use(
    tmp_path: Path, model: Path
) -> None:
    """Room for two of three, equal load times. 'busy' loaded first and was asked for three
    times; 'rare' loaded last and was used last, once. Loading order (first in, first out)
    and last use would both evict 'busy'; the cost of losing each (load time x demand)
    evicts 'rare'."""
    engines = Engines()
    engines.load_s.update(busy=0.2, rare=0.2, c=0.05)
    pools = [pool(n, model, devices=[0], keep_alive_ms=600_000) for n in ("busy", "rare", "c")]
    orch = orchestrator(tmp_path, engines, pools, gpus=card(2, model),
                        residency={"swap_wait_ms": 100})  # fmt: skip
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        for name in ("busy", "busy", "busy", "rare"):
            _, body = await submit(conductor, name)
            assert (await collect_stream(conductor, body["task_id"]))[-1][0] == "end"
        _, body = await submit(conductor, "c")
        frames = await collect_stream(conductor, body["task_id"])
        states = await settled(orch, ("busy", "rare", "c"))
        loads = {n: orch.pools[n].residency.last_load_s for n in ("busy", "rare")}
    assert frames[-1][0] == "end"
    assert states == {"busy": State.LOADED, "rare": State.UNLOADED, "c": State.LOADED}, loads


@pytest.mark.req("RES-201")
async def test_a_waiting_stream_is_told_again_when_its_prediction_moves_a_half_second_step(
    conductor_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same place, same reason: a new ``queued`` frame only when the predicted start moves
    into another 500 ms step; a change of place or reason is told at once."""
    release = asyncio.Event()
    predictions = iter([1200, 1400, 1499, 1500, 1900, 2100, 2100])
    async with conductor_for(MockAdapter(held_handler(release, first_tokens=0)), slots=1) as (
        orch,
        conductor,
    ):
        running, queued = task_body(), task_body()
        for body in (running, queued):
            await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH)
        p1 = orch.pools["p1"]
        task = orch.registry.get(queued["task_id"])
        assert task is not None
        await eventually(lambda: not p1.slots_free)
        monkeypatch.setattr(waiting, "predict_start_ms", lambda pool, position: next(predictions))
        before = len(task.frames)
        told = []
        for _ in range(6):
            waiting.tell(p1, task, 0.0)
            told.append(len(task.frames) - before)
        monkeypatch.undo()
        release.set()
        await collect_stream(conductor, running["task_id"])
    # 1200 (first), 1400 and 1499 (same step), 1500 (next step), 1900 (same), 2100 (next)
    assert told == [1, 1, 1, 2, 2, 3], told


@pytest.mark.req("RES-202")
async def test_replica_sets_and_pool_health_report_where_what_when_and_until_when(
    tmp_path: Path, model: Path
) -> None:
    """A held load reads ``loading``; the loaded pool's replica has its card and VRAM, its
    load time and the wall-clock time it loaded, how long it has been idle and when it
    unloads; a failed load says until when the pool refuses."""
    engines = Engines()
    engines.gates["a"] = asyncio.Event()
    engines.broken.add("bad")
    pools = [pool("a", model, devices=[0], keep_alive_ms=600_000), pool("bad", model)]
    orch = orchestrator(tmp_path, engines, pools, gpus=card(1, model),
                        residency={"load_failure_backoff_ms": 60_000})  # fmt: skip
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        before_ms = time.time() * 1000
        _, body = await submit(conductor, "a")
        await eventually(lambda: orch.pools["a"].residency.state is State.LOADING)
        loading = (await replicasets(conductor))["a"]
        engines.gates["a"].set()
        await collect_stream(conductor, body["task_id"])
        await settled(orch, ("a",))
        after_ms = time.time() * 1000
        first = await conductor.simulate_get("/v1/replicasets", headers=AUTH)
        idle_before = next(s for s in first.json if s["id"] == "a")["residency"]["idle_ms"]
        await asyncio.sleep(0.05)  # some idle time passes, so idle_ms must grow
        sets = {s["id"]: s for s in (await conductor.simulate_get(
            "/v1/replicasets", headers=AUTH)).json}  # fmt: skip
        health = (await conductor.simulate_get("/v1/pools/a/health", headers=AUTH)).json
        _, broken = await submit(conductor, "bad")
        await collect_stream(conductor, broken["task_id"])
        failed_at_ms = time.time() * 1000
        bad = (await conductor.simulate_get("/v1/pools/bad/health", headers=AUTH)).json
    assert loading["state"] == "loading" and loading["mode"] == "on-demand"
    a = sets["a"]
    residency = a["residency"]
    assert residency["state"] == "loaded"
    assert before_ms <= residency["loaded_at_ms"] <= after_ms
    assert residency["idle_ms"] > idle_before >= 0
    assert 0 < residency["unloads_in_ms"] <= 600_000 and residency["last_load_ms"] > 0
    (replica,) = a["replicas"]
    (device,) = replica["devices"]
    assert device["index"] == 0 and device["vram_bytes"] > 0
    assert -(-device["vram_bytes"] // (1024 * 1024)) <= need_mb(model)
    assert health["residency"]["state"] == "loaded"
    assert health["residency"]["loaded_at_ms"] == residency["loaded_at_ms"]
    assert bad["residency"]["state"] == "failed"
    assert failed_at_ms < bad["residency"]["failed_until_ms"] <= failed_at_ms + 60_000
    assert bad["residency"]["failure"]
