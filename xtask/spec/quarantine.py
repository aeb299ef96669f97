"""The committed quarantine file: IDs whose flaky results may pass the loop (HARN-402)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
QUARANTINE_FILE = ROOT / "tests" / "quarantine.yaml"


@dataclass(frozen=True)
class Quarantined:
    req_id: str
    reason: str
    since: dt.date


def load(
    known_ids: set[str], path: Path = QUARANTINE_FILE
) -> tuple[dict[str, Quarantined], list[str]]:
    """(quarantined IDs, problems). An entry without a reason or a date, or naming an ID the
    spec does not have, is a problem: quarantine is a reviewed decision, not a wildcard."""
    if not path.exists():
        return {}, []
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    document: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries = document.get("quarantine") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return {}, [f"{rel}: expected a `quarantine:` list"]
    found: dict[str, Quarantined] = {}
    problems: list[str] = []
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            problems.append(f"{rel} entry {number}: expected id, reason and since")
            continue
        req_id, reason, since = entry.get("id"), entry.get("reason"), entry.get("since")
        if not isinstance(req_id, str) or req_id not in known_ids:
            problems.append(f"{rel} entry {number}: {req_id!r} is not a requirement ID")
        elif not isinstance(reason, str) or not reason.strip():
            problems.append(f"{rel} {req_id}: a quarantine needs a reason")
        elif not isinstance(since, dt.date):
            problems.append(f"{rel} {req_id}: `since` must be a date (YYYY-MM-DD)")
        else:
            found[req_id] = Quarantined(req_id, reason.strip(), since)
    return found, problems
