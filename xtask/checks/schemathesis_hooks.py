"""Schemathesis hooks for ``python -m xtask conformance`` (loaded via ``SCHEMATHESIS_HOOKS``).

Random tasks almost never name a model the live server serves, so without help every
``POST /v1/tasks`` would be a 400 and the stateful phase could never follow the 202's links
into stream and cancel. Every other generated task body (chosen by a checksum of the body,
so runs repeat) is made runnable: the live pool's model and engine, a ctx it allows, a few
tokens; the others are sent as generated. ``GET /v1/pools/{id}/health`` likewise asks for
the live pool every other time.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import schemathesis

from orchestratord.models.tiny_gguf import TINY_MODEL_REF


def _every_other(value: Any) -> bool:
    return zlib.crc32(json.dumps(value, sort_keys=True, default=str).encode()) % 2 == 0


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    operation = case.operation
    if operation.path == "/v1/tasks" and isinstance(case.body, dict) and _every_other(case.body):
        body = dict(case.body)
        body.pop("inputs", None)
        body.update(
            model_ref=TINY_MODEL_REF,
            engine="llamacpp",
            workload="completion",
            ctx=2048,
            prompt=str(body.get("prompt", "hello"))[:200],
            max_tokens=1 + int(body.get("max_tokens", 1)) % 32
            if isinstance(body.get("max_tokens"), int)
            else 8,
            deadline_ms=60_000,
        )
        if "sampler_profile_version" in body:
            body["sampler_profile_version"] = "v1"
        case.body = body
    elif operation.path == "/v1/pools/{id}/health" and _every_other(case.path_parameters):
        case.path_parameters = {**(case.path_parameters or {}), "id": "default"}
    return case
