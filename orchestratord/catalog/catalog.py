"""The model catalog (HOME-501..503, ORCH-3060..3073): durable entries, states, verification.

Entries live in the store (``models`` table) and in an in-memory mirror, so admission reads
a model's state without touching the disk. Every change is committed before the caller
answers. Trust policy — the entry's own or ``catalog.trust_policy`` — decides what a missing
signature or SBOM means: ``permissive`` logs a trust gap and counts it, ``strict`` refuses
(``UNTRUSTED_ARTIFACT``). Local files are accepted only inside ``catalog.model_dirs``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from orchestratord.catalog.model import (
    REFUSING,
    TRANSITIONS,
    CatalogEntry,
    ModelState,
    as_dict,
)
from orchestratord.metrics import Metrics
from orchestratord.models.digest import sha256_file
from orchestratord.store.db import Store

log = logging.getLogger("orchestratord.catalog")


class CatalogError(Exception):
    """A refused catalog operation; ``kind`` picks the HTTP status and code."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "conflict", "untrusted", "invalid", "not_found"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class CatalogRecord:
    entry: CatalogEntry
    state: ModelState
    created_ms: int
    updated_ms: int
    verification: dict[str, Any] | None = None
    pull: dict[str, Any] | None = None
    local_path: str | None = None
    verifier: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.entry.id

    def view(self) -> dict[str, Any]:
        return {
            **as_dict(self.entry),
            "state": self.state.value,
            "verification": self.verification,
            "pull": self.pull,
            "local_path": self.local_path,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
        }


def _row(record: CatalogRecord) -> tuple[Any, ...]:
    return (
        json.dumps(as_dict(record.entry), sort_keys=True),
        record.state.value,
        json.dumps(record.verification) if record.verification is not None else None,
        json.dumps(record.pull) if record.pull is not None else None,
        record.local_path,
        record.updated_ms,
        record.id,
    )


class Catalog:
    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        *,
        trust_policy: str,
        model_dirs: list[Path],
        max_entries: int = 64,
    ) -> None:
        self.max_entries = max_entries
        self.store = store
        self.metrics = metrics
        self.trust_policy = trust_policy
        self.model_dirs = [d.resolve() for d in model_dirs]
        self.records: dict[str, CatalogRecord] = {}

    # --- reading ------------------------------------------------------------------------------

    def load(self) -> None:
        """Read every entry into the mirror (start-up)."""

        def work(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(
                "SELECT entry, state, verification, pull, local_path, created_ms, updated_ms "
                "FROM models"
            ).fetchall()

        for entry, state, verification, pull, local_path, created, updated in self.store.run_now(
            work
        ):
            record = CatalogRecord(
                CatalogEntry.model_validate_json(entry),
                ModelState(state),
                created,
                updated,
                json.loads(verification) if verification else None,
                json.loads(pull) if pull else None,
                local_path,
            )
            if record.pull and record.pull.get("state") in ("queued", "downloading"):
                record.pull = {
                    **record.pull,
                    "state": "failed",
                    "error": "interrupted by a restart (the next pull resumes)",
                }
            if record.verification and record.verification.get("result") == "pending":
                record.verification = _failed_check(
                    record, "interrupted", "interrupted by a restart; verify again"
                )
            self.records[record.id] = record
            self._publish_state(record, None)

    def get(self, model_id: str) -> CatalogRecord | None:
        return self.records.get(model_id)

    def entries(self, tag: str | None, state: ModelState | None) -> list[CatalogRecord]:
        return [
            r
            for r in sorted(self.records.values(), key=lambda r: r.id)
            if (tag is None or tag in r.entry.tags) and (state is None or r.state is state)
        ]

    def refuses(self, model_id: str) -> ModelState | None:
        """The state that makes a model refuse new tasks, or None."""
        record = self.records.get(model_id)
        return record.state if record is not None and record.state in REFUSING else None

    def policy_for(self, entry: CatalogEntry) -> str:
        return entry.trust_policy or self.trust_policy

    # --- files --------------------------------------------------------------------------------

    def allowed_path(self, path: Path) -> Path:
        resolved = path.resolve()
        if not any(resolved.is_relative_to(d) for d in self.model_dirs):
            dirs = ", ".join(str(d) for d in self.model_dirs)
            raise CatalogError(
                "invalid", f"{path} is outside the allowed model directories ({dirs})"
            )
        return resolved

    def declared_file(self, entry: CatalogEntry) -> Path | None:
        """The local file an entry names (file:// source or a manifest path), checked."""
        if entry.source_url is not None and urlsplit(entry.source_url).scheme == "file":
            return self.allowed_path(Path(unquote(urlsplit(entry.source_url).path)))
        for manifest in entry.manifests:
            if manifest.path is not None:
                return self.allowed_path(Path(manifest.path))
        return None

    def local_file(self, record: CatalogRecord) -> Path | None:
        if record.local_path is not None:
            return Path(record.local_path)
        return self.declared_file(record.entry)

    # --- writing ------------------------------------------------------------------------------

    async def register(self, entry: CatalogEntry, correlation_id: str) -> CatalogRecord:
        if entry.id in self.records:
            raise CatalogError("conflict", f"model {entry.id} is already registered")
        if len(self.records) >= self.max_entries:
            raise CatalogError(
                "conflict",
                f"the catalog is full: it holds catalog.max_entries ({self.max_entries}) models",
            )
        local = self.declared_file(entry)
        gaps = self._trust_gaps(entry)
        if gaps and self.policy_for(entry) == "strict":
            raise CatalogError(
                "untrusted", f"model {entry.id}: {', '.join(gaps)} (strict trust policy)"
            )
        stamp = now_ms()
        record = CatalogRecord(entry, ModelState.ACTIVE, stamp, stamp)
        if local is not None and local.exists():
            record.local_path = str(local)

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO models (entry, state, verification, pull, local_path, updated_ms, "
                "id, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*_row(record), record.created_ms),
            )
            conn.executemany(
                "INSERT INTO model_tags (model_id, tag) VALUES (?, ?)",
                [(entry.id, tag) for tag in sorted(set(entry.tags))],
            )

        if entry.id in self.records:  # a twin registered while we checked
            raise CatalogError("conflict", f"model {entry.id} is already registered")
        self.records[entry.id] = record
        try:
            await self.store.write(work)
        except sqlite3.IntegrityError as exc:
            self.records.pop(entry.id, None)
            raise CatalogError("conflict", f"model {entry.id} is already registered") from exc
        except BaseException:
            self.records.pop(entry.id, None)
            raise
        for gap in gaps:
            log.warning("trust gap: model %s: %s (correlation %s)", entry.id, gap, correlation_id)
            self.metrics.trust_gaps.labels(subject="model").inc()
        self._publish_state(record, None)
        return record

    async def save(self, record: CatalogRecord) -> None:
        record.updated_ms = now_ms()
        row = _row(record)

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE models SET entry = ?, state = ?, verification = ?, pull = ?, "
                "local_path = ?, updated_ms = ? WHERE id = ?",
                row,
            )

        await self.store.write(work)

    async def set_state(self, model_id: str, state: ModelState) -> tuple[ModelState, ModelState]:
        record = self.records.get(model_id)
        if record is None:
            raise CatalogError("not_found", f"no model {model_id}")
        old = record.state
        if state is old:
            return old, state
        if state not in TRANSITIONS[old]:
            allowed = ", ".join(sorted(s.value for s in TRANSITIONS[old])) or "none"
            raise CatalogError(
                "conflict",
                f"model {model_id}: {old.value} -> {state.value} is not allowed "
                f"(from {old.value}: {allowed})",
            )
        record.state = state
        try:
            await self.save(record)
        except BaseException:
            record.state = old
            raise
        self._publish_state(record, old)
        log.info("model %s: %s -> %s", model_id, old.value, state.value)
        return old, state

    async def delete(self, model_id: str) -> CatalogRecord:
        """Forget an entry (its row and its tags); the caller removes its files."""
        record = self.records.get(model_id)
        if record is None:
            raise CatalogError("not_found", f"no model {model_id}")

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM model_tags WHERE model_id = ?", (model_id,))
            conn.execute("DELETE FROM models WHERE id = ?", (model_id,))

        await self.store.write(work)
        if record.verifier is not None:
            record.verifier.cancel()
        self.records.pop(model_id, None)
        self.metrics.model_state.remove(record.id, record.state.value)
        return record

    def _publish_state(self, record: CatalogRecord, old: ModelState | None) -> None:
        if old is not None:
            self.metrics.model_state.remove(record.id, old.value)
        self.metrics.model_state.labels(model_id=record.id, state=record.state.value).set(1)

    def _trust_gaps(self, entry: CatalogEntry) -> list[str]:
        gaps = []
        if not entry.signatures:
            gaps.append("no signature")
        if entry.sbom is None:
            gaps.append("no SBOM")
        return gaps

    # --- verification -------------------------------------------------------------------------

    async def stop(self) -> None:
        verifiers = [r.verifier for r in self.records.values() if r.verifier is not None]
        for verifier in verifiers:
            verifier.cancel()
        await asyncio.gather(*verifiers, return_exceptions=True)

    async def start_verify(self, model_id: str, engine: str) -> CatalogRecord:
        record = self.records.get(model_id)
        if record is None:
            raise CatalogError("not_found", f"no model {model_id}")
        if record.verifier is not None and not record.verifier.done():
            return record  # already running: this request joins it
        record.verification = {"result": "pending", "checked_ms": now_ms()}
        await self.save(record)
        record.verifier = asyncio.get_running_loop().create_task(
            self._verify(record, engine), name=f"verify-{model_id}"
        )
        return record

    async def _verify(self, record: CatalogRecord, engine: str) -> None:
        """Every verification ends: passed, trust_gap or failed with a reason."""
        try:
            record.verification = await self._check(record)
        except asyncio.CancelledError:
            record.verification = _failed_check(record, "interrupted", "orchestratord stopped")
            await self._save_quietly(record)
            raise
        except Exception as exc:
            log.exception("verification of model %s failed unexpectedly", record.id)
            detail = f"internal error ({type(exc).__name__}); see the server log"
            record.verification = _failed_check(record, "internal_error", detail)
        result, reason = record.verification["result"], record.verification["reason"]
        self.metrics.catalog_verifications.labels(result=result, reason=reason, engine=engine).inc()
        if result == "trust_gap":
            log.warning("trust gap: model %s: %s", record.id, reason)
            self.metrics.trust_gaps.labels(subject="model").inc()
        await self._save_quietly(record)

    async def _save_quietly(self, record: CatalogRecord) -> None:
        try:
            await self.save(record)
        except Exception:  # the in-memory record still answers GET with the outcome
            log.exception("model %s: could not store the verification", record.id)

    async def _check(self, record: CatalogRecord) -> dict[str, Any]:
        entry = record.entry
        try:
            path = self.local_file(record)
        except CatalogError:
            path = None
        digest_match: bool | None = None
        reason, detail = "ok", None
        if path is not None:
            kind = await asyncio.to_thread(_file_kind, path)
            if kind == "file":
                try:
                    actual = "sha256:" + await asyncio.to_thread(sha256_file, path)
                except OSError as exc:
                    reason, detail = "unreadable", f"cannot read {path}: {exc.strerror or exc}"
                else:
                    digest_match = actual == entry.digest
                    if not digest_match:
                        reason = "digest_mismatch"
            elif kind == "missing":
                reason = "file_missing"
            else:
                reason, detail = "unreadable", f"{path} is not a regular file"
        gaps = self._trust_gaps(entry)
        if reason != "ok":
            result = "failed"
        elif gaps:
            strict = self.policy_for(entry) == "strict"
            result = "failed" if strict else "trust_gap"
            reason = "no_signature" if not entry.signatures else "no_sbom"
        else:
            result = "passed"
        check = {
            "result": result,
            "checked_ms": now_ms(),
            "digest_match": digest_match,
            "signatures_present": bool(entry.signatures),
            "sbom_present": entry.sbom is not None,
            "reason": reason,
        }
        if detail is not None:
            check["detail"] = detail
        return check


def _file_kind(path: Path) -> str:
    if not path.exists():
        return "missing"
    return "file" if path.is_file() else "other"


def _failed_check(record: CatalogRecord, reason: str, detail: str) -> dict[str, Any]:
    entry = record.entry
    return {
        "result": "failed",
        "checked_ms": now_ms(),
        "digest_match": None,
        "signatures_present": bool(entry.signatures),
        "sbom_present": entry.sbom is not None,
        "reason": reason,
        "detail": detail,
    }
