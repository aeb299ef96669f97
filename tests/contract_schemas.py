"""Validate real payloads against the OpenAPI contracts' component schemas.

Each document (``contracts/openapi/data.yaml``, ``control.yaml``) is self-contained: its local
``$ref``s are resolved through a ``referencing`` registry that holds the whole document under a
made-up URI, so a component is checked exactly as the contract writes it (JSON Schema 2020-12,
the dialect of OpenAPI 3.1), ``format: uuid`` included.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

OPENAPI_DIR = Path(__file__).resolve().parent.parent / "contracts" / "openapi"
DOCUMENTS = ("data", "control")


def _document_name(name: str) -> str:
    if name not in DOCUMENTS:
        raise ValueError(f"unknown OpenAPI document {name!r}; expected one of {DOCUMENTS}")
    return name


def document_uri(name: str) -> str:
    """The made-up URI the document is registered under (never fetched)."""
    return f"https://llama-orch.invalid/contracts/openapi/{_document_name(name)}.yaml"


@functools.cache
def load_openapi(name: str) -> dict[str, Any]:
    """The parsed document ``contracts/openapi/<name>.yaml`` (``name``: data or control)."""
    path = OPENAPI_DIR / f"{_document_name(name)}.yaml"
    document: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return document


@functools.cache
def _registry(name: str) -> Registry[Any]:
    resource: Resource[Any] = Resource.from_contents(
        load_openapi(name), default_specification=DRAFT202012
    )
    registry: Registry[Any] = Registry().with_resource(document_uri(name), resource)
    return registry


@functools.cache
def component_validator(doc_name: str, schema_name: str) -> Validator:
    """A Draft 2020-12 validator for ``#/components/schemas/<schema_name>`` of a document."""
    name = _document_name(doc_name)
    if schema_name not in load_openapi(name)["components"]["schemas"]:
        raise KeyError(f"{name}.yaml has no components.schemas.{schema_name}")
    schema = {"$ref": f"{document_uri(name)}#/components/schemas/{schema_name}"}
    validator: Validator = Draft202012Validator(
        schema,
        registry=_registry(name),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )
    return validator


def assert_matches(doc_name: str, schema_name: str, instance: Any) -> None:
    errors = sorted(component_validator(doc_name, schema_name).iter_errors(instance), key=str)
    assert not errors, f"{schema_name}: " + "; ".join(e.message for e in errors[:3])


def operations(doc_name: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every operation of a document keyed by (METHOD, path)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path, item in load_openapi(doc_name)["paths"].items():
        for method, operation in item.items():
            found[(method.upper(), path)] = operation
    return found


def sse_event_schemas() -> dict[str, str]:
    """SSE event name -> payload schema name, read from the ``x-sse-events`` of the stream
    and of the one-request submission (which adds ``accepted``)."""
    data = operations("data")
    events: dict[str, dict[str, str]] = {
        **data[("GET", "/v1/tasks/{id}/stream")]["responses"]["200"]["x-sse-events"],
        **data[("POST", "/v1/tasks")]["responses"]["200"]["x-sse-events"],
    }
    return {event: ref["$ref"].rsplit("/", 1)[1] for event, ref in events.items()}


SSE_SCHEMAS = sse_event_schemas()


def assert_frames_match(frames: list[tuple[str, Any]]) -> None:
    """Every frame is a declared event whose payload matches its contract schema."""
    for event, payload in frames:
        assert event in SSE_SCHEMAS, f"undeclared SSE event {event!r}"
        assert_matches("data", SSE_SCHEMAS[event], payload)
