"""One token, one user (HOME-105): nothing divides the server between tenants, roles or quotas.

The absence is shown by behaviour: requests claiming to be different tenants or users share
the one queue and its one capacity, the one token opens both planes, any other token is
refused, and neither the config nor the contracts have anywhere to put a tenant, role or
quota.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from orchestratord.adapters.mock import MockAdapter
from orchestratord.config import Config, PoolConfig
from tests.unit.conftest import AUTH, held_handler, task_body

ROOT = Path(__file__).resolve().parents[2]
MULTI_USER_WORDS = ("tenant", "rbac", "role", "quota")


@pytest.mark.req("HOME-105")
async def test_requests_from_different_users_share_one_queue_and_one_capacity(
    conductor_for: Any,
) -> None:
    release = asyncio.Event()
    adapter = MockAdapter(held_handler(release, first_tokens=0))
    async with conductor_for(adapter, slots=1, queue={"capacity": 2}) as (_, conductor):
        answers = []
        for who in ("alice", "bob", "carol", "dave"):
            headers = {**AUTH, "X-Tenant-Id": who, "X-User": who}
            answers.append(
                await conductor.simulate_post("/v1/tasks", json=task_body(), headers=headers)
            )
            await asyncio.sleep(0.02)
        assert [a.status_code for a in answers] == [202, 202, 202, 429]
        # bob and carol queue behind alice's running task in the one queue: no per-user lane,
        # and dave is refused by a capacity nobody holds a share of.
        assert [a.json["queue_position"] for a in answers[1:3]] == [0, 1]
        assert answers[3].json["code"] == "ADMISSION_REJECT"

        for path in ("/v1/pools/p1/health", "/v1/capabilities", "/v1/catalog/models"):
            assert (await conductor.simulate_get(path, headers=AUTH)).status_code == 200
        other = {"Authorization": "Bearer a-second-users-token-0123456789"}
        assert (await conductor.simulate_get("/v1/capabilities", headers=other)).status_code == 403
        release.set()


@pytest.mark.req("HOME-105")
def test_neither_config_nor_contracts_have_tenants_roles_or_quotas(tmp_path: Path) -> None:
    for word in ("tenants", "rbac", "roles", "quotas"):
        with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted"):
            Config.model_validate({"state_dir": str(tmp_path), word: {}})
        with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted"):
            PoolConfig.model_validate({"id": "p", "model_ref": "m", word: {}})
    schema = json.dumps(Config.model_json_schema()).lower()
    for name in ("data", "control"):
        contract = yaml.safe_load((ROOT / "contracts" / "openapi" / f"{name}.yaml").read_text())
        paths = " ".join(contract["paths"]).lower()
        properties = json.dumps(contract.get("components", {}).get("schemas", {})).lower()
        for word in MULTI_USER_WORDS:
            assert word not in paths
            assert f'"{word}' not in properties
            assert f'"{word}' not in schema
