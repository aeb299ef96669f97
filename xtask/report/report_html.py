"""``reports/traceability.html``: the traceability report as one self-contained page.

Built from the same rows as ``COMPLIANCE.md`` and ``reports/traceability.json``: a summary per
status, per level and per family (one bar each), what changed since the committed report,
the problems trace found, then every requirement with its clause, level, scope or waiver,
status and evidence grouped by runner, each item linking to the spec row and to the test's
file and line (links relative to the page, so they work in a checkout). Filters (status,
level, family, text) and folding are a few lines of inline JavaScript; the page loads
nothing from the network. Jinja2 escapes every string from specs and tests, so a clause
that looks like HTML is shown, never run.
"""

from __future__ import annotations

import difflib
import html
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import markupsafe

if TYPE_CHECKING:
    from xtask.report.compliance_diff import Changes
    from xtask.report.trace import Row

STATUSES = (
    "passed", "flaky", "failed", "undefined", "suspect", "not re-run", "uncovered", "waived",
)  # fmt: skip
LEVELS = ("MUST", "SHOULD", "MAY")
# Runner → heading, in the order evidence groups are shown.
RUNNER_LABELS = {
    "behave": "behave",
    "pytest-bdd": "pytest-bdd",
    "pytest": "pytest",
    "pact-provider": "Pact provider verification",
    "pact-consumer": "Pact consumer (contract only)",
    "schemathesis": "schemathesis",
    "metrics-lint": "metrics lint",
    "soak": "soak probes",
}
_TEMPLATE = "traceability.html.j2"


@dataclass(frozen=True)
class Link:
    label: str  # file:line as written in the sources
    href: str | None  # relative to the page; None when the file does not exist


def word_diff(before: str, after: str) -> tuple[str, str]:
    """Both texts as HTML (escaped), the words only one of them has marked del / ins."""
    old, new = before.split(), after.split()
    left: list[str] = []
    right: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new).get_opcodes():
        a, b = html.escape(" ".join(old[i1:i2])), html.escape(" ".join(new[j1:j2]))
        if tag == "equal":
            left.append(a)
            right.append(b)
            continue
        if a:
            left.append(f"<del>{a}</del>")
        if b:
            right.append(f"<ins>{b}</ins>")
    return " ".join(left), " ".join(right)


def _suspect(row: Row) -> dict[str, Any] | None:
    if not row.suspects:
        return None
    reviewed, current = word_diff(row.suspects[0].reviewed_text, row.suspects[0].current_text)
    return {"claims": [s.claim for s in row.suspects], "reviewed": reviewed, "current": current}


def family(req_id: str) -> str:
    return req_id.rsplit("-", 1)[0]


def location_path(location: str) -> str:
    """The file part of ``file:line`` (or of a bare file)."""
    path, _, line = location.rpartition(":")
    return path if path and line.isdigit() else location


def missing_files(rows: list[Row], root: Path) -> dict[str, list[str]]:
    """File → IDs whose spec row or evidence points at a file that does not exist."""
    missing: dict[str, list[str]] = {}
    for row in rows:
        locations = [row.req.source] + [e.location for e in row.evidence if e.location]
        for location in locations:
            path = location_path(location)
            if not (root / path).is_file():
                ids = missing.setdefault(path, [])
                if row.req.id not in ids:
                    ids.append(row.req.id)
    return missing


class _Linker:
    def __init__(self, root: Path, page_dir: Path) -> None:
        self.root = root
        self.base = Path(os.path.relpath(root, page_dir)).as_posix()

    def __call__(self, location: str) -> Link:
        path = location_path(location)
        if not location or not (self.root / path).is_file():
            return Link(location, None)
        line = location.removeprefix(path).lstrip(":")
        anchor = f"#L{line}" if line else ""
        return Link(location, f"{self.base}/{path}{anchor}")


_CODE_SPAN = re.compile(r"`([^`]+)`")


def clause_markup(text: str) -> markupsafe.Markup:
    """A clause with its `code` spans set as code; everything else escaped."""
    escaped = str(markupsafe.escape(text))
    return markupsafe.Markup(_CODE_SPAN.sub(r"<code>\1</code>", escaped))


def slug(status: str) -> str:
    """A status as it may appear in an HTML id or class (``not re-run`` → ``not-re-run``)."""
    return status.replace(" ", "-")


def display_name(name: str, location: str) -> str:
    """The evidence's name without the file its link already shows."""
    path = location_path(location)
    if location and name.startswith(location + " "):
        return name.removeprefix(location).strip()
    if path and name.startswith(path + "::"):
        return name.removeprefix(path + "::")
    return name


def _counts(rows: list[Row]) -> dict[str, int]:
    counted = Counter(r.status for r in rows)
    return {s: counted.get(s, 0) for s in STATUSES}


def _evidence_groups(row: Row, link: _Linker) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for evidence in row.evidence:
        groups.setdefault(evidence.runner, []).append(
            {
                "name": display_name(evidence.name, evidence.location),
                "outcome": evidence.outcome,
                "link": link(evidence.location),
            }
        )
    order = list(RUNNER_LABELS)
    return [
        {"runner": runner, "label": RUNNER_LABELS.get(runner, runner), "entries": items}
        for runner, items in sorted(
            groups.items(),
            key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order),
        )
    ]


def context(
    rows: list[Row],
    problems: list[str],
    changes: Changes | None,
    *,
    root: Path,
    page_dir: Path,
) -> dict[str, Any]:
    link = _Linker(root, page_dir)
    families: dict[str, list[Row]] = {}
    for row in rows:
        families.setdefault(family(row.req.id), []).append(row)
    return {
        "statuses": STATUSES,
        "total": len(rows),
        "counts": _counts(rows),
        "levels": [
            {"name": level, "counts": _counts([r for r in rows if r.req.level == level])}
            for level in LEVELS
            if any(r.req.level == level for r in rows)
        ],
        "families": [
            {
                "name": name,
                "size": len(members),
                "counts": _counts(members),
                "percent": {s: 100 * n / len(members) for s, n in _counts(members).items()},
                "requirements": [
                    {
                        "id": r.req.id,
                        "level": r.req.level,
                        "scope": r.req.scope,
                        "waiver": r.req.waiver or "",
                        "status": r.status,
                        "text": r.req.text,
                        "spec": link(r.req.source),
                        "proven_by": r.runners if r.status == "passed" else [],
                        "groups": _evidence_groups(r, link),
                        "suspect": _suspect(r),
                        "search": " ".join(
                            [r.req.id, r.req.text, r.req.waiver or ""]
                            + [f"{e.name} {e.location}" for e in r.evidence]
                        ).lower(),
                    }
                    for r in members
                ],
            }
            for name, members in families.items()
        ],
        "attention": {
            s: [r.req.id for r in rows if r.status == s]
            for s in ("failed", "flaky", "undefined", "suspect", "uncovered")
        },
        "changes": changes,
        "problems": problems,
    }


def render_html(
    rows: list[Row],
    problems: list[str],
    changes: Changes | None,
    *,
    root: Path,
    page_dir: Path,
) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["clause"] = clause_markup
    env.filters["slug"] = slug
    page = env.get_template(_TEMPLATE)
    return page.render(**context(rows, problems, changes, root=root, page_dir=page_dir))
