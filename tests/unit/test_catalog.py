"""The model catalog: registration, trust policy, lifecycle states, verification."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from orchestratord.app import Orchestrator
from tests.contract_schemas import assert_matches
from tests.unit.conftest import AUTH, TOKEN, collect_stream, make_config, task_body

SIGNED = {
    "signatures": [{"signer": "me", "algo": "ed25519", "value": "c2ln"}],
    "sbom": {"uri": "file:///sbom.json"},
}


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - observing state from outside, as a client would
            await asyncio.sleep(0.005)


def model_file(tmp_path: Path, data: bytes = b"GGUF weights") -> tuple[Path, str]:
    directory = tmp_path / "c" / "models"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "m.gguf"
    path.write_bytes(data)
    return path, "sha256:" + hashlib.sha256(data).hexdigest()


async def register(conductor: Any, **entry: Any) -> Any:
    return await conductor.simulate_post("/v1/catalog/models", json=entry, headers=AUTH)


async def get(conductor: Any, model_id: str) -> Any:
    return await conductor.simulate_get(f"/v1/catalog/models/{model_id}", headers=AUTH)


@pytest.mark.req("HOME-501", "ORCH-3060", "ORCH-3062", "ORCH-3066", "FR-CP-001", "ORCH-3073")
async def test_a_registered_model_is_read_back_listed_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    path, digest = model_file(tmp_path)
    config = make_config(tmp_path)
    first = Orchestrator(config, token=TOKEN)
    async with falcon.testing.ASGIConductor(first.app) as conductor:
        created = await register(
            conductor, id="m1", digest=digest, source_url=path.as_uri(), tags=["chat"], **SIGNED
        )
        await register(conductor, id="m2", digest=digest, tags=["code"], **SIGNED)
        by_tag = await conductor.simulate_get("/v1/catalog/models?tag=chat", headers=AUTH)
        by_state = await conductor.simulate_get("/v1/catalog/models?state=Active", headers=AUTH)
        text = (await conductor.simulate_get("/metrics")).text
    assert created.status_code == 201 and created.headers["Location"] == "/v1/catalog/models/m1"
    assert created.json["state"] == "Active" and created.json["local_path"] == str(path.resolve())
    assert_matches("control", "CatalogModel", created.json)
    assert [m["id"] for m in by_tag.json] == ["m1"]
    assert [m["id"] for m in by_state.json] == ["m1", "m2"]
    assert 'model_state{model_id="m1",state="Active"} 1.0' in text
    second = Orchestrator(config, token=TOKEN)
    async with falcon.testing.ASGIConductor(second.app) as conductor:
        again = await get(conductor, "m1")
    assert (
        again.status_code == 200
        and again.json["digest"] == digest
        and again.json["tags"] == ["chat"]
    )


@pytest.mark.req("HOME-503", "ORCH-3061", "ORCH-3064")
async def test_the_trust_policy_logs_a_gap_or_refuses(
    conductor_for: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, digest = model_file(tmp_path)
    async with conductor_for() as (_, conductor):
        permissive = await register(conductor, id="open", digest=digest)
        refused = await register(conductor, id="locked", digest=digest, trust_policy="strict")
        signed_strict = await register(
            conductor, id="ok", digest=digest, trust_policy="strict", **SIGNED
        )
        missing = await get(conductor, "locked")
        text = (await conductor.simulate_get("/metrics")).text
    assert permissive.status_code == 201
    gaps = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("trust gap: model open")
    ]
    assert len(gaps) == 2 and "no signature" in gaps[0] and "no SBOM" in gaps[1]
    assert 'trust_gaps_total{subject="model"} 2.0' in text
    assert refused.status_code == 400 and refused.json["code"] == "UNTRUSTED_ARTIFACT"
    assert "no signature, no SBOM" in refused.json["message"]
    assert missing.status_code == 404  # nothing stored
    assert signed_strict.status_code == 201


@pytest.mark.req(
    "HOME-501", "HOME-502", "ORCH-3069", "ORCH-3070", "ORCH-3071", "ORCH-3072", "ORCH-3073"
)
async def test_retiring_the_served_model_refuses_tasks_and_drains_its_pool(
    conductor_for: Any,
) -> None:
    served = "mock-model"  # a catalog id: the pool's model_ref names the entry

    async def state(conductor: Any, body: dict[str, Any]) -> Any:
        url = f"/v1/catalog/models/{served}/state"
        return await conductor.simulate_post(url, json=body, headers=AUTH)

    async def submit(conductor: Any, **fields: Any) -> Any:
        body = task_body(model_ref=served, **fields)
        return await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH)

    async with conductor_for(model_ref=served) as (_, conductor):
        await register(conductor, id=served, digest="sha256:" + "0" * 64, **SIGNED)
        running = await submit(conductor, max_tokens=3)
        bad = await state(conductor, {"state": "Gone"})
        changed = await state(conductor, {"state": "Deprecated", "deadline_ms": 5000})
        refused = await submit(conductor)
        finished = await collect_stream(conductor, running.json["task_id"])
        health = (await conductor.simulate_get("/v1/pools/p1/health", headers=AUTH)).json
        text = (await conductor.simulate_get("/metrics")).text
        back = await state(conductor, {"state": "Active"})
        admitted = await submit(conductor)
        retire = await state(conductor, {"state": "Retired"})
        revive = await state(conductor, {"state": "Active"})
    assert bad.status_code == 400 and bad.json["code"] == "INVALID_PARAMS"
    assert changed.status_code == 202
    assert changed.json == {
        "id": served,
        "state": "Deprecated",
        "previous": "Active",
        "pools_draining": ["p1"],
    }
    assert refused.status_code == 503 and refused.json["code"] == "MODEL_DEPRECATED"
    assert refused.json["retriable"] is False
    assert finished[-1][0] == "end"  # the running task finished on the draining pool
    assert health["draining"] is True and "Deprecated" in health["drain"]["reason"]
    assert f'model_state{{model_id="{served}",state="Deprecated"}} 1.0' in text
    assert f'model_state{{model_id="{served}",state="Active"}}' not in text  # one series
    assert back.status_code == 202 and admitted.status_code == 202  # resumed with the model
    assert retire.status_code == 202
    assert revive.status_code == 409 and revive.json["code"] == "CONFLICT"
    assert "Retired -> Active is not allowed" in revive.json["message"]


@pytest.mark.req("HOME-501", "ORCH-3063", "ORCH-3065", "FR-CP-001")
async def test_verification_runs_in_the_background_and_is_read_on_get(
    conductor_for: Any, tmp_path: Path
) -> None:
    path, digest = model_file(tmp_path)
    async with conductor_for() as (orch, conductor):
        await register(conductor, id="good", digest=digest, source_url=path.as_uri(), **SIGNED)
        await register(
            conductor, id="gap", digest=digest, manifests=[{"path": str(path), "digest": digest}]
        )
        await register(
            conductor, id="bad", digest="sha256:" + "1" * 64, source_url=path.as_uri(), **SIGNED
        )
        results = {}
        for model_id in ("good", "gap", "bad"):
            started = await conductor.simulate_post(
                f"/v1/catalog/models/{model_id}/verify", headers=AUTH
            )
            assert (
                started.status_code == 202 and started.json["verification"]["result"] == "pending"
            )
            await eventually(
                lambda m=model_id: orch.catalog.records[m].verification["result"] != "pending"
            )  # type: ignore[index]
            results[model_id] = (await get(conductor, model_id)).json["verification"]
        text = (await conductor.simulate_get("/metrics")).text
    assert results["good"]["result"] == "passed" and results["good"]["digest_match"] is True
    assert results["gap"] == {
        **results["gap"],
        "result": "trust_gap",
        "reason": "no_signature",
        "signatures_present": False,
        "sbom_present": False,
    }
    assert results["bad"]["result"] == "failed" and results["bad"]["digest_match"] is False
    assert results["bad"]["reason"] == "digest_mismatch"
    assert (
        'catalog_verifications_total{engine="none",reason="digest_mismatch",result="failed"} 1.0'
        in text
    )


@pytest.mark.parametrize(
    ("entry", "status", "code", "fragment"),
    [
        ({"id": "x", "digest": "md5:abc"}, 400, "INVALID_PARAMS", "digest"),
        ({"id": "a/b", "digest": "sha256:" + "0" * 64}, 400, "INVALID_PARAMS", "id"),
        (
            {"id": "x", "digest": "sha256:" + "0" * 64, "source_url": "ftp://h/m.gguf"},
            400,
            "INVALID_PARAMS",
            "scheme",
        ),
        (
            {"id": "x", "digest": "sha256:" + "0" * 64, "source_url": "hf://only-org"},
            400,
            "INVALID_PARAMS",
            "hf://",
        ),
        (
            {"id": "x", "digest": "sha256:" + "0" * 64, "source_url": "file:///etc/passwd"},
            400,
            "INVALID_PARAMS",
            "outside the allowed",
        ),
        (
            {"id": "x", "digest": "sha256:" + "0" * 64, "unknown": 1},
            400,
            "INVALID_PARAMS",
            "unknown",
        ),
    ],
)
@pytest.mark.req("HOME-501", "HOME-901")
async def test_bad_entries_are_typed_4xx_and_store_nothing(
    conductor_for: Any, entry: dict[str, Any], status: int, code: str, fragment: str
) -> None:
    async with conductor_for() as (_, conductor):
        refused = await register(conductor, **entry)
        listed = await conductor.simulate_get("/v1/catalog/models", headers=AUTH)
    assert refused.status_code == status and refused.json["code"] == code
    assert fragment in refused.json["message"]
    assert listed.json == []


@pytest.mark.req("HOME-501")
async def test_duplicates_unknown_ids_and_pulls_without_a_source(conductor_for: Any) -> None:
    digest = "sha256:" + "0" * 64
    async with conductor_for() as (_, conductor):
        first = await register(conductor, id="dup", digest=digest)
        second = await register(conductor, id="dup", digest=digest)
        unknown = await get(conductor, "nope")
        verify_unknown = await conductor.simulate_post(
            "/v1/catalog/models/nope/verify", headers=AUTH
        )
        pull_nothing = await conductor.simulate_post("/v1/catalog/models/dup/pull", headers=AUTH)
    assert first.status_code == 201
    assert second.status_code == 409 and second.json["code"] == "CONFLICT"
    assert unknown.status_code == 404 and verify_unknown.status_code == 404
    assert pull_nothing.status_code == 400 and "no source_url" in pull_nothing.json["message"]
