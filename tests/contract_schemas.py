"""Validate real responses against the OpenAPI contracts' component schemas.

The documents reference shared components in ``common.yaml``; a ``referencing`` registry
retrieves those files on demand, so a schema is checked exactly as written in the contract.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

OPENAPI_DIR = Path(__file__).resolve().parent.parent / "contracts" / "openapi"


@functools.cache
def load_openapi(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((OPENAPI_DIR / f"{name}.yaml").read_text())
    return document


@functools.cache
def _retrieve(uri: str) -> Resource[Any]:
    path = Path(uri.removeprefix("file://"))
    return Resource.from_contents(
        yaml.safe_load(path.read_text()), default_specification=DRAFT202012
    )


@functools.cache
def component_validator(doc_name: str, schema_name: str) -> Draft202012Validator:
    registry: Registry[Any] = Registry(retrieve=_retrieve)  # type: ignore[call-arg]
    base = (OPENAPI_DIR / f"{doc_name}.yaml").as_uri()
    schema = {"$ref": f"{base}#/components/schemas/{schema_name}"}
    return Draft202012Validator(
        schema, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def assert_matches(doc_name: str, schema_name: str, instance: Any) -> None:
    errors = sorted(component_validator(doc_name, schema_name).iter_errors(instance), key=str)
    assert not errors, f"{schema_name}: " + "; ".join(e.message for e in errors[:3])


def operations(doc_name: str) -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path, item in load_openapi(doc_name)["paths"].items():
        for method, operation in item.items():
            found[(method.upper(), path)] = operation
    return found


SSE_SCHEMAS = {
    "started": "SSEStarted",
    "token": "SSEToken",
    "metrics": "SSEMetrics",
    "end": "SSEEnd",
    "error": "SSEError",
}


def assert_frames_match(frames: list[tuple[str, Any]]) -> None:
    """Every frame is a declared event whose payload matches its contract schema."""
    for event, payload in frames:
        assert event in SSE_SCHEMAS, f"undeclared SSE event {event!r}"
        assert_matches("data", SSE_SCHEMAS[event], payload)
