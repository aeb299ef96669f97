"""Reload (HOME-505, ORCH-2102, ORCH-3031): switch when the new engines pass, else roll back."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from orchestratord.adapters.base import EngineAdapter
from orchestratord.adapters.mock import MockAdapter
from orchestratord.app import Orchestrator
from orchestratord.config import PoolConfig
from orchestratord.replicas.replica import ReplicaSpec
from tests.contract_schemas import assert_matches
from tests.unit.conftest import AUTH, TOKEN, collect_stream, held_handler, make_config, task_body
from tests.unit.test_self_test import SilentEngine

SIGNED = {"signatures": [{"signer": "me", "algo": "ed25519"}], "sbom": {"uri": "file:///sbom"}}


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - observing state from outside, as a client would
            await asyncio.sleep(0.005)


class Engines:
    """Builds the engines of each reload generation: 'broken' models never pass."""

    def __init__(self) -> None:
        self.built: list[tuple[str, str]] = []

    def __call__(self, config: PoolConfig, spec: ReplicaSpec) -> EngineAdapter:
        self.built.append((config.model_ref, spec.id))
        if config.model_ref == "broken":
            return SilentEngine()
        return MockAdapter(version=f"mock-{config.model_ref}")


async def register(conductor: Any, tmp_path: Path, model_id: str) -> None:
    directory = tmp_path / "c" / "models"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{model_id}.gguf"
    path.write_bytes(model_id.encode())
    digest = "sha256:" + hashlib.sha256(model_id.encode()).hexdigest()
    entry = {"id": model_id, "digest": digest, "source_url": path.as_uri(), **SIGNED}
    created = await conductor.simulate_post("/v1/catalog/models", json=entry, headers=AUTH)
    assert created.status_code == 201


async def reload(conductor: Any, model_ref: str) -> Any:
    body = {"new_model_ref": model_ref}
    return await conductor.simulate_post("/v1/pools/p1/reload", json=body, headers=AUTH)


@pytest.mark.req("HOME-505", "ORCH-2102", "ORCH-3031", "OC-CTRL-2003")
async def test_a_reload_switches_only_after_the_new_engines_pass_and_keeps_the_queue(
    tmp_path: Path,
) -> None:
    release = asyncio.Event()
    engines = Engines()
    config = make_config(
        tmp_path, slots=1, queue={"capacity": 4}, server={"engine_self_test": True}
    )
    orch = Orchestrator(
        config,
        token=TOKEN,
        adapters={"p1": MockAdapter(held_handler(release))},
        adapter_factory=engines,
    )
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        await register(conductor, tmp_path, "next")
        decoding = (
            await conductor.simulate_post("/v1/tasks", json=task_body(max_tokens=4), headers=AUTH)
        ).json["task_id"]
        queued = (
            await conductor.simulate_post("/v1/tasks", json=task_body(max_tokens=2), headers=AUTH)
        ).json["task_id"]
        started = await reload(conductor, "next")
        pool = orch.pools["p1"]
        await eventually(lambda: pool.reload is not None and pool.reload.state != "starting")
        health = (await conductor.simulate_get("/v1/pools/p1/health", headers=AUTH)).json
        queued_frames = await collect_stream(conductor, queued)
        release.set()
        decoding_frames = await collect_stream(conductor, decoding)
        await eventually(lambda: not pool.retiring)
        after = await conductor.simulate_post(
            "/v1/tasks", json=task_body(model_ref="next", max_tokens=2), headers=AUTH
        )
        after_frames = await collect_stream(conductor, after.json["task_id"])
    assert started.status_code == 202 and started.json["reload"]["state"] == "starting"
    assert health["reload"]["state"] == "switched" and health["model_ref"] == "next"
    assert_matches("control", "PoolHealth", health)
    assert engines.built == [("next", "p1-r0-g1")]
    # The queued task carried over to the new engine; the decoding one finished on the old.
    assert orch.registry.get(queued).replica_id == "p1-r0-g1"  # type: ignore[union-attr]
    assert orch.registry.get(decoding).replica_id == "p1-r0"  # type: ignore[union-attr]
    assert decoding_frames[-1][0] == "end" and queued_frames[-1][0] == "end"
    assert after.status_code == 202 and after_frames[0][1]["engine_version"] == "mock-next"


@pytest.mark.req("HOME-505", "ORCH-2102", "ORCH-3031")
async def test_a_failed_reload_rolls_back_and_the_pool_keeps_serving(tmp_path: Path) -> None:
    engines = Engines()
    orch = Orchestrator(
        make_config(tmp_path, server={"engine_self_test": True}),
        token=TOKEN,
        adapters={"p1": MockAdapter()},
        adapter_factory=engines,
    )
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        await register(conductor, tmp_path, "broken")
        started = await reload(conductor, "broken")
        pool = orch.pools["p1"]
        await eventually(lambda: pool.reload is not None and pool.reload.state != "starting")
        health = (await conductor.simulate_get("/v1/pools/p1/health", headers=AUTH)).json
        served = await conductor.simulate_post(
            "/v1/tasks", json=task_body(max_tokens=2), headers=AUTH
        )
        assert served.status_code == 202, served.json
        frames = await collect_stream(conductor, served.json["task_id"])
    assert started.status_code == 202
    assert health["reload"]["state"] == "rolled_back" and health["model_ref"] != "broken"
    assert "self-test failed: decode" in health["reload"]["error"]
    assert health["last_error"].startswith("reload to broken rolled back")
    assert health["ready"] is True and frames[-1][0] == "end"


@pytest.mark.parametrize(
    ("model_ref", "status", "code"),
    [("unknown-model", 400, "INVALID_PARAMS"), ("retired", 409, "MODEL_DEPRECATED")],
)
@pytest.mark.req("HOME-505", "HOME-901")
async def test_reload_to_an_unknown_or_retired_model_is_refused(
    tmp_path: Path, model_ref: str, status: int, code: str
) -> None:
    orch = Orchestrator(
        make_config(tmp_path),
        token=TOKEN,
        adapters={"p1": MockAdapter()},
        adapter_factory=Engines(),
    )
    async with falcon.testing.ASGIConductor(orch.app) as conductor:
        await register(conductor, tmp_path, "retired")
        await conductor.simulate_post(
            "/v1/catalog/models/retired/state", json={"state": "Retired"}, headers=AUTH
        )
        refused = await reload(conductor, model_ref)
        busy_drain = await conductor.simulate_post(
            "/v1/pools/p1/drain", json={"deadline_ms": 0}, headers=AUTH
        )
        while_drained = await reload(conductor, "retired")
    assert refused.status_code == status and refused.json["code"] == code
    assert orch.pools["p1"].reload is None
    assert busy_drain.status_code == 202 and while_drained.status_code in (409,)
