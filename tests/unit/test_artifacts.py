"""Artifacts: content-addressed, idempotent, with lineage, durable; bad input is a typed 4xx."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from orchestratord.app import Orchestrator
from orchestratord.store.db import Store
from tests.contract_schemas import assert_matches
from tests.unit.conftest import AUTH, TOKEN, make_config


async def post(conductor: Any, body: Any, **headers: str) -> Any:
    return await conductor.simulate_post("/v1/artifacts", json=body, headers={**AUTH, **headers})


@pytest.mark.req("HOME-701", "ORCH-3097", "ORCH-3098", "OC-CTRL-2065", "OC-CTRL-2066", "FR-AR-001")
async def test_an_artifact_is_stored_under_its_canonical_sha256_and_read_back_with_lineage(
    conductor_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    plan = {"kind": "plan", "content": {"steps": ["a", "b"]}, "tags": ["run:1", "plan"]}
    async with conductor_for() as (_, conductor):
        created = await post(conductor, plan)
        again = await post(conductor, {**plan, "tags": ["plan", "run:1", "plan"]})
        plan_id = created.json["id"]
        diff = {"kind": "diff", "content": {"patch": "+x"}, "parent": plan_id, "tags": ["run:1"]}
        child = await post(conductor, diff)
        grandchild = await post(
            conductor,
            {
                "kind": "trace",
                "content": {},
                "parent": child.json["id"],
                "metadata": {"signature": "sig"},
            },
        )
        read = await conductor.simulate_get(f"/v1/artifacts/{grandchild.json['id']}", headers=AUTH)
        listed = await conductor.simulate_get("/v1/artifacts?tag=run:1", headers=AUTH)
        everything = await conductor.simulate_get("/v1/artifacts", headers=AUTH)
        text = (await conductor.simulate_get("/metrics")).text
    canonical = json.dumps(
        {
            "content": {"steps": ["a", "b"]},
            "kind": "plan",
            "metadata": {},
            "parent": None,
            "tags": ["plan", "run:1"],
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    assert (
        created.status_code == 201 and created.json["id"] == hashlib.sha256(canonical).hexdigest()
    )
    assert created.headers["Location"] == f"/v1/artifacts/{plan_id}"
    assert created.json["digest"] == f"sha256:{plan_id}" and created.json["tags"] == [
        "plan",
        "run:1",
    ]
    assert_matches("control", "ArtifactRef", created.json)
    assert again.status_code == 201 and again.json == created.json  # same id, first created_ms
    assert read.status_code == 200
    assert_matches("control", "Artifact", read.json)
    assert read.json["lineage"] == [child.json["id"], plan_id]
    assert read.json["metadata"] == {"signature": "sig"} and read.json["parent"] == child.json["id"]
    assert {a["id"] for a in listed.json} == {plan_id, child.json["id"]}
    assert len(everything.json) == 3
    # Two unsigned artifacts were stored (the re-post stored nothing): two logged trust gaps.
    gaps = [r for r in caplog.records if r.getMessage().startswith("trust gap: artifact")]
    assert len(gaps) == 2
    assert 'trust_gaps_total{subject="artifact"} 2.0' in text


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"kind": "poem", "content": {}}, 400, "kind"),
        ({"kind": "plan", "content": "text"}, 400, "content"),
        ({"kind": "plan", "content": {}, "parent": "a" * 64}, 400, "is not a stored artifact"),
        ({"kind": "plan", "content": {}, "parent": "nothex"}, 400, "parent"),
        ({"kind": "plan", "content": {}, "tags": ["has space"]}, 400, "tags"),
        ({"kind": "plan", "content": {}, "extra": 1}, 400, "extra"),
        ({"kind": "plan", "content": {"blob": "x" * 2_000_000}}, 413, "exceeds"),
    ],
)
@pytest.mark.req("HOME-701", "HOME-901")
async def test_bad_artifacts_are_typed_4xx_and_store_nothing(
    conductor_for: Any, body: dict[str, Any], status: int, fragment: str
) -> None:
    async with conductor_for() as (_, conductor):
        refused = await post(conductor, body, **{"X-Correlation-Id": "art-1"})
        listed = await conductor.simulate_get("/v1/artifacts", headers=AUTH)
    assert refused.status_code == status
    assert refused.json["code"] == "INVALID_PARAMS" and fragment in refused.json["message"]
    assert refused.json["correlation_id"] == "art-1"
    assert listed.json == []


@pytest.mark.req("HOME-701", "OC-CTRL-2066")
async def test_unknown_or_malformed_ids_are_404_and_400(conductor_for: Any) -> None:
    async with conductor_for() as (_, conductor):
        missing = await conductor.simulate_get(f"/v1/artifacts/{'0' * 64}", headers=AUTH)
        malformed = await conductor.simulate_get("/v1/artifacts/XYZ", headers=AUTH)
        bad_limit = await conductor.simulate_get("/v1/artifacts?limit=0", headers=AUTH)
    assert (missing.status_code, missing.json["code"]) == (404, "NOT_FOUND")
    assert (malformed.status_code, malformed.json["code"]) == (400, "INVALID_PARAMS")
    assert (bad_limit.status_code, bad_limit.json["code"]) == (400, "INVALID_PARAMS")


@pytest.mark.req("HOME-702")
async def test_artifacts_survive_a_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    body = {"kind": "summary", "content": {"text": "kept"}}
    first = Orchestrator(config, token=TOKEN)
    async with falcon.testing.ASGIConductor(first.app) as conductor:
        created = await post(conductor, body)
    second = Orchestrator(config, token=TOKEN)
    async with falcon.testing.ASGIConductor(second.app) as conductor:
        read = await conductor.simulate_get(f"/v1/artifacts/{created.json['id']}", headers=AUTH)
    assert read.status_code == 200 and read.json["content"] == {"text": "kept"}
    assert Store(tmp_path / "state" / "llorch.db").integrity_check() == "ok"
