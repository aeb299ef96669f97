"""A reload re-runs the fit and cancels its bring-ups on rollback (HARD-206).

GPU pools on a declared card (no GPU here), their engines the mock; the models are
llama-shaped GGUF files with sparse weights, so their VRAM need is read as for real ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from orchestratord.adapters.base import EngineAdapter, EngineInfo
from orchestratord.adapters.mock import MockAdapter
from orchestratord.app import Orchestrator
from orchestratord.config import PoolConfig
from orchestratord.core.task import TaskState
from orchestratord.devices.inventory import MIB, gib
from orchestratord.models.gguf_shape import read_model_shape
from orchestratord.placement.fit import replica_need
from orchestratord.replicas.replica import ReplicaSpec
from tests.unit.conftest import AUTH, TOKEN, collect_stream, held_handler, make_config, task_body
from xtask.fakes.model_files import write_shaped_gguf

RESERVE = 512 * MIB
DIGEST = "sha256:" + "1" * 64


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - observing state from outside, as a client would
            await asyncio.sleep(0.005)


def shaped(directory: Path, name: str, layers: int, embd: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.gguf"
    write_shaped_gguf(path, n_layer=layers, n_embd=embd, n_head=16, n_head_kv=4, n_ff=embd * 3)
    return path


def need_of(path: Path, **pool: Any) -> int:
    config = PoolConfig(id="p1", model_ref="m", model_path=path, ctx_max=512, slots=2, **pool)
    return replica_need(config, read_model_shape(path), RESERVE).total()


async def register(conductor: Any, model_id: str, path: Path) -> None:
    entry = {
        "id": model_id,
        "digest": DIGEST,
        "source_url": path.as_uri(),
        "signatures": [{"signer": "me", "algo": "ed25519"}],
        "sbom": {"uri": "file:///s"},
    }
    created = await conductor.simulate_post("/v1/catalog/models", json=entry, headers=AUTH)
    assert created.status_code == 201, created.json


def by_model(config: PoolConfig, spec: ReplicaSpec) -> EngineAdapter:
    return MockAdapter(version=f"mock-{config.model_ref}")


def gpu_orchestrator(
    tmp_path: Path, old: Path, card_bytes: int, release: asyncio.Event,
    factory: Callable[[PoolConfig, ReplicaSpec], EngineAdapter] = by_model, **pool: Any,
) -> Orchestrator:  # fmt: skip
    config = make_config(
        tmp_path,
        model_path=old,
        devices=[0],
        ctx_max=512,
        gpus={"source": "declared", "reserve_mb": 512,
              "declared": [{"index": 0, "name": "card", "vram_total_mb": card_bytes // MIB}]},
        **pool,
    )  # fmt: skip
    return Orchestrator(
        config,
        token=TOKEN,
        adapters={"p1": MockAdapter(held_handler(release, first_tokens=1))},
        adapter_factory=factory,
    )


@pytest.mark.req("HARD-206")
async def test_a_reload_that_does_not_fit_beside_the_old_model_is_refused_with_numbers(
    tmp_path: Path,
) -> None:
    models = tmp_path / "c" / "models"
    old, small, big = (shaped(models, n, layers, 1024) for n, layers in
                       (("old", 8, ), ("small", 4), ("big", 24)))  # fmt: skip
    card = need_of(old) + need_of(small) + 64 * MIB  # room for small beside old, not big
    orch = gpu_orchestrator(tmp_path, old, card, asyncio.Event())
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        await register(conductor, "big", big)
        await register(conductor, "small", small)
        refused = await conductor.simulate_post(
            "/v1/pools/p1/reload", json={"new_model_ref": "big"}, headers=AUTH
        )
        accepted = await conductor.simulate_post(
            "/v1/pools/p1/reload", json={"new_model_ref": "small"}, headers=AUTH
        )
        pool = orch.pools["p1"]
        await eventually(lambda: pool.reload is not None and pool.reload.state != "starting")
        state = pool.reload.state if pool.reload else None
        vram = pool.replicas[0].spec.vram_bytes
    assert refused.status_code == 409 and refused.json["code"] == "CONFLICT"
    message = refused.json["message"]
    assert f"the new model needs {gib(need_of(big))} on GPU0" in message
    assert "reload_mode: stop-first" in message
    assert accepted.status_code == 202 and accepted.json["reload"]["mode"] == "beside"
    assert state == "switched"
    assert vram == {0: need_of(small)}  # the new model's figures, not the old one's


@pytest.mark.req("HARD-206")
async def test_stop_first_lets_the_old_engines_finish_then_starts_the_new_model(
    tmp_path: Path,
) -> None:
    release = asyncio.Event()
    models = tmp_path / "c" / "models"
    old, new = shaped(models, "old", 8, 1024), shaped(models, "new", 10, 1024)
    card = max(need_of(old), need_of(new)) + 64 * MIB  # one at a time only
    orch = gpu_orchestrator(tmp_path, old, card, release, reload_mode="stop-first")
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        await register(conductor, "new", new)
        decoding = task_body(max_tokens=4)
        await conductor.simulate_post("/v1/tasks", json=decoding, headers=AUTH)
        pool = orch.pools["p1"]
        await eventually(lambda: bool(pool.replicas[0].running))
        started = await conductor.simulate_post(
            "/v1/pools/p1/reload", json={"new_model_ref": "new"}, headers=AUTH
        )
        await eventually(lambda: pool.replicas[0].held)  # the old engine takes no new task
        waiting = task_body(max_tokens=2)
        await conductor.simulate_post("/v1/tasks", json=waiting, headers=AUTH)
        waiting_task = orch.registry.get(waiting["task_id"])
        assert waiting_task is not None
        meanwhile = (waiting_task.state, pool.config.model_ref, len(pool.replicas[0].running))
        release.set()
        frames = await collect_stream(conductor, decoding["task_id"])
        later = await collect_stream(conductor, waiting["task_id"])
        await eventually(lambda: pool.reload is not None and pool.reload.state != "starting")
        health = (await conductor.simulate_get("/v1/pools/p1/health", headers=AUTH)).json
    assert started.status_code == 202 and started.json["reload"]["mode"] == "stop-first"
    assert "stop-first" in str(started.json["reload"])  # said in the answer
    # the old engine finishes its task and serves nothing else meanwhile: the free slot
    # beside it stays free, and the task sent during the reload runs on the new model
    assert meanwhile == (TaskState.QUEUED, "test/mock-model", 1)
    assert frames[-1][0] == "end"  # nothing running was killed by the swap
    started_frame = next(data for event, data in later if event == "started")
    assert started_frame["engine_version"] == "mock-new" and later[-1][0] == "end"
    assert health["reload"]["state"] == "switched" and health["model_ref"] == "new"
    assert pool.replicas[0].spec.vram_bytes == {0: need_of(new)}


@pytest.mark.req("HARD-206")
async def test_stop_first_brings_the_old_model_back_when_the_new_one_fails(
    tmp_path: Path,
) -> None:
    models = tmp_path / "c" / "models"
    old, new = shaped(models, "old", 8, 1024), shaped(models, "new", 10, 1024)
    card = max(need_of(old), need_of(new)) + 64 * MIB

    def build(config: PoolConfig, spec: ReplicaSpec) -> EngineAdapter:
        return FailingStart() if config.model_ref == "new" else by_model(config, spec)

    orch = gpu_orchestrator(
        tmp_path, old, card, asyncio.Event(), factory=build, reload_mode="stop-first"
    )
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        await register(conductor, "new", new)
        pool = orch.pools["p1"]
        started = await conductor.simulate_post(
            "/v1/pools/p1/reload", json={"new_model_ref": "new"}, headers=AUTH
        )
        await eventually(lambda: pool.reload is not None and pool.reload.state != "starting")
        health = (await conductor.simulate_get("/v1/pools/p1/health", headers=AUTH)).json
        after = task_body(max_tokens=2)
        admitted = await conductor.simulate_post("/v1/tasks", json=after, headers=AUTH)
        frames = await collect_stream(conductor, after["task_id"])
    assert started.status_code == 202 and started.json["reload"]["mode"] == "stop-first"
    assert health["reload"]["state"] == "rolled_back" and health["ready"] is True
    assert health["model_ref"] == "test/mock-model"
    assert "engine start failed" in health["reload"]["error"]
    assert admitted.status_code == 202 and frames[-1][0] == "end"
    started_frame = next(data for event, data in frames if event == "started")
    assert started_frame["engine_version"] == "mock-test/mock-model"  # the old model, again


class SlowStart(MockAdapter):
    """Its engine takes long to come up; records whether the bring-up was cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = False
        self.came_up = False

    async def info(self) -> EngineInfo:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.came_up = True
        return await super().info()


class FailingStart(MockAdapter):
    async def info(self) -> EngineInfo:
        raise RuntimeError("model file is corrupt")


@pytest.mark.req("HARD-206", "HOME-505")
async def test_a_rollback_cancels_the_bring_ups_still_under_way(tmp_path: Path) -> None:
    slow = SlowStart()

    def build(config: PoolConfig, spec: ReplicaSpec) -> EngineAdapter:
        return FailingStart() if spec.index == 0 else slow

    orch = Orchestrator(
        make_config(tmp_path, replicas=2),
        token=TOKEN,
        adapters={"p1": [MockAdapter(), MockAdapter()]},
        adapter_factory=build,
    )
    models = tmp_path / "c" / "models"
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        await register(conductor, "next", shaped(models, "next", 2, 256))
        started = await conductor.simulate_post(
            "/v1/pools/p1/reload", json={"new_model_ref": "next"}, headers=AUTH
        )
        pool = orch.pools["p1"]
        await eventually(lambda: pool.reload is not None and pool.reload.state != "starting")
        health = (await conductor.simulate_get("/v1/pools/p1/health", headers=AUTH)).json
    assert started.status_code == 202
    assert health["reload"]["state"] == "rolled_back" and health["ready"] is True
    assert slow.cancelled and not slow.came_up  # no engine came up after the rollback
