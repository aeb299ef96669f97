"""``python -m xtask trace``: join specs, tags/markers and real results into a compliance report.

Inputs: the requirements in ``.specs/`` (via spec-extract), the behave JSON report, the
pytest requirement reports (``--req-report``, plain tests and pytest-bdd scenarios), the
scenario tags in ``features/`` and the ``x-req-id`` lists in the OpenAPI contracts. Outputs:
``COMPLIANCE.md``, ``reports/traceability.json`` and ``reports/traceability.html``, sorted
and timestamp-free so the same inputs give the same bytes.

Status per requirement: ``waived`` (spec says so), ``failed`` (a covering test failed),
``undefined`` (a covering scenario has undefined steps), ``passed`` (covered, all passed),
``uncovered``. The step fails on any ID used but not defined in the specs, on any failing
or undefined covering test, and when no result file exists at all.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xtask.spec_extract import ID_RE, Requirement, SpecError, all_requirements, id_sort_key

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports"
BEHAVE_JSON = REPORTS / "behave.json"
PYTEST_REPORTS = (
    REPORTS / "pytest-unit.json",
    REPORTS / "pytest-bdd.json",
    REPORTS / "pytest-pact.json",
    REPORTS / "pact-verify.json",
    REPORTS / "metrics-lint.json",
)
_TAG = re.compile(r"@([A-Z][A-Z0-9-]+-\d+)\b")


@dataclass(frozen=True, order=True)
class Evidence:
    runner: str
    name: str
    outcome: str


@dataclass
class Row:
    req: Requirement
    evidence: list[Evidence] = field(default_factory=list)

    @property
    def status(self) -> str:
        outcomes = {e.outcome for e in self.evidence}
        if self.req.scope == "waived":
            return "waived"
        if "failed" in outcomes:
            return "failed"
        if "undefined" in outcomes:
            return "undefined"
        if self.evidence and outcomes <= {"passed"}:
            return "passed"
        if self.evidence:
            return "failed"  # skipped or not run: claimed but not proven
        return "uncovered"


def behave_evidence(path: Path) -> list[tuple[str, Evidence]]:
    found: list[tuple[str, Evidence]] = []
    for feature in json.loads(path.read_text(encoding="utf-8")):
        for element in feature.get("elements", []):
            if element.get("type") != "scenario":
                continue
            steps = [s.get("result", {}).get("status") for s in element.get("steps", [])]
            status = element.get("status", "untested")
            if "undefined" in steps or status == "undefined":
                outcome = "undefined"
            elif status == "passed":
                outcome = "passed"
            elif status in ("failed", "error"):
                outcome = "failed"
            else:
                outcome = status
            name = f"{element['location']} {element['name']}"
            tags = set(element.get("tags", [])) | set(feature.get("tags", []))
            found += [(tag, Evidence("behave", name, outcome)) for tag in sorted(tags)]
    return found


def pytest_evidence(path: Path) -> list[tuple[str, Evidence]]:
    found: list[tuple[str, Evidence]] = []
    for nodeid, entry in json.loads(path.read_text(encoding="utf-8")).items():
        evidence = Evidence(entry["runner"], nodeid, entry["outcome"])
        found += [(req_id, evidence) for req_id in entry["ids"]]
    return found


def static_claims() -> list[tuple[str, str]]:
    """IDs named by feature tags and OpenAPI x-req-id, with where (run or not)."""
    claims: list[tuple[str, str]] = []
    for feature in sorted((ROOT / "features").glob("**/*.feature")):
        for lineno, line in enumerate(feature.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip().startswith("@"):
                where = f"{feature.relative_to(ROOT)}:{lineno}"
                claims += [(tag, where) for tag in _TAG.findall(line)]
    for name in ("data", "control"):
        doc = yaml.safe_load((ROOT / "contracts" / "openapi" / f"{name}.yaml").read_text())
        for path, item in doc["paths"].items():
            for method, op in item.items():
                where = f"contracts/openapi/{name}.yaml {method.upper()} {path}"
                claims += [(req_id, where) for req_id in op.get("x-req-id", [])]
    return claims


def build(requirements: dict[str, Requirement]) -> tuple[list[Row], list[str], list[str]]:
    rows = {req_id: Row(req) for req_id, req in requirements.items()}
    unknown: set[str] = set()
    inputs: list[str] = []
    claims: list[tuple[str, Evidence]] = []
    if BEHAVE_JSON.exists():
        inputs.append(str(BEHAVE_JSON.relative_to(ROOT)))
        claims += behave_evidence(BEHAVE_JSON)
    for report in PYTEST_REPORTS:
        if report.exists():
            inputs.append(str(report.relative_to(ROOT)))
            claims += pytest_evidence(report)
    for req_id, evidence in claims:
        if req_id in rows:
            rows[req_id].evidence.append(evidence)
        elif ID_RE.match(req_id) or evidence.runner == "behave":
            unknown.add(f"{req_id} (claimed by {evidence.runner} {evidence.name})")
    for req_id, where in static_claims():
        if req_id not in rows:
            unknown.add(f"{req_id} (named at {where})")
    ordered = [rows[i] for i in sorted(rows, key=id_sort_key)]
    for row in ordered:
        row.evidence = sorted(set(row.evidence))
    return ordered, sorted(unknown), inputs


STATUSES = ("passed", "failed", "undefined", "uncovered", "waived")


def family(req_id: str) -> str:
    return req_id.rsplit("-", 1)[0]


def render_markdown(rows: list[Row], unknown: list[str], inputs: list[str]) -> str:
    counts = {s: sum(1 for r in rows if r.status == s) for s in STATUSES}
    must_uncovered = [r.req.id for r in rows if r.status == "uncovered" and r.req.level == "MUST"]
    lines = [
        "# Compliance",
        "",
        "Generated by `python -m xtask trace` from the results of the last dev-loop run",
        f"({', '.join(inputs) or 'no results'}); do not edit by hand.",
        "",
        "| status | requirements |",
        "|---|---|",
        *[f"| {s} | {counts[s]} |" for s in STATUSES],
        f"| **total** | {len(rows)} |",
        "",
        f"In-scope requirements without any covering test: **{counts['uncovered']}** "
        f"({len(must_uncovered)} of them MUST).",
    ]
    if unknown:
        lines += ["", "## Unknown IDs (errors)", "", *[f"- {u}" for u in unknown]]
    current = None
    for row in rows:
        fam = family(row.req.id)
        if fam != current:
            current = fam
            lines += ["", f"## {fam}", "", "| ID | Level | Scope | Status | Covered by |"]
            lines += ["|---|---|---|---|---|"]
        covered = "<br>".join(f"{e.runner}: `{e.name}` ({e.outcome})" for e in row.evidence)
        scope = "waived: " + (row.req.waiver or "") if row.req.scope == "waived" else "in"
        lines.append(f"| {row.req.id} | {row.req.level} | {scope} | {row.status} | {covered} |")
    return "\n".join(lines) + "\n"


def render_json(rows: list[Row], unknown: list[str], inputs: list[str]) -> str:
    data = {
        "inputs": inputs,
        "unknown_ids": unknown,
        "summary": {s: sum(1 for r in rows if r.status == s) for s in STATUSES},
        "requirements": [
            {
                "id": r.req.id,
                "level": r.req.level,
                "scope": r.req.scope,
                "waiver": r.req.waiver,
                "source": r.req.source,
                "status": r.status,
                "covered_by": [e.__dict__ for e in r.evidence],
            }
            for r in rows
        ],
    }
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def render_html(rows: list[Row], unknown: list[str]) -> str:
    colours = {"passed": "#d4f4d2", "failed": "#f8d0d0", "undefined": "#fbe5c0",
               "uncovered": "#eeeeee", "waived": "#dde6f6"}  # fmt: skip
    body = [
        "<!doctype html><meta charset=utf-8><title>llama-orch traceability</title>",
        "<style>body{font:14px sans-serif}td,th{border:1px solid #ccc;padding:3px 6px;"
        "vertical-align:top}table{border-collapse:collapse}</style>",
        "<h1>llama-orch traceability</h1>",
    ]
    if unknown:
        body.append("<h2>Unknown IDs</h2><ul>")
        body += [f"<li>{html.escape(u)}</li>" for u in unknown]
        body.append("</ul>")
    body.append("<table><tr><th>ID<th>Level<th>Scope<th>Status<th>Covered by</tr>")
    for r in rows:
        covered = "<br>".join(
            html.escape(f"{e.runner}: {e.name} ({e.outcome})") for e in r.evidence
        )
        body.append(
            f"<tr style='background:{colours[r.status]}'><td>{r.req.id}<td>{r.req.level}"
            f"<td>{html.escape(r.req.waiver or 'in')}<td>{r.status}<td>{covered}</tr>"
        )
    body.append("</table>")
    return "\n".join(body) + "\n"


def run(args: argparse.Namespace) -> int:
    try:
        requirements = all_requirements()
    except SpecError as exc:
        print(f"trace: {exc}", file=sys.stderr)
        return 1
    rows, unknown, inputs = build(requirements)
    REPORTS.mkdir(exist_ok=True)
    (ROOT / "COMPLIANCE.md").write_text(render_markdown(rows, unknown, inputs), encoding="utf-8")
    (REPORTS / "traceability.json").write_text(render_json(rows, unknown, inputs), "utf-8")
    (REPORTS / "traceability.html").write_text(render_html(rows, unknown), encoding="utf-8")
    counts = {s: sum(1 for r in rows if r.status == s) for s in STATUSES}
    print("trace: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f" of {len(rows)}")
    problems: list[str] = []
    if not inputs:
        problems.append("no result files in reports/: run the tests first")
    problems += [f"unknown requirement ID {u}" for u in unknown]
    for row in rows:
        if row.status in ("failed", "undefined"):
            bad = [e for e in row.evidence if e.outcome != "passed"]
            problems += [f"{row.req.id} {row.status}: {e.runner} {e.name}" for e in bad]
    for problem in problems:
        print(f"trace: {problem}", file=sys.stderr)
    uncovered = [r.req.id for r in rows if r.status == "uncovered"]
    print(f"trace: {len(uncovered)} in-scope requirements uncovered")
    return 1 if problems else 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("trace", help="specs + tags + results → COMPLIANCE.md")
    parser.set_defaults(run=run)
