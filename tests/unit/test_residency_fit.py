"""Fits are checked against what is pinned (RES-102): an on-demand pool that can never fit
beside the pinned pools is a start-up error with the numbers, and a task for a pool that
cannot be placed now and has nothing to wait for is refused at admission, not left to its
deadline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from orchestratord.devices.inventory import MIB
from orchestratord.devices.nvml import NvmlInventory
from orchestratord.placement.plan import PlacementError
from tests.unit.nvml_standin import Card, FakeNvml
from tests.unit.test_residency import Engines, card, model, need_mb, orchestrator, pool, submit

__all__ = ["model"]  # the shared fixture


@pytest.mark.req("RES-102")
def test_an_on_demand_pool_that_never_fits_beside_the_pinned_pools_fails_start_up(
    tmp_path: Path, model: Path
) -> None:
    """The card holds one and a half of these models; a pinned pool takes one of them, so
    the on-demand pool fits an empty card but never this one."""
    pools = [pool("pinned", model, residency="pinned", devices=[0]),
             pool("a", model, devices=[0])]  # fmt: skip
    with pytest.raises(PlacementError) as refused:
        orchestrator(tmp_path, Engines(), pools, gpus=card(1, model))
    message = str(refused.value)
    assert "pool 'a'" in message and "beside the pinned pools" in message
    assert "GPU0" in message and "MiB free after the pinned pools" in message


@pytest.mark.req("RES-102")
def test_on_demand_pools_that_fit_beside_the_pinned_ones_start(tmp_path: Path, model: Path) -> None:
    pools = [pool("pinned", model, residency="pinned", devices=[0]),
             pool("a", model, devices=[0]), pool("b", model, devices=[0])]  # fmt: skip
    orch = orchestrator(tmp_path, Engines(), pools, gpus=card(2, model))
    assert [p.id for p in orch.pools.values()] == ["pinned", "a", "b"]


@pytest.mark.req("RES-102", "HOME-901")
async def test_a_task_that_could_never_be_placed_now_is_refused_at_admission(
    tmp_path: Path, model: Path
) -> None:
    """NVML: the card had room at start; another process then takes nearly all of it. The
    task is refused with the numbers (503), not queued to wait out its deadline; once the
    memory is back, the same task is admitted and runs."""
    total = 4 * need_mb(model) * MIB
    other = Card("card", total=total, used=0)
    inventory = NvmlInventory(FakeNvml([other]))
    pools = [pool("a", model, devices=[0])]
    gpus = {"source": "nvml", "reserve_mb": 64}
    orch = orchestrator(tmp_path, Engines(), pools, inventory=inventory, gpus=gpus)

    async def no_monitor_reads(*_: Any) -> None:
        pass  # the test refreshes the readings itself, when it has changed the card

    orch.devices.refresh_off_loop = no_monitor_reads  # type: ignore[method-assign]
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        other.used = total - need_mb(model) * MIB // 2
        orch.devices.refresh(orch.replicas(), orch.metrics)
        refused, _ = await submit(conductor, "a")
        queued_while_refused = len(orch.pools["a"].queue)
        other.used = 0
        orch.devices.refresh(orch.replicas(), orch.metrics)
        admitted, _ = await submit(conductor, "a")
    assert refused.status_code == 503, refused.text
    assert refused.json["code"] == "POOL_UNAVAILABLE"
    assert "needs" in refused.json["message"] and "GPU0" in refused.json["message"]
    assert refused.json["correlation_id"] and queued_while_refused == 0
    assert admitted.status_code == 202, admitted.text
