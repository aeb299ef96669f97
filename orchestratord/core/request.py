"""The FR-DP-001 task payload (HOME-204) as a strict pydantic model.

Mirrors ``TaskRequest`` in contracts/openapi/data.yaml: unknown fields are refused so a typo
in a client never silently changes what runs.
"""

from __future__ import annotations

import hashlib
import uuid
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from orchestratord.config import Engine, Workload
from orchestratord.core.queue import Priority

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class Determinism(StrEnum):
    STRICT = "strict"
    BEST_EFFORT = "best_effort"


class KvHint(StrEnum):
    REUSE = "reuse"
    COLD = "cold"


PositiveInt = Annotated[StrictInt, Field(ge=1)]


class TaskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    task_id: uuid.UUID
    session_id: uuid.UUID
    workload: Workload
    model_ref: Annotated[str, Field(min_length=1, max_length=256)]
    engine: Engine
    ctx: PositiveInt
    priority: Priority
    seed: Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)] | None = None
    determinism: Determinism = Determinism.BEST_EFFORT
    sampler_profile_version: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    prompt: str | None = None
    inputs: Annotated[list[str], Field(min_length=1)] | None = None
    max_tokens: PositiveInt
    deadline_ms: PositiveInt
    expected_tokens: Annotated[StrictInt, Field(ge=0)] | None = None
    kv_hint: KvHint | None = None

    @model_validator(mode="after")
    def _exactly_one_input(self) -> TaskRequest:
        if (self.prompt is None) == (self.inputs is None):
            raise ValueError("exactly one of prompt or inputs is required")
        return self

    def effective_seed(self) -> int:
        """The request's seed, or one derived from task_id so reruns stay reproducible."""
        if self.seed is not None:
            return self.seed
        digest = hashlib.sha256(self.task_id.bytes).digest()
        return int.from_bytes(digest[:8], "big") & INT64_MAX
