"""A pool of several replicas: one queue, placement per task, failures per replica."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestratord.adapters.mock import MockAdapter, word_handler
from orchestratord.core.task import Task
from orchestratord.placement.choose import choose_replica
from tests.unit.conftest import AUTH, collect_stream, held_handler, new_task, task_body
from tests.unit.faulty_engine import FaultyEngine
from xtask.fakes.model_files import write_shaped_gguf

DECLARED_BOX = {
    "source": "declared",
    "declared": [
        {"index": 0, "name": "RTX 3090", "vram_total_mb": 24576},
        {"index": 1, "name": "RTX 3060", "vram_total_mb": 12288},
    ],
}


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - observing state from outside, as a client would
            await asyncio.sleep(0.005)


async def submit(conductor: Any, **fields: Any) -> Any:
    return await conductor.simulate_post("/v1/tasks", json=task_body(**fields), headers=AUTH)


@pytest.fixture
def small_model(tmp_path: Path) -> Path:
    """A 1B-shaped f16 file (about 2 GiB): fits both declared cards."""
    path = tmp_path / "1b.gguf"
    write_shaped_gguf(path, n_layer=16, n_embd=2048, n_head=16, n_head_kv=4, n_ff=5632)
    return path


@pytest.mark.req("HOME-1001", "ORCH-3008", "OC-CORE-1011")
async def test_tasks_spread_over_the_replicas_least_loaded_first(conductor_for: Any) -> None:
    release = asyncio.Event()
    engines = [MockAdapter(held_handler(release), slots=2) for _ in range(2)]
    async with conductor_for(engines, replicas=2, slots=2) as (orch, conductor):
        pool = orch.pools["p1"]
        ids = [(await submit(conductor, max_tokens=4)).json["task_id"] for _ in range(4)]
        placed = [orch.registry.get(i).replica_id for i in ids]  # type: ignore[union-attr]
        # One free slot more decides: r0, r1, r0, r1 — never both tasks on one replica first.
        assert placed == ["p1-r0", "p1-r1", "p1-r0", "p1-r1"]
        assert [r.slots_free for r in pool.replicas] == [0, 0]
        sets = (await conductor.simulate_get("/v1/replicasets", headers=AUTH)).json
        assert [(r["id"], r["slots_free"], r["load"]) for r in sets[0]["replicas"]] == [
            ("p1-r0", 0, 1.0),
            ("p1-r1", 0, 1.0),
        ]
        release.set()
        for task_id in ids:
            assert (await collect_stream(conductor, task_id))[-1][0] == "end"


@pytest.mark.req("HOME-1001", "ORCH-3008", "OC-CORE-1010")
async def test_a_failed_replica_is_unready_on_its_own_and_the_other_keeps_serving(
    conductor_for: Any,
) -> None:
    healthy, failing = FaultyEngine(slots=1), FaultyEngine(slots=1)
    async with conductor_for([failing, healthy], replicas=2, slots=1) as (orch, conductor):
        pool = orch.pools["p1"]
        for replica in pool.replicas:
            replica.runtime = dataclasses.replace(replica.runtime, monitor_interval_s=30.0)
        failing.down = True
        first = (await submit(conductor, max_tokens=3)).json["task_id"]
        # r0 refused the connection: Unready at once, the task went back and ran on r1.
        frames = await collect_stream(conductor, first)
        assert frames[-1][0] == "end"
        assert orch.registry.get(first).replica_id == "p1-r1"  # type: ignore[union-attr]
        assert [r.ready for r in pool.replicas] == [False, True]
        health = (await conductor.simulate_get("/v1/pools/p1/health", headers=AUTH)).json
        assert health["ready"] is True
        assert [(r["id"], r["ready"]) for r in health["replicas"]] == [
            ("p1-r0", False),
            ("p1-r1", True),
        ]
        assert "p1-r0: the engine is unavailable" in health["last_error"]
        for _ in range(3):  # everything now runs on the healthy replica
            task_id = (await submit(conductor, max_tokens=2)).json["task_id"]
            assert (await collect_stream(conductor, task_id))[-1][0] == "end"
            assert orch.registry.get(task_id).replica_id == "p1-r1"  # type: ignore[union-attr]


@pytest.mark.req("HOME-1001", "ORCH-3011", "OC-CORE-1012", "OC-POOL-3020")
async def test_replicas_are_placed_on_declared_gpus_and_published(
    conductor_for: Any, tmp_path: Path, small_model: Path
) -> None:
    engines = [MockAdapter(slots=2) for _ in range(2)]
    async with conductor_for(
        engines, devices=[0, 1], model_path=small_model, gpus=DECLARED_BOX
    ) as (orch, conductor):
        sets = (await conductor.simulate_get("/v1/replicasets", headers=AUTH)).json
        replicas = sets[0]["replicas"]
        assert [[d["index"] for d in r["devices"]] for r in replicas] == [[0], [1]]
        assert [r["devices"][0]["name"] for r in replicas] == ["RTX 3090", "RTX 3060"]
        need = replicas[0]["devices"][0]["vram_bytes"]
        assert need == replicas[1]["devices"][0]["vram_bytes"] > 1024**3
        caps = (await conductor.simulate_get("/v1/capabilities", headers=AUTH)).json
        (pool,) = caps["engines"][0]["pools"]
        assert [r["devices"] for r in pool["replicas"]] == [[0], [1]]
        release = asyncio.Event()
        for engine in engines:
            engine.handler = held_handler(release)
        busy = (await submit(conductor, max_tokens=4)).json["task_id"]
        # Same free slots on both: the replica on the card with more free VRAM takes it.
        assert orch.registry.get(busy).replica_id == "p1-r0"  # type: ignore[union-attr]
        orch.devices.refresh(orch.replicas(), orch.metrics)
        text = (await conductor.simulate_get("/metrics")).text
        release.set()
        await collect_stream(conductor, busy)
    # The declared inventory's accounting: placed VRAM per replica, slot share as utilization.
    samples = {
        (s.name, s.labels["replica_id"], s.labels["device"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in ("vram_used_bytes", "gpu_utilization")
    }
    assert samples == {
        ("vram_used_bytes", "p1-r0", "0"): need,
        ("vram_used_bytes", "p1-r1", "1"): need,
        ("gpu_utilization", "p1-r0", "0"): 0.5,
        ("gpu_utilization", "p1-r1", "1"): 0.0,
    }


@pytest.mark.req("HOME-1001", "ORCH-3008", "OC-CORE-1011")
def test_placement_prefers_free_slots_then_free_vram_then_decode_speed() -> None:
    class Candidate:
        def __init__(self, name: str, free: int, vram: int, rate: float) -> None:
            self.id, self.slots_free, self.vram, self.decode_tokens_per_s = name, free, vram, rate
            self.ready = True

        def can_take(self, task: Task) -> bool:
            return self.ready and self.slots_free > 0

    a, b, c = Candidate("a", 1, 10, 50.0), Candidate("b", 2, 5, 10.0), Candidate("c", 2, 5, 90.0)
    task = new_task()

    def free_vram(r: Any) -> int:
        return int(r.vram)

    def pick(*candidates: Candidate) -> str | None:
        chosen = choose_replica(candidates, task, free_vram)  # type: ignore[arg-type]
        return chosen.id if chosen is not None else None

    assert pick(a, b) == "b"  # more free slots
    assert pick(b, c) == "c"  # same slots and VRAM: the faster decoder
    b.vram = 6
    assert pick(b, c) == "b"  # more free VRAM beats speed
    b.ready = c.ready = False
    assert pick(b, c) is None


@pytest.mark.req("HOME-801", "ORCH-2104", "OC-CTRL-2004")
async def test_cancels_count_on_the_replica_and_the_slo_reads_first_token_times(
    conductor_for: Any,
) -> None:
    async def slow_first_token(request: Any) -> Any:
        await asyncio.sleep(0.05)  # every first token comes at least 50 ms after admission
        async for event in word_handler()(request):
            yield event

    release = asyncio.Event()
    engines = [MockAdapter(slow_first_token), MockAdapter(held_handler(release))]
    async with conductor_for(engines, replicas=2, slots=1) as (orch, conductor):
        started = asyncio.get_running_loop().time()
        done = []
        for _ in range(3):  # r0 takes them one after another while r1 is busy
            task_id = (await submit(conductor, max_tokens=2)).json["task_id"]
            if not done:
                held = (await submit(conductor, max_tokens=4)).json["task_id"]
            done.append((await collect_stream(conductor, task_id))[-1][0])
        elapsed_ms = (asyncio.get_running_loop().time() - started) * 1000
        assert orch.registry.get(held).replica_id == "p1-r1"  # type: ignore[union-attr]
        busy = (await conductor.simulate_get("/v1/replicasets", headers=AUTH)).json
        assert (
            await conductor.simulate_post(f"/v1/tasks/{held}/cancel", headers=AUTH)
        ).status_code == 204
        sets = (await conductor.simulate_get("/v1/replicasets", headers=AUTH)).json
        text = (await conductor.simulate_get("/metrics")).text
    assert done == ["end", "end", "end"]
    # While r1 held its task: one of two slots busy, nothing queued.
    assert (busy[0]["engine"], busy[0]["slots_total"], busy[0]["slots_free"]) == ("llamacpp", 2, 1)
    assert busy[0]["load"] == 0.5 and [r["load"] for r in busy[0]["replicas"]] == [0.0, 1.0]
    slo = sets[0]["slo"]
    assert slo["samples"] == 4  # the three finished tasks and the canceled one, which had begun
    assert 50 <= slo["first_token_ms_p50"] <= slo["first_token_ms_p95"] <= elapsed_ms
    canceled = {
        s.labels["replica_id"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "tasks_canceled_total"
    }
    assert canceled == {"p1-r1": 1.0}
