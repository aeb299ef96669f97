"""What a run changed in compliance, against the committed ``COMPLIANCE.md``.

``python -m xtask trace`` prints it and writes it at the top of the new ``COMPLIANCE.md``,
so a pull request shows what it did to compliance: requirements newly passed, newly failed
(or undefined), newly uncovered, and requirements that appeared or went away. The baseline
is ``git show HEAD:COMPLIANCE.md`` (the committed report), else the file on disk.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

_ROW = re.compile(
    r"^\| ([A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*-\d+) \| (?:MUST|SHOULD|MAY) \| [^|]* \| (\w+) \|"
)


def statuses(report: str) -> dict[str, str]:
    """ID → status from a COMPLIANCE.md text."""
    found = {}
    for line in report.splitlines():
        match = _ROW.match(line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def committed_report(root: Path) -> str | None:
    try:
        shown = subprocess.run(
            ["git", "show", "HEAD:COMPLIANCE.md"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError:
        shown = None
    if shown is not None and shown.returncode == 0:
        return shown.stdout
    path = root / "COMPLIANCE.md"
    return path.read_text(encoding="utf-8") if path.exists() else None


@dataclass
class Changes:
    baseline: bool
    newly_passed: list[str] = field(default_factory=list)
    newly_failed: list[str] = field(default_factory=list)
    newly_uncovered: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (
            self.newly_passed
            or self.newly_failed
            or self.newly_uncovered
            or self.added
            or self.removed
        )

    def lines(self) -> list[str]:
        if not self.baseline:
            return ["no committed report to compare with"]
        if self.empty:
            return ["no change"]
        parts = [
            ("newly passed", self.newly_passed),
            ("newly failed, undefined or suspect", self.newly_failed),
            ("newly uncovered", self.newly_uncovered),
            ("new requirements", self.added),
            ("requirements gone", self.removed),
        ]
        return [f"{label} ({len(ids)}): {', '.join(ids)}" for label, ids in parts if ids]


def compare(before: dict[str, str] | None, after: dict[str, str]) -> Changes:
    if before is None:
        return Changes(baseline=False)
    changes = Changes(baseline=True)
    for req_id, status in sorted(after.items()):
        old = before.get(req_id)
        if old is None:
            changes.added.append(req_id)
        elif status != old:
            if status == "passed":
                changes.newly_passed.append(req_id)
            elif status in ("failed", "undefined", "suspect"):
                changes.newly_failed.append(req_id)
            elif status == "uncovered":
                changes.newly_uncovered.append(req_id)
    changes.removed = sorted(set(before) - set(after))
    return changes
