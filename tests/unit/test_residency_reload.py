"""Reloads of on-demand pools go through the residency manager (RES-109, HOME-505): a
loaded pool reloads beside its old engines and is neither unloaded nor evicted meanwhile;
one that is not loaded serves the new model from its next load; either way the planner
places it with the new model's VRAM need, and no engine is left that no list counts.

The new model is a bigger GGUF (32 wider layers, not 2) so that its need differs."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from orchestratord.models import tiny_gguf
from orchestratord.models.tiny_gguf import write_tiny_model
from orchestratord.residency.state import State
from tests.unit.conftest import AUTH, collect_stream
from tests.unit.test_residency import (
    MIB,
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

SIGNED = {"signatures": [{"signer": "me", "algo": "ed25519"}], "sbom": {"uri": "file:///sbom"}}


@pytest.fixture
def big_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tiny_gguf, "_N_LAYERS", 32)
    monkeypatch.setattr(tiny_gguf, "_N_FF", 2048)
    path = tmp_path / "c" / "models" / "big.gguf"
    write_tiny_model(path, seed=7)
    return path


async def register(conductor: Any, path: Path, model_id: str) -> None:
    digest = "sha256:" + hashlib.sha256(await asyncio.to_thread(path.read_bytes)).hexdigest()
    entry = {"id": model_id, "digest": digest, "source_url": path.as_uri(), **SIGNED}
    created = await conductor.simulate_post("/v1/catalog/models", json=entry, headers=AUTH)
    assert created.status_code == 201, created.text


async def reload(conductor: Any, pool_id: str, model_ref: str) -> Any:
    body = {"new_model_ref": model_ref}
    return await conductor.simulate_post(f"/v1/pools/{pool_id}/reload", json=body, headers=AUTH)


@pytest.mark.req("RES-109", "HOME-505", "RES-102")
async def test_a_reload_of_an_unloaded_on_demand_pool_serves_the_new_model_at_its_next_load(
    tmp_path: Path, model: Path, big_model: Path
) -> None:
    engines = Engines()
    pools = [pool("a", model, devices=[0], keep_alive_ms=600_000)]
    orch = orchestrator(tmp_path, engines, pools, gpus=card(3, model))
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        await register(conductor, big_model, "big")
        answer = await reload(conductor, "a", "big")
        need_after = orch.residency.needs["a"].total()
        _, body = await submit(conductor, "a", model_ref="big")
        frames = await collect_stream(conductor, body["task_id"])
        health = (await conductor.simulate_get("/v1/pools/a/health", headers=AUTH)).json
    assert answer.status_code == 202, answer.text
    assert answer.json["reload"]["state"] == "switched"
    assert answer.json["reload"]["to_model_ref"] == "big"
    assert -(-need_after // MIB) == need_mb(big_model) > need_mb(model)
    assert frames[-1][0] == "end"
    assert engines.built_models == ["big"]
    assert health["residency"]["state"] == "loaded"


@pytest.mark.req("RES-109", "RES-102")
async def test_a_reload_of_an_unloaded_pool_to_a_model_that_can_never_fit_is_refused(
    tmp_path: Path, model: Path, big_model: Path
) -> None:
    """Room for one small model: the big one fits no card even with nothing loaded."""
    engines = Engines()
    pools = [pool("a", model, devices=[0], keep_alive_ms=600_000)]
    orch = orchestrator(tmp_path, engines, pools, gpus=card(1, model))
    assert need_mb(big_model) > need_mb(model) * 1.5  # the card holds 1.5 small ones
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        await register(conductor, big_model, "big")
        answer = await reload(conductor, "a", "big")
    assert answer.status_code == 409, answer.text
    assert "needs" in answer.json["message"] and "GPU0" in answer.json["message"]
    assert orch.pools["a"].config.model_ref == "m-a"


@pytest.mark.req("RES-109", "RES-101", "HOME-505")
async def test_a_loaded_pool_is_not_unloaded_mid_reload_and_keeps_its_residency_whole(
    tmp_path: Path, model: Path, big_model: Path
) -> None:
    """The new engine's start is held; meanwhile a task asks for a keep-alive of 0. The
    pool stays loaded through the reload, switches to the new engine with the new need,
    and only then unloads for its keep-alive: no engine is left running that no list
    counts."""
    engines = Engines()
    pools = [pool("a", model, devices=[0], keep_alive_ms=600_000)]
    orch = orchestrator(tmp_path, engines, pools, gpus=card(3, model))
    a = orch.pools["a"]
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        await register(conductor, big_model, "big")
        _, first = await submit(conductor, "a")
        await collect_stream(conductor, first["task_id"])
        assert (await settled(orch, ("a",)))["a"] is State.LOADED
        engines.gates["a"] = asyncio.Event()  # the new generation's start waits for this
        answer = await reload(conductor, "a", "big")
        await eventually(lambda: len(engines.built) == 2)
        _, quick = await submit(conductor, "a", keep_alive_ms=0)  # on the old engine
        assert (await collect_stream(conductor, quick["task_id"]))[-1][0] == "end"
        await asyncio.sleep(0.2)  # past the keep-alive of 0: nothing may unload mid-reload
        during = (a.residency.state, len(a.replicas), a.reload.state if a.reload else None)
        engines.gates["a"].set()
        await eventually(lambda: a.reload is not None and not a.reload.running)
        need_after = orch.residency.needs["a"].total()
        await eventually(lambda: a.residency.state is State.UNLOADED)
        after = (a.replicas, a.retiring, a.starting, set(engines.existing))
    assert answer.status_code == 202, answer.text
    assert during == (State.LOADED, 1, "starting")
    assert a.reload is not None and a.reload.state == "switched"
    assert -(-need_after // MIB) == need_mb(big_model)
    assert after == ([], [], [], set())  # unloaded and every engine closed
    assert engines.built_models == ["m-a", "big"]


@pytest.mark.req("RES-109", "RES-203")
async def test_an_on_demand_pool_mid_load_refuses_a_reload_and_an_unload_with_the_reason(
    tmp_path: Path, model: Path, big_model: Path
) -> None:
    engines = Engines()
    engines.gates["a"] = asyncio.Event()
    pools = [pool("a", model, devices=[0], keep_alive_ms=600_000)]
    orch = orchestrator(tmp_path, engines, pools, gpus=card(3, model))
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        await register(conductor, big_model, "big")
        _, body = await submit(conductor, "a")
        await eventually(lambda: orch.pools["a"].residency.state is State.LOADING)
        answer = await reload(conductor, "a", "big")
        engines.gates["a"].set()
        frames = await collect_stream(conductor, body["task_id"])
    assert answer.status_code == 409 and "loading" in answer.json["message"]
    assert frames[-1][0] == "end"
