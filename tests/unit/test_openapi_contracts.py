"""The OpenAPI contracts are valid, complete, versioned and match what the server routes."""

from __future__ import annotations

import re
from typing import Any

import pytest
from openapi_spec_validator import validate

from orchestratord import API_VERSION
from tests.contract_schemas import OPENAPI_DIR, load_openapi, operations
from tests.unit.conftest import AUTH

ID_GRAMMAR = re.compile(r"^(HOME-\d{3,4}|ORCH-\d{4}|OC-[A-Z]+-\d{4}|FR-[A-Z]{2}-\d{3})$")

EXPECTED = {
    "data": {
        ("POST", "/v1/tasks"),
        ("GET", "/v1/tasks/{id}/stream"),
        ("POST", "/v1/tasks/{id}/cancel"),
        ("GET", "/v1/sessions/{id}"),
        ("DELETE", "/v1/sessions/{id}"),
    },
    "control": {
        ("GET", "/v1/capabilities"),
        ("GET", "/v1/pools/{id}/health"),
        ("POST", "/v1/pools/{id}/drain"),
        ("POST", "/v1/pools/{id}/reload"),
        ("GET", "/v1/replicasets"),
        ("POST", "/v1/catalog/models"),
        ("GET", "/v1/catalog/models/{id}"),
        ("POST", "/v1/catalog/models/{id}/verify"),
        ("POST", "/v1/catalog/models/{id}/state"),
        ("POST", "/v1/artifacts"),
        ("GET", "/v1/artifacts/{id}"),
        ("GET", "/metrics"),
    },
}
DOCS = sorted(EXPECTED)


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow one $ref (local or into common.yaml)."""
    ref = node.get("$ref")
    if ref is None:
        return node
    target = load_openapi("common") if ref.startswith("./common.yaml") else doc
    for part in ref.split("#/", 1)[1].split("/"):
        target = target[part]
    return resolve(doc, target)


@pytest.mark.req("HOME-1201", "FR-CT-001")
@pytest.mark.parametrize("name", DOCS)
def test_document_is_valid_openapi(name: str) -> None:
    path = OPENAPI_DIR / f"{name}.yaml"
    validate(load_openapi(name), base_uri=path.as_uri())


@pytest.mark.req("HOME-602", "ORCH-3096")
def test_info_version_is_the_api_version_in_both() -> None:
    assert {load_openapi(name)["info"]["version"] for name in DOCS} == {API_VERSION}


@pytest.mark.req("HOME-1201")
@pytest.mark.parametrize("name", DOCS)
def test_every_operation_of_the_catalog_is_declared_with_ids(name: str) -> None:
    ops = operations(name)
    assert set(ops) == EXPECTED[name]
    for key, op in ops.items():
        ids = op.get("x-req-id")
        assert isinstance(ids, list) and ids, key
        assert all(ID_GRAMMAR.match(i) for i in ids), (key, ids)
        assert op.get("x-status") in ("implemented", "planned"), key
        assert op.get("operationId"), key


@pytest.mark.req("HOME-901", "HOME-103", "HOME-1201")
@pytest.mark.parametrize("name", DOCS)
def test_errors_use_the_envelope_and_every_response_has_the_correlation_header(
    name: str,
) -> None:
    doc = load_openapi(name)
    for key, op in operations(name).items():
        for status, raw in op["responses"].items():
            response = resolve(doc, raw)
            assert "X-Correlation-Id" in response.get("headers", {}), (key, status)
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema["$ref"].endswith("#/components/schemas/ErrorEnvelope"), (key, status)


@pytest.mark.req("HOME-902", "ORCH-2007")
def test_429_declares_backoff_headers() -> None:
    doc = load_openapi("data")
    response = resolve(doc, operations("data")[("POST", "/v1/tasks")]["responses"]["429"])
    assert {"Retry-After", "X-Backoff-Ms", "X-Correlation-Id"} <= set(response["headers"])


@pytest.mark.req("HOME-301", "OC-CTRL-2020")
def test_sse_events_are_declared_with_payload_schemas() -> None:
    op = operations("data")[("GET", "/v1/tasks/{id}/stream")]
    events = op["responses"]["200"]["x-sse-events"]
    assert set(events) == {"started", "token", "metrics", "end", "error"}
    schemas = load_openapi("data")["components"]["schemas"]
    for ref in events.values():
        assert ref["$ref"].rsplit("/", 1)[1] in schemas


@pytest.mark.req("HOME-1201", "HOME-1202")
async def test_implemented_operations_are_routed_and_planned_ones_are_not(
    conductor_for: Any,
) -> None:
    async with conductor_for() as (_, conductor):
        router_404 = (await conductor.simulate_get("/no/such/route", headers=AUTH)).json
        for name in DOCS:
            for (method, path), op in operations(name).items():
                concrete = path.replace("{id}", "00000000-0000-4000-8000-000000000000")
                result = await conductor.simulate_request(method, concrete, headers=AUTH)
                unrouted = result.status_code == 404 and (
                    result.json["message"] == router_404["message"]
                )
                if op["x-status"] == "implemented":
                    assert not unrouted, (method, path, "implemented but not routed")
                    assert result.status_code != 405, (method, path)
                else:
                    assert unrouted, (method, path, "planned but routed")


@pytest.mark.req("HOME-1202", "FR-CT-002")
def test_the_request_model_and_the_contract_agree() -> None:
    """The pydantic TaskRequest the server validates with and the OpenAPI TaskRequest match:
    same fields, same required set, same enumerations, same strictness."""
    from orchestratord.core.request import TaskRequest  # noqa: PLC0415

    model = TaskRequest.model_json_schema()
    contract = load_openapi("data")["components"]["schemas"]["TaskRequest"]
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

    common = load_openapi("common")["components"]["schemas"]
    for name, prop in contract["properties"].items():
        resolved = common[prop["$ref"].rsplit("/", 1)[1]] if "$ref" in prop else prop
        want = set(resolved["enum"]) if "enum" in resolved else None
        got = enum_of(model["properties"][name], model.get("$defs", {}))
        assert got == want, (name, got, want)
