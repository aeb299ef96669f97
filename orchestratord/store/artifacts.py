"""Artifacts (HOME-701, HOME-702, ORCH-3097, ORCH-3098): content-addressed, durable, with lineage.

An artifact's id is the hex sha256 of its canonical JSON — kind, content, parent, metadata
and the sorted set of tags, with sorted keys and no insignificant whitespace — so posting
the same artifact twice stores it once and answers the same id (and the first
``created_ms``). A parent must already be stored. Unsigned artifacts (no
``metadata.signature``) are accepted; the caller logs and counts the trust gap.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from orchestratord.store.db import Store

_LINEAGE_LIMIT = 1000  # a cycle is impossible (a parent exists first), this bounds a walk


class ArtifactKind(StrEnum):
    PLAN = "plan"
    SUMMARY = "summary"
    DIFF = "diff"
    TRACE = "trace"
    OTHER = "other"


Tag = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/-]+$")


class ArtifactCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ArtifactKind
    content: dict[str, Any]
    tags: list[Annotated[str, Tag]] = Field(default_factory=list, max_length=32)
    parent: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    metadata: dict[str, Any] = Field(default_factory=dict)

    def canonical(self) -> bytes:
        body = {
            "kind": self.kind.value,
            "content": self.content,
            "parent": self.parent,
            "metadata": self.metadata,
            "tags": sorted(set(self.tags)),
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @property
    def signed(self) -> bool:
        return bool(self.metadata.get("signature"))


class UnknownParent(Exception):
    pass


class StoreFull(Exception):
    """``server.max_artifacts`` or ``server.max_artifact_store_bytes`` would be passed."""


@dataclass(frozen=True)
class StoredArtifact:
    id: str
    kind: str
    tags: list[str]
    created_ms: int
    body: dict[str, Any] | None = None
    lineage: list[str] | None = None

    def ref(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "digest": f"sha256:{self.id}",
            "created_ms": self.created_ms,
            "tags": self.tags,
        }

    def full(self) -> dict[str, Any]:
        assert self.body is not None and self.lineage is not None
        return {
            **self.ref(),
            "content": self.body["content"],
            "metadata": self.body["metadata"],
            "parent": self.body["parent"],
            "lineage": self.lineage,
        }


def _tags(conn: sqlite3.Connection, artifact_id: str) -> list[str]:
    rows = conn.execute(
        "SELECT tag FROM artifact_tags WHERE artifact_id = ? ORDER BY tag", (artifact_id,)
    )
    return [r[0] for r in rows]


class Artifacts:
    def __init__(
        self, store: Store, max_count: int = 10_000, max_bytes: int = 256 * 1024 * 1024
    ) -> None:
        self.store = store
        self.max_count = max_count
        self.max_bytes = max_bytes
        # Count and bytes stored, read once in the writer thread, then kept up to date there.
        self._usage: list[int] | None = None

    def _check_room(self, conn: sqlite3.Connection, size: int) -> None:
        if self._usage is None:
            count, stored = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(CAST(body AS BLOB))), 0) FROM artifacts"
            ).fetchone()
            self._usage = [int(count), int(stored)]
        count, stored = self._usage
        if count + 1 > self.max_count:
            raise StoreFull(f"the store holds server.max_artifacts ({self.max_count}) artifacts")
        if stored + size > self.max_bytes:
            raise StoreFull(
                f"{size} more bytes would pass server.max_artifact_store_bytes "
                f"({self.max_bytes}; {stored} stored)"
            )

    async def put(self, artifact: ArtifactCreate) -> tuple[StoredArtifact, bool]:
        """Store (once); returns the stored artifact and whether this call created it."""
        canonical = artifact.canonical()
        artifact_id = hashlib.sha256(canonical).hexdigest()

        def work(conn: sqlite3.Connection) -> tuple[StoredArtifact, bool]:
            row = conn.execute(
                "SELECT kind, created_ms FROM artifacts WHERE id = ?", (artifact_id,)
            ).fetchone()
            if row is not None:
                return StoredArtifact(artifact_id, row[0], _tags(conn, artifact_id), row[1]), False
            parent = artifact.parent
            if (
                parent is not None
                and conn.execute("SELECT 1 FROM artifacts WHERE id = ?", (parent,)).fetchone()
                is None
            ):
                raise UnknownParent(parent)
            self._check_room(conn, len(canonical))
            created_ms = int(time.time() * 1000)
            conn.execute(
                "INSERT INTO artifacts (id, kind, body, parent, signed, created_ms) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (artifact_id, artifact.kind.value, canonical.decode(), parent,
                 int(artifact.signed), created_ms),
            )  # fmt: skip
            tags = sorted(set(artifact.tags))
            conn.executemany(
                "INSERT INTO artifact_tags (artifact_id, tag) VALUES (?, ?)",
                [(artifact_id, tag) for tag in tags],
            )
            assert self._usage is not None
            self._usage[0] += 1
            self._usage[1] += len(canonical)
            return StoredArtifact(artifact_id, artifact.kind.value, tags, created_ms), True

        try:
            return await self.store.write(work)
        except sqlite3.Error:
            self._usage = None  # the transaction rolled back: count again next time
            raise

    async def get(self, artifact_id: str) -> StoredArtifact | None:
        def work(conn: sqlite3.Connection) -> StoredArtifact | None:
            row = conn.execute(
                "SELECT kind, body, created_ms FROM artifacts WHERE id = ?", (artifact_id,)
            ).fetchone()
            if row is None:
                return None
            body = json.loads(row[1])
            lineage: list[str] = []
            parent = body["parent"]
            while parent is not None and len(lineage) < _LINEAGE_LIMIT:
                lineage.append(parent)
                found = conn.execute(
                    "SELECT parent FROM artifacts WHERE id = ?", (parent,)
                ).fetchone()
                parent = found[0] if found else None
            return StoredArtifact(
                artifact_id, row[0], _tags(conn, artifact_id), row[2], body, lineage
            )

        return await self.store.read(work)

    async def list(self, tag: str | None, limit: int) -> list[StoredArtifact]:
        def work(conn: sqlite3.Connection) -> list[StoredArtifact]:
            if tag is None:
                rows = conn.execute(
                    "SELECT id, kind, created_ms FROM artifacts "
                    "ORDER BY created_ms DESC, id LIMIT ?",
                    (limit,),
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT a.id, a.kind, a.created_ms FROM artifacts a "
                    "JOIN artifact_tags t ON t.artifact_id = a.id WHERE t.tag = ? "
                    "ORDER BY a.created_ms DESC, a.id LIMIT ?",
                    (tag, limit),
                ).fetchall()
            return [StoredArtifact(r[0], r[1], _tags(conn, r[0]), r[2]) for r in rows]

        return await self.store.read(work)
