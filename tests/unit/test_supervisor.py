"""Engine supervision: readiness follows the engine, crashes restart, the circuit opens."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from orchestratord.adapters.mock import MockAdapter
from orchestratord.config import PoolConfig
from orchestratord.metrics import Metrics
from orchestratord.models.tiny_gguf import TINY_MODEL_REF
from orchestratord.pools.pool import Pool
from orchestratord.replicas.replica import Replica, ReplicaRuntime, ReplicaSpec

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
    process: FakeProcess, adapter: MockAdapter, body: Callable[[Pool], Awaitable[None]]
) -> None:
    metrics = Metrics()
    replica = Replica(
        ReplicaSpec("p", 0, slots=2),
        "llamacpp",
        adapter,
        metrics,
        process,  # type: ignore[arg-type]
        runtime=FAST,
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
