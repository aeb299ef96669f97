"""Engine supervision: readiness follows the engine, crashes restart, the circuit opens."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from orchestratord.adapters.base import EngineAdapter, EngineInfo, SlotState
from orchestratord.adapters.llamacpp import LlamaCppAdapter
from orchestratord.adapters.mock import MockAdapter
from orchestratord.config import PoolConfig
from orchestratord.metrics import Metrics
from orchestratord.models.tiny_gguf import TINY_MODEL_REF
from orchestratord.pools.pool import Pool
from orchestratord.replicas import supervisor
from orchestratord.replicas.replica import Replica, ReplicaRuntime, ReplicaSpec
from tests.unit.scripted_http import json_route, scripted_engine

FAST = ReplicaRuntime(monitor_interval_s=0.01, restart_backoff_s=0.01, max_restarts=2)


class FakeProcess:
    """Stands in for LlamaServerProcess: can 'crash' and can fail to come back."""

    def __init__(self) -> None:
        self.alive = False
        self.starts = 0
        self.fail_restarts = False
        self.exit_code: int | None = None

    def running(self) -> bool:
        return self.alive

    async def start(self, timeout_s: float) -> None:
        self.starts += 1
        if self.starts > 1 and self.fail_restarts:
            raise RuntimeError("model file vanished")
        self.alive = True
        self.exit_code = None

    def crash(self) -> None:
        self.alive = False
        self.exit_code = -9

    async def stop(self) -> None:
        self.alive = False


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - observing state from outside, as a client would
            await asyncio.sleep(0.005)


async def with_pool(
    process: FakeProcess,
    adapter: EngineAdapter,
    body: Callable[[Pool], Awaitable[None]],
    runtime: ReplicaRuntime = FAST,
) -> None:
    metrics = Metrics()
    replica = Replica(
        ReplicaSpec("p", 0, slots=2),
        "llamacpp",
        adapter,
        metrics,
        process,  # type: ignore[arg-type]
        runtime=runtime,
    )
    pool = Pool(PoolConfig(id="p", model_ref=TINY_MODEL_REF), [replica], metrics)
    await pool.start()
    try:
        await body(pool)
    finally:
        await pool.stop()


@pytest.mark.req("OC-POOL-3003", "ORCH-3010")
async def test_a_pool_whose_engine_stops_answering_is_unready_until_it_answers() -> None:
    adapter = MockAdapter()

    async def body(pool: Pool) -> None:
        assert pool.ready
        adapter.healthy_flag = False
        await eventually(lambda: not pool.ready)
        assert pool.last_error == "engine stopped answering /health"
        adapter.healthy_flag = True
        await eventually(lambda: pool.ready)

    await with_pool(FakeProcess(), adapter, body)


@pytest.mark.req("OC-POOL-3010")
async def test_a_crashed_engine_is_restarted_and_the_pool_is_ready_again() -> None:
    process = FakeProcess()

    async def body(pool: Pool) -> None:
        process.crash()
        await eventually(lambda: process.starts == 2 and pool.ready)
        assert pool.last_error == "engine restarted after: engine exited (-9)"

    await with_pool(process, MockAdapter(), body)


@pytest.mark.req("OC-POOL-3011")
async def test_the_circuit_opens_after_repeated_failed_restarts() -> None:
    process = FakeProcess()
    process.fail_restarts = True

    async def body(pool: Pool) -> None:
        process.crash()
        await eventually(lambda: "circuit open" in (pool.last_error or ""))
        starts = process.starts
        await asyncio.sleep(0.1)  # many monitor intervals: no further attempts
        assert process.starts == starts == 1 + FAST.max_restarts
        assert not pool.ready

    await with_pool(process, MockAdapter(), body)


@pytest.mark.req("OC-POOL-3010", "OC-POOL-3011")
async def test_restart_delays_double_up_to_the_circuit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backoff is exponential: each failed start doubles the wait before the next."""
    asked: list[float] = []

    async def recording_backoff(delay: float) -> None:
        asked.append(delay)

    monkeypatch.setattr(supervisor, "backoff", recording_backoff)
    process = FakeProcess()
    process.fail_restarts = True
    runtime = ReplicaRuntime(monitor_interval_s=0.01, restart_backoff_s=0.25, max_restarts=4)

    async def body(pool: Pool) -> None:
        process.crash()
        await eventually(lambda: "circuit open" in (pool.last_error or ""))

    await with_pool(process, MockAdapter(), body, runtime)
    assert asked == [0.25, 0.5, 1.0, 2.0]


class RaisingScrape(MockAdapter):
    """An adapter with a bug: its telemetry read raises something no adapter should."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def kv_usage_ratio(self) -> float | None:
        if self.failures > 0:
            self.failures -= 1
            raise KeyError("n_ctx")
        return 0.0


@pytest.mark.req("HARD-201")
async def test_a_supervision_step_that_raises_is_logged_and_supervision_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    process = FakeProcess()
    adapter = RaisingScrape(failures=1)

    async def body(pool: Pool) -> None:
        await eventually(lambda: adapter.failures == 0)
        await eventually(lambda: pool.ready)  # the next step found the engine healthy
        process.crash()  # after the fault, a crash is still noticed and repaired
        await eventually(lambda: process.starts == 2 and pool.ready)

    await with_pool(process, adapter, body)
    assert "replica p-r0: supervision step failed (1 in a row)" in caplog.text


class FaultyStep(MockAdapter):
    """Raises something no adapter should from one engine step, once armed."""

    def __init__(self, step: str) -> None:
        super().__init__()
        self.step = step
        self.failures = 0

    def _maybe_raise(self, step: str) -> None:
        if step == self.step and self.failures > 0:
            self.failures -= 1
            raise KeyError(f"injected fault in {step}")

    async def healthy(self) -> bool:
        self._maybe_raise("health")
        return await super().healthy()

    async def info(self) -> EngineInfo:
        self._maybe_raise("info")
        return await super().info()

    async def slots(self) -> list[SlotState]:
        self._maybe_raise("slots")  # read by the self-test's cancel check
        return await super().slots()


@pytest.mark.parametrize("step", ["health", "info", "slots"])
@pytest.mark.req("HARD-201")
async def test_a_raising_health_probe_properties_read_or_self_test_slot_read_is_survived(
    caplog: pytest.LogCaptureFixture, step: str
) -> None:
    """The fault is logged with the replica's id, the replica comes back once the step
    stops raising, and supervision still repairs a crash after it."""
    process = FakeProcess()
    adapter = FaultyStep(step)

    async def body(pool: Pool) -> None:
        adapter.failures = 1
        process.crash()  # a restart reads the properties and runs the self-test
        await eventually(lambda: adapter.failures == 0)
        await eventually(lambda: pool.ready)
        starts = process.starts
        process.crash()
        await eventually(lambda: process.starts > starts and pool.ready)

    await with_pool(process, adapter, body)
    faults = [r for r in caplog.records if f"injected fault in {step}" in (
        r.getMessage() + str(r.exc_info[1] if r.exc_info else ""))]  # fmt: skip
    assert faults and all("replica p-r0" in r.getMessage() for r in faults), caplog.text


@pytest.mark.req("HARD-201", "OC-POOL-3011")
async def test_a_replica_whose_supervision_keeps_failing_opens_its_circuit() -> None:
    process = FakeProcess()
    adapter = RaisingScrape(failures=1000)

    async def body(pool: Pool) -> None:
        await eventually(lambda: "circuit open after 2 supervision errors" in
                         (pool.last_error or ""))  # fmt: skip
        assert not pool.ready

    await with_pool(process, adapter, body)


@pytest.mark.req("HARD-201")
async def test_malformed_slots_from_a_real_http_engine_do_not_end_supervision() -> None:
    """The llama.cpp adapter against a scripted engine whose /slots has the wrong shape:
    the fault is translated at the adapter boundary, supervision goes on, and a crash
    after it is repaired."""
    props = {"total_slots": 2, "default_generation_settings": {"n_ctx": 256},
             "build_info": "b1-test", "model_path": "m.gguf"}  # fmt: skip
    routes = {
        ("GET", "/health"): json_route({"status": "ok"}),
        ("GET", "/props"): json_route(props),
        ("GET", "/metrics"): json_route({}, status=404),
        ("GET", "/slots"): json_route({"not": "a list of slots"}),
    }
    process = FakeProcess()
    async with scripted_engine(routes) as engine:
        adapter = LlamaCppAdapter(engine.url, None, max_connections=2)
        runtime = ReplicaRuntime(monitor_interval_s=0.01, restart_backoff_s=0.01,
                                 max_restarts=2, self_test=False)  # fmt: skip

        async def body(pool: Pool) -> None:
            await eventually(lambda: len(engine.bodies("/slots")) >= 3)  # read, refused, on
            process.crash()
            await eventually(lambda: process.starts == 2 and pool.ready)

        await with_pool(process, adapter, body, runtime)  # type: ignore[arg-type]
