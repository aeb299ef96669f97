"""Config: embedded default, strictness, env overrides, schema generation (HOME-1203)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from orchestratord.config import Config, Engine, PoolConfig, load_config
from orchestratord.models.tiny_gguf import TINY_MODEL_REF
from xtask.checks import regen

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "config" / "examples").glob("*.yaml"))


@pytest.mark.req("HOME-101")
def test_embedded_default_is_one_loopback_cpu_pool_on_the_tiny_model() -> None:
    config = load_config(None)
    assert config.server.host == "127.0.0.1"
    (pool,) = config.pools
    assert pool.engine is Engine.LLAMACPP
    assert pool.model_ref == TINY_MODEL_REF
    assert pool.devices == []


@pytest.mark.req("OC-CONFIG-6001")
def test_unknown_keys_are_rejected_in_strict_mode_and_logged_in_compat_mode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  prot: 9000\n")
    with pytest.raises(ValidationError, match="prot"):
        load_config(path)
    path.write_text(
        "config_mode: compat\nserver: {prot: 1, port: 9001}\npools:\n"
        f"  - {{id: a, model_ref: {TINY_MODEL_REF}, queue: {{capacity: 3, zap: 1}}}}\n"
        "sampler_profiles: {v1: {temperature: 0.5, weird: 2}}\n"
    )
    config = load_config(path)
    assert (config.server.port, config.pools[0].queue.capacity) == (9001, 3)
    assert config.sampler_profiles["v1"].temperature == 0.5
    logged = caplog.text
    for key in ("server.prot", "pools[0].queue.zap", "sampler_profiles.v1.weird"):
        assert f"ignoring unknown key {key}" in logged


def test_model_path_required_unless_generated_model() -> None:
    with pytest.raises(ValidationError, match="model_path is required"):
        PoolConfig(id="x", model_ref="someone/else")


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  port: 9000\n  heartbeat_ms: 300\n")
    monkeypatch.setenv("LLORCH_SERVER__PORT", "9100")
    config = load_config(path)
    assert config.server.port == 9100
    assert config.server.heartbeat_ms == 300


@pytest.mark.req("OC-CONFIG-6010")
def test_schema_generation_is_deterministic_and_committed() -> None:
    first = regen.config_schema_bytes()
    assert first == regen.config_schema_bytes()
    committed = regen.CONFIG_SCHEMA.read_bytes()
    assert committed == first, "run `python -m xtask regen` and commit the schema"


@pytest.mark.req("OC-CONFIG-6002")
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_validate(example: Path) -> None:
    schema = json.loads(regen.CONFIG_SCHEMA.read_text())
    data = yaml.safe_load(example.read_text())
    jsonschema.validate(data, schema)
    assert isinstance(load_config(example), Config)


def test_schema_rejects_what_the_models_reject() -> None:
    schema = json.loads(regen.CONFIG_SCHEMA.read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"server": {"prot": 1}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"pools": [{"id": "p", "model_ref": "m", "slots": 0}]}, schema)


@pytest.mark.req("HOME-1203", "ORCH-3030")
def test_the_schema_carries_every_knob_family_and_enforces_strictness() -> None:
    schema = json.loads(regen.CONFIG_SCHEMA.read_text())
    assert schema == json.loads(regen.config_schema_bytes())  # generated from the models
    top = set(schema["properties"])
    # priorities (queues), determinism (sampler profiles), sessions and budgets, catalog,
    # artifacts (server.max_artifact_bytes), tooling (tools, tracing), GPUs
    assert {"pools", "sampler_profiles", "sessions", "catalog", "tools", "tracing", "gpus"} <= top
    defs = schema["$defs"]
    assert set(defs["SessionsConfig"]["properties"]) >= {"ttl_ms", "max_turns", "budgets"}
    assert set(defs["BudgetsConfig"]["properties"]) == {"tokens", "time_ms", "cost"}
    assert "max_artifact_bytes" in defs["ServerConfig"]["properties"]
    assert set(defs["QueueConfig"]["properties"]["rate_limit_rps"]["propertyNames"]["enum"]) == {
        "interactive",
        "batch",
    }
    for name, definition in defs.items():  # strict everywhere: unknown keys are errors
        if definition.get("type") == "object" and "properties" in definition:
            assert definition.get("additionalProperties") is False, name
