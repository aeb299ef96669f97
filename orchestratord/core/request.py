"""The FR-DP-001 task payload (HOME-204) as a strict pydantic model.

Mirrors ``TaskRequest`` in contracts/openapi/data.yaml: unknown fields are refused so a typo
in a client never silently changes what runs.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from orchestratord.config import Engine, Workload
from orchestratord.core.queue import Priority

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Upper bounds of the integer fields (the contract states the same): far beyond any model
# this serves, small enough that no arithmetic on them can overflow.
MAX_CTX = 1_048_576
MAX_TOKENS = 1_048_576
MAX_DEADLINE_MS = 86_400_000  # one day
# task_id and session_id are UUIDs in their canonical text form only (RFC 9562: lower-case
# hex, hyphenated), so the id a client sent is the id every route knows the task by.
CANONICAL_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_CANONICAL_UUID_RE = re.compile(CANONICAL_UUID)


def is_canonical_uuid(value: str) -> bool:
    return _CANONICAL_UUID_RE.match(value) is not None


class Determinism(StrEnum):
    STRICT = "strict"
    BEST_EFFORT = "best_effort"


class KvHint(StrEnum):
    REUSE = "reuse"
    COLD = "cold"


CanonicalUuid = Annotated[str, Field(pattern=CANONICAL_UUID)]


class TaskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    task_id: CanonicalUuid
    session_id: CanonicalUuid
    workload: Workload
    model_ref: Annotated[str, Field(min_length=1, max_length=256)]
    engine: Engine
    ctx: Annotated[StrictInt, Field(ge=1, le=MAX_CTX)]
    priority: Priority
    seed: Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)] | None = None
    determinism: Determinism = Determinism.BEST_EFFORT
    sampler_profile_version: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    prompt: str | None = None
    inputs: Annotated[list[str], Field(min_length=1)] | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS)]
    deadline_ms: Annotated[StrictInt, Field(ge=1, le=MAX_DEADLINE_MS)]
    expected_tokens: Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS)] | None = None
    kv_hint: KvHint | None = None
    # How long an on-demand pool stays loaded after this task, if no other task comes
    # (RES-101); bounded by the pool's max_keep_alive_ms.
    keep_alive_ms: Annotated[StrictInt, Field(ge=0, le=MAX_DEADLINE_MS)] | None = None

    @model_validator(mode="after")
    def _exactly_one_input(self) -> TaskRequest:
        if (self.prompt is None) == (self.inputs is None):
            raise ValueError("exactly one of prompt or inputs is required")
        return self

    def effective_seed(self) -> int:
        """The request's seed, or one derived from task_id so reruns stay reproducible."""
        if self.seed is not None:
            return self.seed
        digest = hashlib.sha256(uuid.UUID(self.task_id).bytes).digest()
        return int.from_bytes(digest[:8], "big") & INT64_MAX
