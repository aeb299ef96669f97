"""The start-up self-test (ORCH-3049): decode, cancel, telemetry, or the replica stays Unready."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from orchestratord.adapters.base import (
    EngineUnavailable,
    GenerationRequest,
    SlotState,
    StreamEvent,
    TokenChunk,
)
from orchestratord.adapters.mock import MockAdapter
from orchestratord.app import Orchestrator
from orchestratord.replicas import self_test as self_test_module
from tests.unit.conftest import AUTH, TOKEN, make_config, task_body


class StuckSlotEngine(MockAdapter):
    """Decodes, but its slot stays busy after a cancel."""

    async def slots(self) -> list[SlotState]:
        return [SlotState(0, True), SlotState(1, False)]


class SlowToFreeEngine(MockAdapter):
    """Frees its slot only some reads after the cancel (a starved engine notices late)."""

    def __init__(self, busy_reads: int) -> None:
        super().__init__()
        self.busy_reads = busy_reads
        self.reads = 0

    async def slots(self) -> list[SlotState]:
        self.reads += 1
        return [SlotState(0, self.reads <= self.busy_reads), SlotState(1, False)]


class SilentEngine(MockAdapter):
    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        yield TokenChunk("x")  # and never a final event


class NoMetricsEngine(MockAdapter):
    async def metrics_text(self) -> str:
        raise EngineUnavailable("metrics port closed")


async def start(tmp_path: Path, engine: MockAdapter) -> Orchestrator:
    config = make_config(tmp_path, server={"engine_self_test": True})
    orch = Orchestrator(config, token=TOKEN, adapters={"p1": engine})
    await orch.start()
    return orch


@pytest.mark.req("ORCH-3049")
async def test_a_healthy_engine_passes_decode_cancel_and_telemetry(tmp_path: Path) -> None:
    engine = MockAdapter()
    orch = await start(tmp_path, engine)
    try:
        assert orch.pools["p1"].ready
        assert engine.started == 2 and engine.active == 0  # the decode and the canceled one
    finally:
        await orch.stop()


@pytest.mark.parametrize(
    ("engine", "reason"),
    [
        (
            StuckSlotEngine(),
            "self-test failed: cancel: engine slots [0] still busy after a cancel (0.2 s later)",
        ),
        (SilentEngine(), "self-test failed: decode: the engine sent no final event"),
        (NoMetricsEngine(), "self-test failed: telemetry: the engine is unavailable"),
    ],
)
@pytest.mark.req("ORCH-3049")
async def test_a_replica_failing_a_step_stays_unready_with_the_step_named(
    tmp_path: Path, engine: MockAdapter, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(self_test_module, "CANCEL_SETTLE_S", 0.2)
    orch = await start(tmp_path, engine)
    try:
        pool = orch.pools["p1"]
        assert not pool.ready
        assert pool.last_error == reason
    finally:
        await orch.stop()


@pytest.mark.req("ORCH-3049")
async def test_an_engine_that_frees_its_slot_late_after_the_cancel_still_passes(
    tmp_path: Path,
) -> None:
    """The cancel check waits for the slot (up to CANCEL_SETTLE_S), not one read: ten busy
    reads first, then idle."""
    engine = SlowToFreeEngine(busy_reads=10)
    orch = await start(tmp_path, engine)
    try:
        assert orch.pools["p1"].ready and orch.pools["p1"].last_error is None
        assert engine.reads > 10
    finally:
        await orch.stop()


@pytest.mark.req("ORCH-3049")
async def test_a_failed_self_test_refuses_tasks_with_a_retry_hint(tmp_path: Path) -> None:
    orch = Orchestrator(
        make_config(tmp_path, server={"engine_self_test": True}),
        token=TOKEN,
        adapters={"p1": SilentEngine()},
    )
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        refused: Any = await conductor.simulate_post("/v1/tasks", json=task_body(), headers=AUTH)
        health: Any = await conductor.simulate_get("/v1/pools/p1/health", headers=AUTH)
    assert refused.status_code == 503 and refused.json["code"] == "POOL_UNREADY"
    assert health.json["last_error"].startswith("self-test failed: decode")
