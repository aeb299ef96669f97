"""``python -m xtask trace``: join specs, claims and this run's results into a compliance report.

Inputs: the requirements in ``.specs/`` (via spec-extract); the claims found in the sources
(``xtask/spec/claims.py``: scenario tags, ``@pytest.mark.req`` on test functions, the IDs each Pact
interaction recorded, OpenAPI ``x-req-id``); and the result files of the current run
(``xtask/loop/results.py``). Outputs: ``COMPLIANCE.md``, ``reports/traceability.json`` and
``reports/traceability.html``, sorted and timestamp-free so the same inputs give the same
bytes.

Every claim is paired with a result of the current run from each runner that should have
run it (a scenario: behave and pytest-bdd; a test: pytest; an interaction: the Pact
provider verification). A claim without such a result, because the test did not run or its
result file is missing or from another run, is evidence ``not run`` and fails its IDs.
A test's parametrized cases, or an outline's example rows, count once: failed if any failed.

Status per requirement: ``failed`` (a covering test failed or did not run; also for a waived
ID), ``undefined`` (a covering scenario has undefined steps), ``suspect`` (a claim was last
reviewed against another version of the clause, ``xtask/spec/fingerprints.py``; fails a MUST),
``waived`` (spec says so),
``passed`` (covered, all passed, and at least one piece of evidence exercised the server:
Pact consumer tests run against a mock provider and are contract evidence only), or
``uncovered``. The step fails on any ID used but not defined in the specs, any malformed ID or
module-level marker (named with its file and line), any missing or foreign result file, and
any failed or undefined requirement.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xtask.checks import bdd
from xtask.checks.deploy_matrix import commit
from xtask.loop import history
from xtask.loop.results import read_result, recorded_run_id
from xtask.report import export_reqif, flaky_report, trace_merge
from xtask.report.compliance_diff import Changes, committed_report, compare, statuses
from xtask.report.flaky_report import FlakyTest
from xtask.report.report_html import STATUSES, family, missing_files, render_html
from xtask.spec import claims, fingerprints, quarantine
from xtask.spec.claims import Claim
from xtask.spec.fingerprints import Suspect
from xtask.spec.quarantine import Quarantined
from xtask.spec.spec_extract import Requirement, collect_specs, id_sort_key

ROOT = Path(__file__).resolve().parents[2]
REPORTS = ROOT / "reports"
PACT_FILE = ROOT / "contracts" / "pacts" / "cli-consumer-orchestratord.json"
RESULT_FILES = {
    "behave": "behave.json",
    "pytest-bdd": "pytest-bdd.json",
    "pytest": "pytest-unit.json",
    "pact-consumer": "pytest-pact.json",
    "pact-provider": "pact-verify.json",
    "metrics-lint": "metrics-lint.json",
    "soak": "soak.json",
    "schemathesis": "schemathesis.json",
}
# Evidence that never touched the server: it proves the contract, not the behaviour.
CONTRACT_ONLY_RUNNERS = frozenset({"pact-consumer"})
CONTRACT_IDS = frozenset({"HOME-1204", "FR-CT-003"})
_PARAMS = re.compile(r"\[.*\]$")
_BAD = ("failed", "not run", "skipped", "error")


@dataclass(frozen=True, order=True)
class Evidence:
    runner: str
    name: str
    outcome: str
    location: str = ""


@dataclass
class Row:
    req: Requirement
    evidence: list[Evidence] = field(default_factory=list)
    suspects: list[Suspect] = field(default_factory=list)  # claims of an older clause

    @property
    def status(self) -> str:
        outcomes = {e.outcome for e in self.evidence}
        if outcomes & set(_BAD):
            return "failed"
        if "undefined" in outcomes:
            return "undefined"
        if "flaky" in outcomes:
            return "flaky"
        if self.suspects:
            return "suspect"
        if self.req.scope == "waived":
            return "waived"
        if "not re-run" in outcomes:  # an affected-only run: not proven by this run
            return "not re-run"
        proving = [e for e in self.evidence if e.runner not in CONTRACT_ONLY_RUNNERS]
        if self.evidence and (proving or self.req.id in CONTRACT_IDS):
            return "passed"
        return "uncovered"

    @property
    def runners(self) -> list[str]:
        return sorted({e.runner for e in self.evidence if e.outcome == "passed"})


def _combine(outcomes: list[str]) -> str:
    """One outcome for a test's cases or an outline's rows."""
    for bad in ("failed", "error", "undefined", "skipped", "not run", "flaky", "not re-run"):
        if bad in outcomes:
            return "failed" if bad == "error" else bad
    return "passed" if outcomes else "not run"


def behave_outcomes(document: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(feature file, scenario name) → outcome, outline rows folded into their outline."""
    rows: dict[tuple[str, str], list[str]] = defaultdict(list)
    for feature in document["features"]:
        for element in feature.get("elements", []):
            if element.get("type") != "scenario":
                continue
            steps = [s.get("result", {}).get("status") for s in element.get("steps", [])]
            status = element.get("status", "untested")
            if "undefined" in steps or status == "undefined":
                outcome = "undefined"
            elif status in ("passed", "failed", "skipped", "flaky"):
                outcome = status
            else:
                outcome = "failed" if status == "error" else "not run"
            path = element["location"].rsplit(":", 1)[0]
            name = re.sub(r" -- @.*$", "", element["name"]).strip()
            rows[(path, name)].append(outcome)
    return {key: _combine(outcomes) for key, outcomes in rows.items()}


def pytest_outcomes(document: dict[str, Any]) -> dict[str, str]:
    """``file::function`` → outcome, parametrized cases folded into their test."""
    cases: dict[str, list[str]] = defaultdict(list)
    for nodeid, entry in document["results"].items():
        cases[_PARAMS.sub("", nodeid)].append(entry["outcome"])
    return {key: _combine(outcomes) for key, outcomes in cases.items()}


def pytest_bdd_outcomes(document: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(feature file, scenario name) → outcome, outline rows folded into their outline. A
    test without its scenario recorded cannot be attributed to one, and proves nothing."""
    cases: dict[tuple[str, str], list[str]] = defaultdict(list)
    for entry in document["results"].values():
        scenario = entry.get("scenario")
        if isinstance(scenario, list) and len(scenario) == 2:
            cases[(str(scenario[0]), bdd._normal(str(scenario[1])))].append(entry["outcome"])
    return {key: _combine(outcomes) for key, outcomes in cases.items()}


def _scenario_evidence(
    claim: Claim,
    behave: dict[tuple[str, str], str] | None,
    bdd_runs: dict[tuple[str, str], str] | None,
) -> list[Evidence]:
    path = claim.location.rsplit(":", 1)[0]
    name = f"{claim.location} {claim.key}"
    behave_outcome = (behave or {}).get((path, claim.key), "not run")
    bdd_outcome = (bdd_runs or {}).get((path, bdd._normal(claim.key)), "not run")
    return [
        Evidence("behave", name, behave_outcome, claim.location),
        Evidence("pytest-bdd", name, bdd_outcome, claim.location),
    ]


def affected_selection(run_id: str | None) -> dict[str, Any] | None:
    document, _ = read_result(REPORTS / "affected.json", run_id)
    return document["affected"] if document else None


_STEP_OF_RUNNER = {"pact-provider": "pact", "pact-consumer": "pact", "metrics-lint": "metrics-lint",
                   "soak": "soak", "schemathesis": "conformance"}  # fmt: skip


def not_rerun(evidence: Evidence, selection: dict[str, Any]) -> Evidence:
    """``not run`` becomes ``not re-run`` for what an affected-only run did not select."""
    if evidence.outcome != "not run":
        return evidence
    if evidence.runner in ("behave", "pytest-bdd"):
        path = evidence.location.rsplit(":", 1)[0]
        name = evidence.name.removeprefix(evidence.location).strip()
        chosen = [path, name] in selection["scenarios"]
    elif evidence.runner == "pytest":
        file = evidence.name.split("::", 1)[0]
        parts = file.split("/")
        prefixes = {"/".join(parts[:i]) for i in range(1, len(parts) + 1)}
        chosen = evidence.name in selection["tests"] or bool(prefixes & set(selection["tests"]))
    else:
        chosen = _STEP_OF_RUNNER.get(evidence.runner) in selection["steps"]
    return evidence if chosen else dataclasses.replace(evidence, outcome="not re-run")


def load_results(run_id: str | None) -> tuple[dict[str, dict[str, Any] | None], list[str]]:
    documents: dict[str, dict[str, Any] | None] = {}
    problems: list[str] = []
    for runner, filename in RESULT_FILES.items():
        document, problem = read_result(REPORTS / filename, run_id)
        documents[runner] = document
        if problem:
            problems.append(problem)
    return documents, problems


def build(
    requirements: dict[str, Requirement],
) -> tuple[list[Row], list[str], list[str]]:
    """(rows, problems with the evidence itself, the result files read)."""
    rows = {req_id: Row(req) for req_id, req in requirements.items()}
    found = claims.collect(PACT_FILE)
    run_id = recorded_run_id()
    documents, problems = load_results(run_id)
    if run_id is None:
        problems.insert(0, "reports/run-id is missing: no run to trace (run the dev loop)")
    problems += found.errors
    inputs = [f"reports/{RESULT_FILES[r]}" for r, d in documents.items() if d is not None]
    claimed: list[tuple[str, Evidence]] = []

    behave = behave_outcomes(documents["behave"]) if documents["behave"] else None
    bdd_doc = documents["pytest-bdd"]
    bdd_runs = pytest_bdd_outcomes(bdd_doc) if bdd_doc else None
    for claim in found.scenarios:
        for evidence in _scenario_evidence(claim, behave, bdd_runs):
            claimed += [(req_id, evidence) for req_id in claim.ids]

    by_runner = {
        r: pytest_outcomes(d)
        for r, d in documents.items()
        if d and r in ("pytest", "pact-consumer")
    }
    for claim in found.tests:
        runner = "pact-consumer" if claim.key.startswith("tests/pact/") else "pytest"
        outcome = by_runner.get(runner, {}).get(claim.key, "not run")
        evidence = Evidence(runner, claim.key, outcome, claim.location)
        claimed += [(req_id, evidence) for req_id in claim.ids]

    provider = (documents["pact-provider"] or {}).get("results", {})
    for claim in found.interactions:
        entry = provider.get(f"pact-provider::{claim.key}", {})
        evidence = Evidence(
            "pact-provider", claim.key, entry.get("outcome", "not run"), claim.location
        )
        for req_id in entry.get("ids", claim.ids):
            claimed.append((req_id, evidence))

    generated = (
        ("metrics-lint", "ci/metrics.lint.json"),
        ("soak", "xtask/checks/soak.py"),
        ("schemathesis", "xtask/checks/conformance.py"),
    )
    for runner, where in generated:
        for name, entry in (documents[runner] or {}).get("results", {}).items():
            evidence = Evidence(runner, name, entry["outcome"], where)
            claimed += [(req_id, evidence) for req_id in entry["ids"]]

    selection = affected_selection(run_id)
    if selection is not None:  # an affected-only run: what it did not select is not re-run
        claimed = [(i, not_rerun(e, selection)) for i, e in claimed]
        problems = [p for p in problems if not p.endswith(" is missing")]
    unknown: set[str] = set()
    for req_id, evidence in claimed:
        if req_id in rows:
            rows[req_id].evidence.append(evidence)
        else:
            unknown.add(f"{req_id} (claimed by {evidence.runner} {evidence.location})")
    for req_id, where in found.openapi:
        if req_id not in rows:
            unknown.add(f"{req_id} (named at {where})")
    problems += [f"unknown requirement ID {u}" for u in sorted(unknown)]
    if selection is not None:  # proven before only by steps this run did not take
        committed = committed_report(ROOT)
        before = statuses(committed) if committed is not None else {}
        for req_id, row in rows.items():
            if not row.evidence and before.get(req_id) not in (None, "uncovered", "waived"):
                row.evidence.append(Evidence("affected", "not re-run by --affected", "not re-run"))
    lock = fingerprints.synced(fingerprints.read_lock(), requirements, fingerprints.claim_keys())
    for suspect in fingerprints.suspects(lock, requirements):
        rows[suspect.req_id].suspects.append(suspect)
    ordered = [rows[i] for i in sorted(rows, key=id_sort_key)]
    for row in ordered:
        row.evidence = sorted(set(row.evidence))
    return ordered, problems, inputs


def render_markdown(
    rows: list[Row],
    problems: list[str],
    inputs: list[str],
    changes: Changes | None = None,
    flaky_lines: list[str] | None = None,
) -> str:
    counts = {s: sum(1 for r in rows if r.status == s) for s in STATUSES}
    must_uncovered = [r.req.id for r in rows if r.status == "uncovered" and r.req.level == "MUST"]
    lines = [
        "# Compliance",
        "",
        "Generated by `python -m xtask trace` from the results of one dev-loop run",
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
    if changes is not None:
        lines += ["", "## Changed since the committed report", ""]
        lines += [f"- {line}" for line in changes.lines()]
    if problems:
        lines += ["", "## Problems (errors)", "", *[f"- {p}" for p in problems]]
    lines += flaky_lines or []
    current = None
    for row in rows:
        fam = family(row.req.id)
        if fam != current:
            current = fam
            lines += ["", f"## {fam}", "", "| ID | Level | Scope | Status | Proven by | Evidence |"]
            lines += ["|---|---|---|---|---|---|"]
        covered = "<br>".join(f"{e.runner}: `{e.name}` ({e.outcome})" for e in row.evidence)
        if row.suspects:
            first = row.suspects[0]
            covered += (
                f"<br>**suspect**: {len(row.suspects)} claims reviewed against "
                f'"{first.reviewed_text}"; the clause now says "{first.current_text}"'
            )
        scope = "waived: " + (row.req.waiver or "") if row.req.scope == "waived" else "in"
        proven = ", ".join(row.runners) if row.status == "passed" else ""
        lines.append(
            f"| {row.req.id} | {row.req.level} | {scope} | {row.status} | {proven} | {covered} |"
        )
    return "\n".join(lines) + "\n"


def render_json(
    rows: list[Row],
    problems: list[str],
    inputs: list[str],
    changes: Changes | None = None,
    flaky: list[FlakyTest] | None = None,
) -> str:
    data = {
        "inputs": inputs,
        "flaky": [
            {
                "runner": f.runner,
                "test": f.name,
                "ids": list(f.ids),
                "first": f.first,
                "first_detail": f.detail,
                "rerun": "passed",
            }
            for f in flaky or []
        ],
        "problems": problems,
        "summary": {s: sum(1 for r in rows if r.status == s) for s in STATUSES},
        "changed_since_committed": (
            {
                "newly_passed": changes.newly_passed,
                "newly_failed": changes.newly_failed,
                "newly_uncovered": changes.newly_uncovered,
                "added": changes.added,
                "removed": changes.removed,
            }
            if changes is not None and changes.baseline
            else None
        ),
        "requirements": [
            {
                "id": r.req.id,
                "level": r.req.level,
                "scope": r.req.scope,
                "waiver": r.req.waiver,
                "text": r.req.text,
                "source": r.req.source,
                "status": r.status,
                "proven_by": r.runners if r.status == "passed" else [],
                "covered_by": [e.__dict__ for e in r.evidence],
                "suspect_claims": [
                    {
                        "claim": x.claim,
                        "reviewed_text": x.reviewed_text,
                        "current_text": x.current_text,
                    }
                    for x in r.suspects
                ],
            }
            for r in rows
        ],
    }
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def write_reports(
    rows: list[Row],
    problems: list[str],
    inputs: list[str],
    changes: Changes | None,
    *,
    root: Path = ROOT,
    reports: Path = REPORTS,
    flaky: list[FlakyTest] | None = None,
    quarantined: dict[str, Quarantined] | None = None,
    compliance_dir: Path | None = None,
) -> None:
    """COMPLIANCE.md under ``compliance_dir`` (default ``root``), the JSON and the HTML page
    under ``reports``; links resolve against ``root``."""
    reports.mkdir(parents=True, exist_ok=True)
    flaky_lines = flaky_report.markdown(flaky or [], quarantined or {})
    (compliance_dir or root).joinpath("COMPLIANCE.md").write_text(
        render_markdown(rows, problems, inputs, changes, flaky_lines), encoding="utf-8"
    )
    (reports / "traceability.json").write_text(
        render_json(rows, problems, inputs, changes, flaky), encoding="utf-8"
    )
    page = render_html(rows, problems, changes, root=root, page_dir=reports)
    (reports / "traceability.html").write_text(page, encoding="utf-8")


def link_problems(rows: list[Row], root: Path = ROOT) -> list[str]:
    return [
        f"link to a missing file {path} (from {', '.join(ids)})"
        for path, ids in sorted(missing_files(rows, root).items())
    ]


def gate(
    rows: list[Row], quarantined: Mapping[str, quarantine.Quarantined]
) -> tuple[list[str], list[str]]:
    """What fails trace (and so the loop), and what is only reported: failed and undefined
    IDs fail; a flaky or suspect MUST fails unless (flaky only) it is quarantined; a flaky or
    suspect SHOULD is reported (HARN-103, HARN-402)."""
    failing: list[str] = []
    notes: list[str] = []
    for row in rows:
        if row.status in ("failed", "undefined"):
            bad = [e for e in row.evidence if e.outcome != "passed"]
            failing += [
                f"{row.req.id} {row.status}: {e.runner} {e.name} ({e.outcome})" for e in bad
            ]
        if row.status == "flaky":
            tests = [e.name for e in row.evidence if e.outcome == "flaky"]
            held = quarantined.get(row.req.id)
            what = f"{row.req.id} flaky: failed, then passed on re-run: {', '.join(tests)}"
            if held is not None:
                notes.append(f"{what} (quarantined since {held.since}: {held.reason})")
            elif row.req.level == "MUST":
                failing.append(what + " (fix it, or quarantine it with a reason and a date)")
            else:
                notes.append(f"{what} ({row.req.level}: reported, not failing)")
        if row.status == "suspect":
            what = (
                f"{row.req.id} suspect: {len(row.suspects)} claims were reviewed against "
                f"another clause; read them, then `python -m xtask review {row.req.id}`"
            )
            if row.req.level == "MUST":
                failing.append(what)
            else:
                notes.append(f"{what} ({row.req.level}: reported, not failing)")
    return failing, notes


def run(args: argparse.Namespace) -> int:
    if getattr(args, "merge", None):
        merged = trace_merge.merge(
            [Path(d) for d in args.merge], REPORTS, list(RESULT_FILES.values())
        )
        if merged:
            for problem in merged:
                print(f"trace --merge: {problem}", file=sys.stderr)
            return 1
    by_file, spec_problems = collect_specs()
    requirements = {r.id: r for reqs in by_file.values() for r in reqs}
    rows, problems, inputs = build(requirements)
    problems = spec_problems + problems + link_problems(rows)
    run_id = recorded_run_id()
    documents, _ = load_results(run_id)
    export_reqif.export(REPORTS / "spec.reqif")
    flaky = flaky_report.flaky_tests(documents)
    quarantined, quarantine_problems = quarantine.load(set(requirements))
    problems += quarantine_problems
    if run_id is not None:
        history.record(run_id, commit((".",)), history.outcomes_of(documents))
    committed = committed_report(ROOT)
    changes = compare(
        statuses(committed) if committed is not None else None,
        {r.req.id: r.status for r in rows},
    )
    only_affected = affected_selection(run_id) is not None
    # An affected-only run proves too little to replace the committed COMPLIANCE.md.
    write_reports(
        rows,
        problems,
        inputs,
        changes,
        compliance_dir=REPORTS if only_affected else ROOT,
        flaky=flaky,
        quarantined=quarantined,
    )
    counts = {s: sum(1 for r in rows if r.status == s) for s in STATUSES}
    print("trace: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f" of {len(rows)}")
    failing, notes = gate(rows, quarantined)
    problems += failing
    for note in notes:
        print(f"trace: {note}")
    for problem in problems:
        print(f"trace: {problem}", file=sys.stderr)
    uncovered = [r.req.id for r in rows if r.status == "uncovered"]
    print(f"trace: {len(uncovered)} in-scope requirements uncovered")
    for line in changes.lines():
        print(f"trace: since the committed report: {line}")
    where = "reports/COMPLIANCE.md" if only_affected else "COMPLIANCE.md"
    print(f"trace: wrote {where}, {REPORTS.relative_to(ROOT)}/traceability.json and .html")
    return 1 if problems else 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("trace", help="specs + claims + this run's results → COMPLIANCE.md")
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="DIR",
        help="first merge the reports/ folders of a sharded run (dev-loop --shard I/N)",
    )
    parser.set_defaults(run=run)
