"""The OpenAPI contracts are valid, complete, versioned, self-contained and consistent."""

from __future__ import annotations

import copy
import re
import uuid
from typing import Any

import pytest
from openapi_spec_validator import validate

from orchestratord import API_VERSION
from orchestratord.errors import ErrorCode
from tests.contract_schemas import DOCUMENTS, component_validator, load_openapi, operations
from tests.unit.conftest import AUTH
from xtask.spec.spec_extract import ID_PATTERN

ID_GRAMMAR = re.compile(rf"^{ID_PATTERN}$")

# Every operation of the requirements catalog, with the IDs its x-req-id must at least name.
EXPECTED: dict[str, dict[tuple[str, str], set[str]]] = {
    "data": {
        ("POST", "/v1/tasks"): {
            "ORCH-2001",
            "ORCH-2008",
            "HOME-204",
            "HOME-205",
            "HOME-206",
            "HOME-208",
        },
        ("GET", "/v1/tasks/{id}/stream"): {
            "ORCH-2002",
            "HOME-301",
            "HOME-302",
            "HOME-303",
            "HOME-305",
            "OC-CTRL-2020",
            "OC-CTRL-2021",
            "OC-CTRL-2022",
            "OC-CTRL-2023",
        },
        ("POST", "/v1/tasks/{id}/cancel"): {"ORCH-2003", "HOME-304"},
        ("GET", "/v1/sessions/{id}"): {"ORCH-2004", "HOME-401"},
        ("DELETE", "/v1/sessions/{id}"): {"ORCH-2005"},
        ("POST", "/v1/tools/fetch"): {"FR-TL-001", "HOME-104"},
    },
    "control": {
        ("GET", "/v1/capabilities"): {
            "HOME-601",
            "HOME-602",
            "HOME-1002",
            "OC-CTRL-2060",
            "OC-CTRL-2061",
            "ORCH-3095",
            "ORCH-3096",
        },
        ("GET", "/v1/pools/{id}/health"): {"ORCH-2103", "HOME-506", "OC-CTRL-2001"},
        ("POST", "/v1/pools/{id}/drain"): {"ORCH-2101", "HOME-504", "OC-CTRL-2002"},
        ("POST", "/v1/pools/{id}/resume"): {"ORCH-2101", "HOME-504"},
        ("POST", "/v1/pools/{id}/reload"): {"ORCH-2102", "HOME-505", "OC-CTRL-2003"},
        ("POST", "/v1/pools/{id}/unload"): {"RES-203"},
        ("GET", "/v1/replicasets"): {"ORCH-2104", "OC-CTRL-2004"},
        ("POST", "/v1/catalog/models"): {"HOME-501"},
        ("GET", "/v1/catalog/models"): {"HOME-501"},
        ("GET", "/v1/catalog/models/{id}"): {"HOME-501"},
        ("POST", "/v1/catalog/models/{id}/pull"): {"HOME-501"},
        ("POST", "/v1/catalog/models/{id}/verify"): {"HOME-501"},
        ("DELETE", "/v1/catalog/models/{id}"): {"HARD-212"},
        ("DELETE", "/v1/catalog/models/{id}/pull"): {"HARD-212"},
        ("POST", "/v1/catalog/models/{id}/state"): {"HOME-501", "HOME-502"},
        ("POST", "/v1/artifacts"): {"HOME-701", "HOME-702"},
        ("GET", "/v1/artifacts"): {"HOME-701", "FR-AR-001"},
        ("GET", "/v1/artifacts/{id}"): {"HOME-701", "HOME-702"},
        ("GET", "/metrics"): {"HOME-801", "OC-CTRL-2051", "ORCH-3028"},
    },
}

# Components both documents carry, copied verbatim (each document must stand alone).
SHARED = {
    "securitySchemes": {"bearerAuth"},
    "parameters": {"CorrelationId"},
    "headers": {"CorrelationId"},
    "schemas": {"Engine", "Workload", "PolicyLabel", "ErrorCode", "ErrorEnvelope"},
    "responses": {
        "BadRequest",
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "Conflict",
        "PayloadTooLarge",
        "Accepted",
        "NoContent",
        "NotImplemented",
    },
}
CORRELATION_PARAMETER = "#/components/parameters/CorrelationId"
ENVELOPE = "#/components/schemas/ErrorEnvelope"
SSE_EVENTS = {"queued", "loading", "started", "token", "metrics", "end", "error"}


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow local $refs until a concrete object."""
    while "$ref" in node:
        ref: str = node["$ref"]
        assert ref.startswith("#/"), f"non-local $ref {ref}"
        target: Any = doc
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


def refs_in(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= refs_in(value)
        return found
    if isinstance(node, list):
        return set().union(*(refs_in(item) for item in node)) if node else set()
    return set()


def all_operations() -> list[tuple[str, tuple[str, str], dict[str, Any]]]:
    return [(name, key, op) for name in DOCUMENTS for key, op in operations(name).items()]


@pytest.mark.req("HOME-1201", "FR-CT-001")
@pytest.mark.parametrize("name", DOCUMENTS)
def test_document_is_valid_openapi_3_1(name: str) -> None:
    document = load_openapi(name)
    validate(copy.deepcopy(document))
    assert document["openapi"].startswith("3.1.")
    assert document["info"]["title"]
    assert refs_in(document), "expected $ref components"
    assert all(ref.startswith("#/components/") for ref in refs_in(document)), "self-contained"


@pytest.mark.req("HOME-602", "ORCH-3096", "FR-DV-002")
def test_info_version_is_the_same_api_version_in_both() -> None:
    versions = {load_openapi(name)["info"]["version"] for name in DOCUMENTS}
    assert versions == {API_VERSION}
    assert re.fullmatch(r"1\.\d+\.\d+", API_VERSION)  # OrchQueue v1: additions, no breaks


@pytest.mark.req("HOME-1201")
@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_operation_of_the_catalog_is_declared_with_requirement_ids(name: str) -> None:
    ops = operations(name)
    assert set(ops) == set(EXPECTED[name])
    for key, op in ops.items():
        ids = op.get("x-req-id")
        assert isinstance(ids, list) and ids, key
        assert all(isinstance(i, str) and ID_GRAMMAR.match(i) for i in ids), (key, ids)
        assert len(ids) == len(set(ids)), (key, "duplicate IDs")
        assert EXPECTED[name][key] <= set(ids), (key, EXPECTED[name][key] - set(ids))
        assert op.get("operationId"), key
        assert op.get("summary") or op.get("description"), key
        assert op.get("x-status") in ("implemented", "planned"), key
    operation_ids = [op["operationId"] for _, _, op in all_operations()]
    assert len(operation_ids) == len(set(operation_ids))


@pytest.mark.req("HOME-102", "OC-CTRL-2040")
@pytest.mark.parametrize("name", DOCUMENTS)
def test_bearer_auth_everywhere_except_metrics(name: str) -> None:
    document = load_openapi(name)
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert document["security"] == [{"bearerAuth": []}]
    for key, op in operations(name).items():
        if key == ("GET", "/metrics"):
            assert op["security"] == [], key
        else:
            assert "security" not in op, (key, "must inherit the global bearer scheme")


@pytest.mark.req("HOME-103", "OC-CTRL-2052", "FR-OB-001")
def test_every_operation_accepts_the_correlation_id_header() -> None:
    for name, key, op in all_operations():
        refs = [p.get("$ref") for p in op.get("parameters", [])]
        assert CORRELATION_PARAMETER in refs, (name, key)
        parameter = resolve(load_openapi(name), {"$ref": CORRELATION_PARAMETER})
        assert (parameter["name"], parameter["in"], parameter["required"]) == (
            "X-Correlation-Id",
            "header",
            False,
        )


@pytest.mark.req("HOME-901", "HOME-103", "OC-CTRL-2030", "ORCH-2006")
def test_every_response_echoes_the_correlation_id_and_errors_use_the_envelope() -> None:
    for name, key, op in all_operations():
        document = load_openapi(name)
        for status, raw in op["responses"].items():
            response = resolve(document, raw)
            header = response.get("headers", {}).get("X-Correlation-Id", {})
            assert header.get("$ref") == "#/components/headers/CorrelationId", (key, status)
            if int(status) >= 400:
                content = response["content"]
                assert set(content) == {"application/json"}, (key, status)
                assert content["application/json"]["schema"] == {"$ref": ENVELOPE}, (key, status)


@pytest.mark.req("HOME-902", "ORCH-2007", "FR-DP-003")
def test_queue_full_429_declares_backoff_headers_and_body() -> None:
    document = load_openapi("data")
    response = resolve(document, operations("data")[("POST", "/v1/tasks")]["responses"]["429"])
    headers = {name: resolve(document, h) for name, h in response["headers"].items()}
    assert {"Retry-After", "X-Backoff-Ms", "X-Correlation-Id"} <= set(headers)
    assert headers["Retry-After"]["schema"]["type"] == "integer"
    assert headers["X-Backoff-Ms"]["schema"]["type"] == "integer"
    component_validator("data", "ErrorEnvelope").validate(
        {
            "code": "ADMISSION_REJECT",
            "message": "queue full",
            "engine": "llamacpp",
            "retriable": True,
            "retry_after_ms": 1500,
            "policy_label": "reject",
            "correlation_id": "c-1",
        }
    )


@pytest.mark.req("HOME-1201")
@pytest.mark.parametrize("name", DOCUMENTS)
def test_shared_components_are_identical_and_self_contained(name: str) -> None:
    components = load_openapi(name)["components"]
    other = load_openapi(next(n for n in DOCUMENTS if n != name))["components"]
    shared_refs = {f"#/components/{kind}/{c}" for kind, names in SHARED.items() for c in names}
    for kind, names in SHARED.items():
        for component in names:
            assert components[kind][component] == other[kind][component], (kind, component)
            assert refs_in(components[kind][component]) <= shared_refs, (kind, component)


@pytest.mark.req("HOME-901", "HOME-1202", "OC-CTRL-2031")
def test_error_codes_are_the_servers_codes() -> None:
    enum = load_openapi("data")["components"]["schemas"]["ErrorCode"]["enum"]
    assert enum == [code.value for code in ErrorCode]
    assert {"UNAUTHORIZED", "FORBIDDEN", "NOT_FOUND", "CONFLICT"} <= set(enum)


@pytest.mark.req("HOME-1201")
def test_request_bodies_are_strict_and_response_bodies_list_required_fields() -> None:
    for name, key, op in all_operations():
        document = load_openapi(name)
        if "requestBody" in op:
            schema = resolve(document, op["requestBody"]["content"]["application/json"]["schema"])
            assert schema["additionalProperties"] is False, key
        for status, raw in op["responses"].items():
            content = resolve(document, raw).get("content", {})
            if int(status) >= 400 or "application/json" not in content:
                continue
            schema = resolve(document, content["application/json"]["schema"])
            if schema.get("type") == "array":
                schema = resolve(document, schema["items"])
            parts = [schema, *(resolve(document, s) for s in schema.get("allOf", []))]
            assert any(part.get("required") for part in parts), (key, status)


@pytest.mark.req("HOME-301", "OC-CTRL-2020", "OC-CTRL-2021")
def test_sse_events_are_declared_with_payload_schemas() -> None:
    document = load_openapi("data")
    response = operations("data")[("GET", "/v1/tasks/{id}/stream")]["responses"]["200"]
    assert set(response["content"]) == {"text/event-stream"}
    events = response["x-sse-events"]
    assert set(events) == SSE_EVENTS
    for ref in events.values():
        assert resolve(document, ref)["type"] == "object"
    assert {
        "X-Budget-Tokens-Remaining",
        "X-Budget-Time-Remaining-Ms",
        "X-Budget-Cost-Remaining",
    } <= set(response["headers"])


@pytest.mark.req("PERF-101")
def test_the_one_request_form_declares_the_streams_events_after_accepted() -> None:
    document = load_openapi("data")
    responses = operations("data")[("POST", "/v1/tasks")]["responses"]
    stream = operations("data")[("GET", "/v1/tasks/{id}/stream")]["responses"]["200"]
    one = responses["200"]
    assert set(one["content"]) == {"text/event-stream"}
    assert set(one["x-sse-events"]) == SSE_EVENTS | {"accepted"}
    assert {k: v for k, v in one["x-sse-events"].items() if k != "accepted"} == stream[
        "x-sse-events"
    ]
    accepted = resolve(document, one["x-sse-events"]["accepted"])
    admitted = resolve(document, responses["202"]["content"]["application/json"]["schema"])
    assert accepted == admitted  # the first frame carries what the 202 carries
    assert set(one["headers"]) == set(responses["202"]["headers"])


@pytest.mark.req("HOME-301", "OC-CTRL-2021", "OC-CTRL-2022", "OC-CTRL-2023")
def test_sse_payload_schemas_accept_real_frames_and_reject_broken_ones() -> None:
    good = {
        "SSEStarted": {
            "queue_position": 0,
            "predicted_start_ms": None,
            "engine": "llamacpp",
            "engine_version": "b4500",
            "model_digest": "sha256:00",
            "pool_id": "p1",
            "replica_id": "p1-r0",
            "seed": 2**63 - 1,
        },
        "SSEToken": {"t": "hello", "i": 0},
        "SSEMetrics": {
            "queue_depth": 1,
            "on_time_probability": 0.5,
            "kv_warmth": False,
            "tokens_out": 3,
            "future_signal": "additive",
        },
        "SSEEnd": {"tokens_out": 3, "decode_ms": 12, "finish_reason": "canceled"},
        "SSEError": {"code": "DECODE_TIMEOUT", "message": "idle", "engine": "llamacpp"},
    }
    for schema, payload in good.items():
        component_validator("data", schema).validate(payload)
    bad = {
        "SSEToken": {"t": "x", "i": -1},
        "SSEMetrics": {"queue_depth": 1, "on_time_probability": 1.5, "kv_warmth": True},
        "SSEEnd": {"tokens_out": 3, "decode_ms": 12, "finish_reason": "eos"},
        "SSEError": {"code": "OOPS", "message": "x"},
    }
    for schema, payload in bad.items():
        assert not component_validator("data", schema).is_valid(payload), schema


def valid_task() -> dict[str, Any]:
    return {
        "task_id": str(uuid.uuid4()),
        "session_id": str(uuid.uuid4()),
        "workload": "completion",
        "model_ref": "tiny/model",
        "engine": "llamacpp",
        "ctx": 256,
        "priority": "interactive",
        "seed": -(2**63),
        "determinism": "strict",
        "sampler_profile_version": "default",
        "prompt": "hello",
        "max_tokens": 8,
        "deadline_ms": 30_000,
        "expected_tokens": 0,
        "kv_hint": "reuse",
    }


@pytest.mark.req("HOME-204", "FR-DP-001")
def test_task_request_schema_accepts_valid_tasks() -> None:
    validator = component_validator("data", "TaskRequest")
    validator.validate(valid_task())
    optional = {"seed", "determinism", "sampler_profile_version", "expected_tokens", "kv_hint"}
    minimal = {k: v for k, v in valid_task().items() if k not in optional}
    validator.validate(minimal)
    embedding = {**minimal, "workload": "embedding", "inputs": ["a", "b"]}
    del embedding["prompt"]
    validator.validate(embedding)


INVALID_TASKS: dict[str, dict[str, Any]] = {
    "non-uuid task_id": {"task_id": "task-1"},
    "non-uuid session_id": {"session_id": "not-a-uuid"},
    "both prompt and inputs": {"inputs": ["x"]},
    "unknown field": {"temperature": 0.7},
    "unknown engine": {"engine": "ollama"},
    "unknown workload": {"workload": "chat"},
    "ctx zero": {"ctx": 0},
    "max_tokens zero": {"max_tokens": 0},
    "deadline zero": {"deadline_ms": 0},
    "seed beyond int64": {"seed": 2**63},
    "string seed": {"seed": "7"},
    "empty inputs": {"inputs": [], "prompt": None},
    "bad kv_hint": {"kv_hint": "warm"},
    "bad determinism": {"determinism": "exact"},
    "empty model_ref": {"model_ref": ""},
    "neither prompt nor inputs": {"prompt": None},
    "missing deadline_ms": {"deadline_ms": None},
    "missing task_id": {"task_id": None},
}


@pytest.mark.req("HOME-205", "OC-CTRL-2010")
@pytest.mark.parametrize("case", sorted(INVALID_TASKS))
def test_task_request_schema_rejects_invalid_tasks(case: str) -> None:
    task = valid_task()
    task.update(INVALID_TASKS[case])
    task = {k: v for k, v in task.items() if v is not None}
    assert not component_validator("data", "TaskRequest").is_valid(task), case


@pytest.mark.req("HOME-901", "FR-ER-001")
def test_error_envelope_schema_accepts_envelopes_and_rejects_others() -> None:
    for name in DOCUMENTS:
        validator = component_validator(name, "ErrorEnvelope")
        validator.validate({"code": "NOT_FOUND", "message": "no task", "correlation_id": "x"})
        for broken in (
            {"code": "NOT_FOUND", "message": "no task"},
            {"code": "TEAPOT", "message": "m", "correlation_id": "x"},
            {"code": "INTERNAL", "message": "", "correlation_id": "x"},
            {"code": "INTERNAL", "message": "m", "correlation_id": "x", "detail": "extra"},
            {"code": "INTERNAL", "message": "m", "correlation_id": "x", "retry_after_ms": -1},
            {"code": "INTERNAL", "message": "m", "correlation_id": "x", "policy_label": "lru"},
            {"code": "INTERNAL", "message": "m", "correlation_id": "x", "engine": "ollama"},
        ):
            assert not validator.is_valid(broken), (name, broken)


def test_component_validator_knows_only_declared_schemas() -> None:
    with pytest.raises(KeyError):
        component_validator("data", "NoSuchSchema")
    with pytest.raises(ValueError, match="unknown OpenAPI document"):
        load_openapi("nope")


@pytest.mark.req("HOME-1201", "HOME-1202")
async def test_implemented_operations_are_routed_and_planned_ones_answer_a_typed_501(
    conductor_for: Any,
) -> None:
    async with conductor_for() as (_, conductor):
        router_404 = (await conductor.simulate_get("/no/such/route", headers=AUTH)).json
        for _, (method, path), op in all_operations():
            concrete = path.replace("{id}", "00000000-0000-4000-8000-000000000000")
            result = await conductor.simulate_request(method, concrete, headers=AUTH)
            unrouted = result.status_code == 404 and (
                result.json["message"] == router_404["message"]
            )
            assert not unrouted, (method, path, "documented but not routed")
            assert result.status_code != 405, (method, path)
            if op["x-status"] == "planned":
                assert result.status_code == 501, (method, path)
                assert result.json["code"] == "NOT_IMPLEMENTED"
                assert "501" in op["responses"], (method, path, "501 not documented")
            else:
                assert result.status_code != 501, (method, path, "implemented: set x-status")


@pytest.mark.req("HOME-1201")
async def test_every_route_the_server_serves_is_in_a_contract(conductor_for: Any) -> None:
    import falcon.inspect  # noqa: PLC0415

    async with conductor_for() as (orch, _):
        served = {
            (method.method, re.sub(r"\{[a-z_]+\}", "{id}", route.path))
            for route in falcon.inspect.inspect_routes(orch.app)
            for method in route.methods
            if not method.internal and method.method != "OPTIONS"
        }
    documented = {key for _, key, _ in all_operations()}
    assert served, "no routes found"
    assert served <= documented, sorted(served - documented)


@pytest.mark.req("HOME-1201")
def test_the_planned_routes_are_the_contracts_planned_operations() -> None:
    from orchestratord.api.planned import PLANNED_ROUTES  # noqa: PLC0415

    served = {
        (method, re.sub(r"\{[a-z_]+\}", "{id}", route))
        for route, methods in PLANNED_ROUTES.items()
        for method in methods
    }
    planned = {key for _, key, op in all_operations() if op["x-status"] == "planned"}
    assert served == planned


@pytest.mark.req("HOME-1202", "FR-CT-002")
def test_the_request_model_and_the_contract_agree() -> None:
    """The pydantic TaskRequest the server validates with and the OpenAPI TaskRequest match:
    same fields, same required set, same enumerations, same strictness."""
    from orchestratord.core.request import TaskRequest  # noqa: PLC0415

    model = TaskRequest.model_json_schema()
    document = load_openapi("data")
    contract = document["components"]["schemas"]["TaskRequest"]
    assert set(model["properties"]) == set(contract["properties"])
    assert set(model["required"]) == set(contract["required"])
    assert model.get("additionalProperties") is False
    assert contract["additionalProperties"] is False

    def enum_of(schema: dict[str, Any], defs: dict[str, Any]) -> set[str] | None:
        for option in [schema, *schema.get("anyOf", [])]:
            ref = option.get("$ref", "")
            target = defs.get(ref.rsplit("/", 1)[-1], option) if ref else option
            if "enum" in target:
                return set(target["enum"])
        return None

    for name, prop in contract["properties"].items():
        resolved = resolve(document, prop)
        want = set(resolved["enum"]) if "enum" in resolved else None
        got = enum_of(model["properties"][name], model.get("$defs", {}))
        assert got == want, (name, got, want)
