"""Catalog entries: what a client may write, the lifecycle states and their transitions.

States (HOME-501, HOME-502): ``Draft`` (registered, not for serving yet), ``Active``,
``Canary`` (serving, being tried), ``Deprecated`` (no new tasks), ``Retired`` (final). A
registration is ``Active``. Allowed transitions:

    Draft      -> Active, Canary, Retired
    Active     -> Canary, Deprecated, Retired
    Canary     -> Active, Deprecated, Retired
    Deprecated -> Active, Retired
    Retired    -> (none)

Setting the state a model already has changes nothing. Deprecated and Retired models refuse
new tasks with ``MODEL_DEPRECATED`` and the pools serving them drain.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ModelState(StrEnum):
    DRAFT = "Draft"
    ACTIVE = "Active"
    CANARY = "Canary"
    DEPRECATED = "Deprecated"
    RETIRED = "Retired"


TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    ModelState.DRAFT: frozenset({ModelState.ACTIVE, ModelState.CANARY, ModelState.RETIRED}),
    ModelState.ACTIVE: frozenset({ModelState.CANARY, ModelState.DEPRECATED, ModelState.RETIRED}),
    ModelState.CANARY: frozenset({ModelState.ACTIVE, ModelState.DEPRECATED, ModelState.RETIRED}),
    ModelState.DEPRECATED: frozenset({ModelState.ACTIVE, ModelState.RETIRED}),
    ModelState.RETIRED: frozenset(),
}
REFUSING = frozenset({ModelState.DEPRECATED, ModelState.RETIRED})

SOURCE_SCHEMES = ("https", "http", "file", "hf")
Digest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/-]+$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Manifest(Strict):
    path: str | None = Field(None, min_length=1, max_length=4096)
    digest: Digest
    size_bytes: int | None = Field(None, ge=0)


class Signature(Strict):
    signer: str = Field(min_length=1, max_length=256)
    algo: str = Field(min_length=1, max_length=64)
    value: str | None = Field(None, max_length=16384)


class Sbom(Strict):
    uri: str = Field(min_length=1, max_length=4096)
    digest: str | None = Field(None, max_length=128)


class CatalogEntry(Strict):
    """The writable fields of a catalog entry (the body of a registration)."""

    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    digest: Digest
    source_url: str | None = Field(None, min_length=1, max_length=4096)
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    manifests: list[Manifest] = Field(default_factory=list, max_length=16)
    signatures: list[Signature] = Field(default_factory=list, max_length=16)
    sbom: Sbom | None = None
    trust_policy: Literal["permissive", "strict"] | None = None

    @field_validator("source_url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in SOURCE_SCHEMES:
            raise ValueError(f"source_url scheme must be one of {', '.join(SOURCE_SCHEMES)}")
        if parts.scheme in ("http", "https") and not parts.hostname:
            raise ValueError("source_url has no host")
        if (
            parts.scheme == "hf"
            and len([p for p in (parts.netloc + parts.path).split("/") if p]) < 3
        ):
            raise ValueError("hf:// URLs are hf://<org>/<repo>/<file>")
        return value


class StateRequest(Strict):
    state: ModelState
    deadline_ms: int = Field(0, ge=0, le=86_400_000)


def as_dict(entry: CatalogEntry) -> dict[str, Any]:
    return entry.model_dump(mode="json", exclude_none=True)
