"""Models on demand with the mock engine (RES-101..107, RES-201..205): loads on the first
task, unloads after the keep-alive, evicts the cheapest idle pool, never kills work for a
swap, fails loads cleanly, and tells a waiting stream what it waits for.

The pools are on-demand mock engines; GPU pools sit on a declared card sized so that only
some of them fit at once. The real-engine versions are in tests/e2e/test_on_demand.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from orchestratord.adapters.base import (
    EngineAdapter,
    EngineInfo,
    EngineReset,
    GenerationRequest,
    StreamEnd,
    StreamEvent,
    TokenChunk,
)
from orchestratord.adapters.mock import MockAdapter, seeded_words
from orchestratord.app import Orchestrator
from orchestratord.config import Config, PoolConfig
from orchestratord.devices.inventory import MIB
from orchestratord.models.gguf_shape import read_model_shape
from orchestratord.models.tiny_gguf import ensure_tiny_model
from orchestratord.placement.fit import replica_need
from orchestratord.replicas.replica import ReplicaSpec
from orchestratord.residency.state import State
from tests.contract_schemas import assert_frames_match
from tests.unit.conftest import AUTH, TOKEN, collect_stream, held_handler, task_body

RESERVE_MB = 64


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - observing state from outside, as a client would
            await asyncio.sleep(0.005)


async def settled(orch: Orchestrator, names: tuple[str, ...]) -> dict[str, State]:
    """The pools' states once none is mid-load or mid-unload: a task may start (and end) on
    a replica that is Ready a moment before its load job marks the pool loaded."""
    moving = (State.LOADING, State.UNLOADING)
    await eventually(lambda: all(orch.pools[n].residency.state not in moving for n in names))
    return {n: orch.pools[n].residency.state for n in names}


class Engines:
    """Builds each load's engine: a mock whose start takes ``load_s[pool]`` seconds, or
    until the test opens ``gates[pool]`` (a load held as long as the test needs, as a real
    model's 5-30 s load is), that fails to start for the pools in ``broken``, and whose
    decodes can be held."""

    def __init__(self) -> None:
        self.load_s: dict[str, float] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.broken: set[str] = set()
        self.built: list[str] = []
        self.built_models: list[str] = []
        self.release = asyncio.Event()
        self.release.set()
        self.held: set[str] = set()
        self.stop_s: dict[str, float] = {}
        self.live: set[str] = set()  # pools whose engine has started and not yet stopped
        self.alive_at_start: list[tuple[str, set[str]]] = []  # (pool, engines alive then)
        self.existing: set[str] = set()  # pools whose engine was built and not yet closed
        self.existing_at_build: list[tuple[str, set[str]]] = []
        self.count_gates: dict[str, asyncio.Event] = {}  # holds a prompt count on the engine
        self.counting: set[str] = set()  # pools whose engine is counting a prompt now

    def __call__(self, config: PoolConfig, spec: ReplicaSpec) -> EngineAdapter:
        self.built.append(config.id)
        self.built_models.append(config.model_ref)
        self.existing_at_build.append((config.id, set(self.existing)))
        self.existing.add(config.id)
        engines = self

        async def generate(request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
            words = seeded_words(request.seed, request.max_tokens)
            for index, word in enumerate(words):
                if index == 1 and config.id in engines.held:
                    await engines.release.wait()
                yield TokenChunk(word)
            yield StreamEnd("length", 2, 0, len(words), 1.0)

        class Loading(MockAdapter):
            async def info(self) -> EngineInfo:
                engines.alive_at_start.append((config.id, set(engines.live)))
                await asyncio.sleep(engines.load_s.get(config.id, 0.0))
                gate = engines.gates.get(config.id)
                if gate is not None:
                    await gate.wait()
                if config.id in engines.broken:
                    raise EngineReset(
                        f"{config.model_ref}: no tensors",
                        public_message="the model file is not a valid GGUF",
                    )
                engines.live.add(config.id)
                return await super().info()

            async def count_tokens(self, text: str) -> int:
                gate = engines.count_gates.get(config.id)
                if gate is not None:
                    engines.counting.add(config.id)
                    await gate.wait()
                    engines.counting.discard(config.id)
                return await super().count_tokens(text)

            async def aclose(self) -> None:
                await asyncio.sleep(engines.stop_s.get(config.id, 0.0))
                engines.live.discard(config.id)
                engines.existing.discard(config.id)
                await super().aclose()

        return Loading(generate, version=f"mock-{config.id}")


def pool(pool_id: str, model: Path, **fields: Any) -> dict[str, Any]:
    return {"id": pool_id, "model_ref": f"m-{pool_id}", "model_path": str(model),
            "residency": "on-demand", "slots": 1, "ctx_max": 256,
            "queue": {"capacity": 16}, **fields}  # fmt: skip


def orchestrator(
    tmp_path: Path, engines: Engines, pools: list[dict[str, Any]], inventory: Any = None,
    **top: Any,
) -> Orchestrator:  # fmt: skip
    config = Config.model_validate(
        {
            "server": {"engine_self_test": False, "heartbeat_ms": 50},
            "state_dir": str(tmp_path / "state"),
            "cache_dir": str(tmp_path / "c"),
            "pools": pools,
            **top,
        }
    )
    injected: dict[str, Any] = {
        p["id"]: [] if p.get("residency") == "on-demand" else [MockAdapter()] for p in pools
    }
    return Orchestrator(
        config, token=TOKEN, adapters=injected, adapter_factory=engines, inventory=inventory
    )


def need_mb(model: Path) -> int:
    config = PoolConfig(id="x", model_ref="m", model_path=model, slots=1, ctx_max=256, devices=[0])
    return -(-replica_need(config, read_model_shape(model), RESERVE_MB * MIB).total() // MIB)


def card(room_for: int, model: Path) -> dict[str, Any]:
    """A declared card with room for ``room_for`` of these models at once."""
    total = max(256, need_mb(model) * room_for + need_mb(model) // 2)
    used = total - (need_mb(model) * room_for + need_mb(model) // 2)
    return {"source": "declared", "reserve_mb": RESERVE_MB,
            "declared": [{"index": 0, "name": "card", "vram_total_mb": total,
                          "vram_used_mb": used}]}  # fmt: skip


async def submit(conductor: Any, pool_id: str, **fields: Any) -> tuple[Any, dict[str, Any]]:
    fields = {"model_ref": f"m-{pool_id}", **fields}
    body = task_body(ctx=256, session_id=str(uuid.uuid4()), **fields)
    return await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH), body


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return ensure_tiny_model(tmp_path / "gen")


@pytest.mark.req("RES-101", "RES-107", "RES-201", "RES-205")
async def test_a_pool_loads_on_its_first_task_and_the_stream_says_so(
    tmp_path: Path, model: Path
) -> None:
    engines = Engines()
    engines.load_s["a"] = 0.8
    orch = orchestrator(tmp_path, engines, [pool("a", model)])
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        assert orch.pools["a"].replicas == [] and engines.built == []  # nothing at start
        admitted, body = await submit(conductor, "a")
        frames = await collect_stream(conductor, body["task_id"])
        state = (await settled(orch, ("a",)))["a"]
        metrics = (await conductor.simulate_get("/metrics")).text
    assert admitted.status_code == 202
    # No load measured yet: the estimate (a couple of seconds) is in the prediction.
    assert admitted.json["predicted_start_ms"] >= 2000
    events = [e for e, _ in frames]
    assert events[0] == "queued" and frames[0][1]["waiting_for"] == "load"
    assert "loading" in events and events.index("loading") < events.index("started")
    loading = next(p for e, p in frames if e == "loading")
    assert loading["model_ref"] == "m-a" and loading["expected_ms"] >= 2000
    assert events[-1] == "end"
    assert_frames_match(frames)
    assert state is State.LOADED and engines.built == ["a"]
    assert 'model_loads_total{pool_id="a",result="ok"} 1.0' in metrics
    assert 'model_load_seconds_count{pool_id="a"} 1.0' in metrics
    assert "\nmodels_loaded 1.0\n" in metrics


@pytest.mark.req("RES-101", "RES-205")
async def test_an_idle_pool_unloads_after_its_keep_alive_or_the_tasks(
    tmp_path: Path, model: Path
) -> None:
    engines = Engines()
    pools = [pool("a", model, keep_alive_ms=200), pool("b", model, keep_alive_ms=200)]
    orch = orchestrator(tmp_path, engines, pools)
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        _, first = await submit(conductor, "a")
        _, second = await submit(conductor, "b", keep_alive_ms=60_000)  # this task asks more
        await collect_stream(conductor, first["task_id"])
        await collect_stream(conductor, second["task_id"])
        a, b = orch.pools["a"].residency, orch.pools["b"].residency
        await eventually(lambda: a.state is State.UNLOADED)
        await asyncio.sleep(0.3)
        b_state = b.state
        metrics = (await conductor.simulate_get("/metrics")).text
    assert orch.pools["a"].replicas == []
    assert b_state is State.LOADED  # its task's keep-alive (1 min) wins over 200 ms
    assert 'model_unloads_total{pool_id="a",reason="idle"} 1.0' in metrics


@pytest.mark.req("RES-102", "RES-103", "RES-205")
async def test_the_cheapest_idle_pool_is_evicted_for_a_load(tmp_path: Path, model: Path) -> None:
    """Room for two of three. 'slow' took long to load, 'quick' did not: a load of 'c'
    evicts 'quick', although 'slow' was loaded first."""
    engines = Engines()
    engines.load_s.update(slow=0.5, quick=0.05, c=0.05)
    pools = [pool(n, model, devices=[0], keep_alive_ms=600_000) for n in ("slow", "quick", "c")]
    orch = orchestrator(tmp_path, engines, pools, gpus=card(2, model),
                        residency={"swap_wait_ms": 100})  # fmt: skip
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        for name in ("slow", "quick"):
            _, body = await submit(conductor, name)
            await collect_stream(conductor, body["task_id"])
        _, body = await submit(conductor, "c")
        frames = await collect_stream(conductor, body["task_id"])
        states = await settled(orch, ("slow", "quick", "c"))
        metrics = (await conductor.simulate_get("/metrics")).text
    assert frames[-1][0] == "end"
    assert states == {"slow": State.LOADED, "quick": State.UNLOADED, "c": State.LOADED}
    assert 'model_unloads_total{pool_id="quick",reason="evicted"} 1.0' in metrics
    assert 'model_swaps_total{pool_id="quick"} 1.0' in metrics  # made way for another
    assert 'model_swaps_total{pool_id="slow"}' not in metrics
    assert "\nmodels_loaded 2.0\n" in metrics


@pytest.mark.req("RES-103", "RES-105", "RES-201")
async def test_a_swap_never_kills_work_and_the_waiting_task_hears_why(
    tmp_path: Path, model: Path
) -> None:
    engines = Engines()
    engines.release.clear()
    engines.held.add("a")
    pools = [pool(n, model, devices=[0], keep_alive_ms=600_000) for n in ("a", "b")]
    orch = orchestrator(tmp_path, engines, pools, gpus=card(1, model),
                        residency={"swap_wait_ms": 300})  # fmt: skip
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        _, running = await submit(conductor, "a")
        await eventually(lambda: bool(orch.pools["a"].running))
        _, queued_a = await submit(conductor, "a")  # a's queue keeps it busy
        _, waiting = await submit(conductor, "b")
        stream = asyncio.create_task(collect_stream(conductor, waiting["task_id"]))
        await eventually(lambda: orch.pools["a"].residency.closing)  # past swap_wait
        closed = orch.pools["a"].residency.closing  # ... and its task still runs
        b_before = orch.pools["b"].residency.state
        engines.release.set()
        b_frames = await stream
        a_frames = await collect_stream(conductor, running["task_id"])
        queued_frames = await collect_stream(conductor, queued_a["task_id"])
        metrics = (await conductor.simulate_get("/metrics")).text
    assert closed and b_before is State.UNLOADED
    assert a_frames[-1][0] == "end" and a_frames[-1][1]["finish_reason"] == "length"
    assert queued_frames[-1][0] == "end"  # a's queued task ran after b, on a's next load
    assert engines.built == ["a", "b", "a"]  # b, made way for, loaded before a came back
    waits = [p["waiting_for"] for e, p in b_frames if e == "queued"]
    assert waits[0] in ("swap", "load") and "swap" in waits
    events = [e for e, _ in b_frames]  # b's load is instant, shorter than a tick: still told
    assert "loading" in events and events.index("loading") < events.index("started")
    assert b_frames[-1][0] == "end"
    assert 'model_swaps_total{pool_id="a"} 1.0' in metrics


@pytest.mark.req("RES-106")
async def test_a_failed_load_ends_its_waiting_tasks_and_touches_nothing_else(
    tmp_path: Path, model: Path
) -> None:
    engines = Engines()
    engines.broken.add("bad")
    pools = [pool("bad", model), pool("good", model, residency="pinned")]
    orch = orchestrator(tmp_path, engines, pools, residency={"load_failure_backoff_ms": 60_000})
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        _, waited = await submit(conductor, "bad")
        frames = await collect_stream(conductor, waited["task_id"])
        refused, _ = await submit(conductor, "bad")
        served, body = await submit(conductor, "good")
        good = await collect_stream(conductor, body["task_id"])
        health = (await conductor.simulate_get("/v1/pools/bad/health", headers=AUTH)).json
    assert frames[-1][0] == "error" and frames[-1][1]["code"] == "MODEL_LOAD_FAILED"
    assert "the model file is not a valid GGUF" in frames[-1][1]["message"]
    assert refused.status_code == 503 and refused.json["code"] == "MODEL_LOAD_FAILED"
    assert 50_000 <= refused.json["retry_after_ms"] <= 60_000
    assert served.status_code == 202 and good[-1][0] == "end"
    assert health["residency"]["state"] == "failed"
    assert "not a valid GGUF" in health["residency"]["failure"]


@pytest.mark.req("RES-106")
async def test_a_sibling_that_fails_to_start_leaves_the_serving_replica_alone(
    tmp_path: Path, model: Path
) -> None:
    """Two replicas load; the first comes up and takes a task, the second fails later:
    the task ends normally on the first, which keeps serving; the pool says what failed."""
    second_may_fail = asyncio.Event()
    release = asyncio.Event()

    class OneBroken(Engines):
        def __call__(self, config: PoolConfig, spec: ReplicaSpec) -> EngineAdapter:
            if spec.index == 0:
                return MockAdapter(held_handler(release))

            class FailsLate(MockAdapter):
                async def info(self) -> EngineInfo:
                    await second_may_fail.wait()
                    raise EngineReset("no tensors", public_message="the model file is broken")

            return FailsLate()

    orch = orchestrator(tmp_path, OneBroken(), [pool("two", model, replicas=2)])
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        first, body = await submit(conductor, "two")
        two = orch.pools["two"]
        await eventually(lambda: len(two.running) == 1)  # on replica 0, while 1 still starts
        second_may_fail.set()
        await eventually(lambda: two.residency.state is not State.LOADING)
        release.set()
        frames = await collect_stream(conductor, body["task_id"])
        after, later = await submit(conductor, "two")
        later_frames = await collect_stream(conductor, later["task_id"])
        health = (await conductor.simulate_get("/v1/pools/two/health", headers=AUTH)).json
    assert first.status_code == 202 and frames[-1][0] == "end", frames[-1]
    assert frames[-1][1]["finish_reason"] == "length"
    assert two.residency.state is State.LOADED and [r.spec.index for r in two.replicas] == [0]
    assert after.status_code == 202 and later_frames[-1][0] == "end"
    assert "1 of 2 replicas did not start" in health["last_error"]
    assert "the model file is broken" in health["last_error"]


@pytest.mark.req("RES-106", "HARD-106")
async def test_a_load_that_cannot_be_prepared_tells_the_client_no_path_or_os_text(
    tmp_path: Path, model: Path
) -> None:
    secret = str(tmp_path / "private" / "sockets" / "engine-0.sock")

    class Unbuildable(Engines):
        def __call__(self, config: PoolConfig, spec: ReplicaSpec) -> EngineAdapter:
            raise PermissionError(13, "Permission denied", secret)

    orch = orchestrator(tmp_path, Unbuildable(), [pool("bad", model)])
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        _, waited = await submit(conductor, "bad")
        frames = await collect_stream(conductor, waited["task_id"])
        health = (await conductor.simulate_get("/v1/pools/bad/health", headers=AUTH)).json
    error = frames[-1][1]
    assert frames[-1][0] == "error" and error["code"] == "MODEL_LOAD_FAILED"
    assert "PermissionError" in error["message"], error
    assert secret not in error["message"] and "Permission denied" not in error["message"]
    assert secret not in json.dumps(health)


@pytest.mark.req("RES-106", "RES-101")
async def test_a_deadline_that_passes_during_a_load_ends_the_task(
    tmp_path: Path, model: Path
) -> None:
    engines = Engines()
    engines.load_s["a"] = 1.5
    orch = orchestrator(tmp_path, engines, [pool("a", model)])
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        _, body = await submit(conductor, "a", deadline_ms=300)
        frames = await collect_stream(conductor, body["task_id"])
    assert frames[-1][0] == "error" and frames[-1][1]["code"] == "DEADLINE_UNMET"


@pytest.mark.req("RES-203", "RES-202")
async def test_unload_now_is_refused_with_a_reason_while_there_is_work(
    tmp_path: Path, model: Path
) -> None:
    engines = Engines()
    engines.release.clear()
    engines.held.add("a")
    pools = [pool("a", model, keep_alive_ms=600_000), pool("pinned", model, residency="pinned")]
    orch = orchestrator(tmp_path, engines, pools)
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        _, body = await submit(conductor, "a")
        # Running, and its load finished (the task may start a moment before the pool
        # reports it loaded; then an unload is refused as "loading").
        a = orch.pools["a"]
        await eventually(lambda: bool(a.running) and a.residency.state is State.LOADED)
        busy = await conductor.simulate_post("/v1/pools/a/unload", headers=AUTH)
        pinned = await conductor.simulate_post("/v1/pools/pinned/unload", headers=AUTH)
        engines.release.set()
        await collect_stream(conductor, body["task_id"])
        await eventually(lambda: not orch.pools["a"].running)
        sets = {s["id"]: s for s in (await conductor.simulate_get(
            "/v1/replicasets", headers=AUTH)).json}  # fmt: skip
        done = await conductor.simulate_post("/v1/pools/a/unload", headers=AUTH)
        await eventually(lambda: orch.pools["a"].residency.state is State.UNLOADED)
    assert busy.status_code == 409 and "1 running" in busy.json["message"]
    assert pinned.status_code == 409 and "pinned" in pinned.json["message"]
    residency = sets["a"]["residency"]
    assert residency["mode"] == "on-demand" and residency["state"] == "loaded"
    assert residency["unloads_in_ms"] > 500_000 and residency["last_load_ms"] is not None
    assert done.status_code == 202


@pytest.mark.req("RES-101", "RES-103")
async def test_max_loaded_bounds_the_loaded_on_demand_pools(tmp_path: Path, model: Path) -> None:
    engines = Engines()
    pools = [pool(n, model, keep_alive_ms=600_000) for n in ("a", "b")]
    orch = orchestrator(tmp_path, engines, pools,
                        residency={"max_loaded": 1, "swap_wait_ms": 100})  # fmt: skip
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        for name in ("a", "b"):
            _, body = await submit(conductor, name)
            assert (await collect_stream(conductor, body["task_id"]))[-1][0] == "end"
        states = await settled(orch, ("a", "b"))
    assert states == {"a": State.UNLOADED, "b": State.LOADED}


@pytest.mark.req("RES-102")
async def test_two_pools_wanting_in_one_planner_step_do_not_both_take_room_for_one(
    tmp_path: Path, model: Path
) -> None:
    """The first load of a step holds its room at once: the second pool of the same step
    sees it as loading and waits (found under load: both loaded on a card for one)."""
    engines = Engines()
    pools = [pool(n, model, devices=[0], keep_alive_ms=600_000) for n in ("a", "b")]
    orch = orchestrator(tmp_path, engines, pools, gpus=card(1, model),
                        residency={"swap_wait_ms": 100})  # fmt: skip
    planner = orch.residency
    look = planner.step
    paused = True
    planner.step = lambda now: 0.01 if paused else look(now)  # type: ignore[method-assign]
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        bodies = [(await submit(conductor, name))[1] for name in ("a", "b")]
        paused = False  # its next look sees both queues at once
        ends = [(await collect_stream(conductor, b["task_id"]))[-1][0] for b in bodies]
    assert ends == ["end", "end"]
    assert [others for _, others in engines.existing_at_build] == [set(), set()], (
        engines.existing_at_build
    )


@pytest.mark.req("RES-102", "RES-103")
async def test_a_load_waits_until_the_engine_it_replaces_has_exited(
    tmp_path: Path, model: Path
) -> None:
    """An engine holds its VRAM until its process is gone: b's engine must not start while
    a's is still stopping (here a's stop takes 300 ms)."""
    engines = Engines()
    engines.stop_s["a"] = 0.3
    pools = [pool(n, model, devices=[0], keep_alive_ms=600_000) for n in ("a", "b")]
    orch = orchestrator(tmp_path, engines, pools, gpus=card(1, model))
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        _, body = await submit(conductor, "a")
        await collect_stream(conductor, body["task_id"])
        _, body = await submit(conductor, "b")
        frames = await collect_stream(conductor, body["task_id"])
    assert frames[-1][0] == "end"
    (b_start,) = [alive for pool_id, alive in engines.alive_at_start if pool_id == "b"]
    assert "a" not in b_start, engines.alive_at_start


@pytest.mark.req("RES-103", "RES-105")
async def test_one_user_taking_turns_never_waits_for_a_swap_concurrent_traffic_does(
    tmp_path: Path, model: Path
) -> None:
    """A swap wait of a minute. One user, one task at a time: switching models waits for
    nothing but the load. Traffic that is concurrent (b asked for while another pool had a
    task running): b, whose load took 3 s, keeps the card a moment for its next task (until
    its idle time and c's wait add up to those 3 s) while c waits its turn."""
    engines = Engines()
    engines.load_s["b"] = 3.0
    engines.release.clear()
    engines.held.add("other")
    pools = [pool(n, model, devices=[0], keep_alive_ms=600_000) for n in ("a", "b", "c")]
    pools.append(pool("other", model))  # on the CPU: it takes no room on the card
    orch = orchestrator(tmp_path, engines, pools, gpus=card(1, model),
                        residency={"swap_wait_ms": 60_000})  # fmt: skip
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        for name in ("a", "b"):  # b evicts a at once: nothing else was going on
            _, body = await submit(conductor, name)
            assert (await collect_stream(conductor, body["task_id"]))[-1][0] == "end"
        switched = await settled(orch, ("a", "b"))
        _, busy = await submit(conductor, "other")
        await eventually(lambda: bool(orch.pools["other"].running))
        _, again = await submit(conductor, "b")  # asked for while "other" decodes
        assert (await collect_stream(conductor, again["task_id"]))[-1][0] == "end"
        _, waiting = await submit(conductor, "c")
        await asyncio.sleep(0.5)  # far inside the 1.5 s b may keep the card
        held = {n: orch.pools[n].residency.state for n in ("b", "c")}
        blocked = orch.pools["c"].residency.blocked
        engines.release.set()
        await conductor.simulate_post(f"/v1/tasks/{waiting['task_id']}/cancel", headers=AUTH)
        await collect_stream(conductor, busy["task_id"])
    assert switched == {"a": State.UNLOADED, "b": State.LOADED}
    assert held == {"b": State.LOADED, "c": State.UNLOADED} and blocked


@pytest.mark.req("RES-105")
async def test_two_models_alternating_under_load_swap_a_bounded_number_of_times(
    tmp_path: Path, model: Path
) -> None:
    """a, b, a, b, ... submitted 24 times over about a second against room for one, each
    load taking 100 ms: tasks for one model arrive while the other's queue waits (concurrent
    traffic), so a busy model gives way only after swap_wait (250 ms) of waiting, an idle
    one after about a load time, and the tasks are served in batches with a few swaps, not
    one per task."""
    engines = Engines()
    engines.load_s.update(a=0.1, b=0.1)
    pools = [pool(n, model, devices=[0], keep_alive_ms=600_000) for n in ("a", "b")]
    orch = orchestrator(tmp_path, engines, pools, gpus=card(1, model),
                        residency={"swap_wait_ms": 250})  # fmt: skip
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        bodies = []
        for n in range(24):
            _, body = await submit(conductor, "ab"[n % 2], max_tokens=4)
            bodies.append(body)
            await asyncio.sleep(0.04)
        results = [await collect_stream(conductor, b["task_id"]) for b in bodies]
        swaps = sum(orch.metrics.model_swaps.labels(pool_id=p)._value.get() for p in ("a", "b"))
        loads = sum(
            orch.metrics.model_loads.labels(pool_id=p, result="ok")._value.get() for p in ("a", "b")
        )
    assert all(frames[-1][0] == "end" for frames in results)
    assert 1 <= swaps <= 8 and loads == swaps + 1  # 23 if every task swapped
