"""``python -m xtask affected [--since REF]``: the checks a change affects, each with why
(HARN-201..203).

The change is the working tree against ``REF`` (default ``HEAD``), untracked files included:
- a spec row whose fingerprint changed (or that is new) → every test, scenario and step
  that claims its ID (the claims in the sources; for the generated runners, the IDs their
  last results in the history claimed);
- a feature file → its scenarios; a test module → its tests;
- a Python module → the tests that ran one of the changed lines in the full run that
  recorded the coverage map (``xtask/loop/coverage_map.py``); without a map, every test, and
  it says so;
- contracts, ``ci/metrics.lint.json`` and the Pact file → the steps that read them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xtask.loop import coverage_map, history
from xtask.loop.results import write_result
from xtask.spec import claims, spec_extract

ROOT = Path(__file__).resolve().parents[2]
SELECTION_FILE = ROOT / "reports" / "affected.json"
AFFECTED_ENV = "LLORCH_AFFECTED"
PACT_FILE = ROOT / "contracts" / "pacts" / "cli-consumer-orchestratord.json"
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+\d+(?:,\d+)? @@")
# Files that a step reads as data (coverage cannot see a file being read).
DATA_READERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("contracts/pacts/", ("pact",)),
    ("contracts/", ("regen", "conformance", "pact")),
    ("ci/metrics.lint.json", ("metrics-lint",)),
)
# The entry module of a step: the step runs it (``python -m xtask <step>``).
STEP_MODULES = {
    "xtask/checks/soak.py": "soak", "xtask/checks/conformance.py": "conformance",
    "xtask/checks/pact.py": "pact", "xtask/checks/metrics_lint.py": "metrics-lint",
    "xtask/checks/bdd.py": "bdd",
}  # fmt: skip
GENERATED_RUNNERS = {
    "soak": "soak", "metrics-lint": "metrics-lint", "schemathesis": "conformance",
    "pact-provider": "pact",
}  # fmt: skip


@dataclass
class Selection:
    tests: dict[str, list[str]] = field(default_factory=dict)  # node id or module → reasons
    scenarios: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (file, name)
    steps: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, bucket: dict[Any, list[str]], key: Any, reason: str) -> None:
        reasons = bucket.setdefault(key, [])
        if reason not in reasons:
            reasons.append(reason)

    def as_json(self) -> dict[str, Any]:
        return {
            "tests": sorted(self.tests),
            "scenarios": sorted([list(k) for k in self.scenarios]),
            "steps": sorted(self.steps),
            "reasons": {
                **{t: r for t, r in self.tests.items()},
                **{f"{f} {n}": r for (f, n), r in self.scenarios.items()},
                **{f"step {s}": r for s, r in self.steps.items()},
            },
            "notes": self.notes,
        }


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout


def changed_files(since: str) -> list[str]:
    tracked = _git("diff", "--name-only", since).split()
    untracked = _git("ls-files", "--others", "--exclude-standard").split()
    return sorted(set(tracked) | set(untracked))


def changed_lines(path: str, since: str) -> set[int] | None:
    """Lines of ``path`` as it was at ``since`` that the change touches (an insertion
    touches the lines around it); None for a file that did not exist then."""
    try:
        _git("cat-file", "-e", f"{since}:{path}")
    except subprocess.CalledProcessError:
        return None
    lines: set[int] = set()
    for line in _git("diff", "-U0", since, "--", path).splitlines():
        match = _HUNK.match(line)
        if match:
            start, count = int(match[1]), int(match[2] if match[2] is not None else 1)
            lines |= set(range(start, start + count)) if count else {start, start + 1}
    return lines


def changed_ids(files: list[str], since: str) -> dict[str, str]:
    """ID → why, for spec rows whose fingerprint differs from ``since``'s (or are new)."""
    found: dict[str, str] = {}
    for rel in files:
        if not (rel.startswith(".specs/") and rel.endswith(".md")):
            continue
        path = ROOT / rel
        now = {r.id: r for r in spec_extract.parse_file(path)[0]} if path.exists() else {}
        try:
            text = _git("show", f"{since}:{rel}")
        except subprocess.CalledProcessError:
            text = ""
        before = {r.id: spec_extract.fingerprint(r) for r in spec_extract.parse_file(path, text)[0]}
        for req_id, req in now.items():
            if req_id not in before:
                found[req_id] = f"{req_id} is new in {rel}"
            elif before[req_id] != spec_extract.fingerprint(req):
                found[req_id] = f"{req_id}'s clause changed ({rel})"
    return found


def _claimants(selection: Selection, ids: dict[str, str]) -> None:
    found = claims.collect(PACT_FILE)
    for claim in found.scenarios:
        for req_id in set(claim.ids) & set(ids):
            selection.add(
                selection.scenarios, (claim.location.rsplit(":", 1)[0], claim.key), ids[req_id]
            )
    for claim in found.tests:
        for req_id in set(claim.ids) & set(ids):
            step = "pact" if claim.key.startswith("tests/pact/") else None
            if step:
                selection.add(selection.steps, step, ids[req_id])
            else:
                selection.add(selection.tests, claim.key, ids[req_id])
    for claim in found.interactions:
        for req_id in set(claim.ids) & set(ids):
            selection.add(selection.steps, "pact", ids[req_id])
    for req_id, _ in found.openapi:
        if req_id in ids:
            selection.add(selection.steps, "conformance", ids[req_id])
    for req_id, why in ids.items():
        for runner, _test in history.claimants(req_id):
            if runner in GENERATED_RUNNERS:
                selection.add(selection.steps, GENERATED_RUNNERS[runner], why)


def _scenarios_of(feature: str) -> list[str]:
    errors: list[str] = []
    return [c.key for c in claims.feature_claims(errors) if c.location.startswith(feature + ":")]


def _python_change(
    selection: Selection, rel: str, since: str, cover: dict[str, Any] | None
) -> None:
    if rel.startswith(("tests/unit/", "tests/e2e/")) and Path(rel).name.startswith("test_"):
        selection.add(selection.tests, rel, f"{rel} changed")
        return
    if rel.startswith("tests/bdd/") or rel.startswith("tests/pact/"):
        selection.add(selection.steps, "bdd" if "bdd" in rel else "pact", f"{rel} changed")
        return
    if rel in STEP_MODULES:
        selection.add(selection.steps, STEP_MODULES[rel], f"{rel} is the step's own module")
    if cover is None:
        selection.add(selection.tests, "tests/unit", f"{rel} changed; no coverage map recorded")
        selection.add(selection.tests, "tests/e2e", f"{rel} changed; no coverage map recorded")
        return
    lines = changed_lines(rel, since)
    if lines is None:
        selection.notes.append(f"{rel} is new: nothing has run it yet (its tests are new too)")
        return
    hit = coverage_map.why_tests(cover, rel, lines)
    shown = f"{rel} lines {_ranges(lines)}"
    for test, how in sorted(hit.items()):
        if how == "loaded":  # a server this test (module, step) started imported it
            reason = f"{rel} changed; its servers loaded the module"
        else:
            reason = f"{shown} ran by it"
        scenario = cover.get("scenarios", {}).get(test)
        if scenario:
            selection.add(selection.scenarios, (scenario[0], scenario[1]), reason)
        elif test.startswith("step:") and test != "step:bdd":
            selection.add(selection.steps, test.removeprefix("step:"), reason)
        elif test.startswith(("tests/bdd/", "step:bdd")):
            for feature in sorted({s[0] for s in cover.get("scenarios", {}).values()}):
                for name in _scenarios_of(feature):
                    selection.add(selection.scenarios, (feature, name), reason)
        else:
            selection.add(selection.tests, test, reason)
    if not hit:
        selection.notes.append(f"{shown}: no test ran these lines in the recorded run")


def _ranges(lines: set[int]) -> str:
    ordered, spans = sorted(lines), []
    start = prev = ordered[0]
    for line in [*ordered[1:], None]:
        if line is not None and line == prev + 1:
            prev = line
            continue
        spans.append(f"{start}" if start == prev else f"{start}-{prev}")
        if line is not None:
            start = prev = line
    return ",".join(spans)


def compute(since: str = "HEAD") -> Selection:
    selection = Selection()
    files = changed_files(since)
    cover = coverage_map.read()
    if cover is None:
        selection.notes.append("no coverage map yet: a full `python -m xtask dev-loop` records it")
    ids = changed_ids(files, since)
    _claimants(selection, ids)
    claimed = {r for reasons in selection.as_json()["reasons"].values() for r in reasons}
    for why in ids.values():
        if why not in claimed:
            selection.notes.append(f"{why}: nothing claims it yet (trace: uncovered)")
    for rel in files:
        if rel.startswith("features/") and rel.endswith(".feature"):
            for name in _scenarios_of(rel):
                selection.add(selection.scenarios, (rel, name), f"{rel} changed")
        elif rel.endswith(".py") and (ROOT / rel).exists():
            _python_change(selection, rel, since, cover)
        for prefix, steps in DATA_READERS:
            if rel.startswith(prefix):
                for step in steps:
                    selection.add(selection.steps, step, f"{rel} changed (the step reads it)")
                break
    return selection


def print_selection(selection: Selection) -> None:
    print(
        f"affected: {len(selection.tests)} tests, {len(selection.scenarios)} scenarios, "
        f"steps: {', '.join(sorted(selection.steps)) or 'none'}"
    )
    for test, reasons in sorted(selection.tests.items()):
        print(f"  test {test}  ← {'; '.join(reasons)}")
    for (feature, name), reasons in sorted(selection.scenarios.items()):
        print(f"  scenario {feature}: {name}  ← {'; '.join(reasons)}")
    for step, reasons in sorted(selection.steps.items()):
        print(f"  step {step}  ← {'; '.join(reasons)}")
    for note in selection.notes:
        print(f"  note: {note}")


def write_selection(selection: Selection, path: Path) -> None:
    write_result(path, {"affected": selection.as_json()})


def chosen() -> dict[str, Any] | None:
    """The selection of the affected-only run this process belongs to, or None."""
    path = os.environ.get(AFFECTED_ENV)
    if not path:
        return None
    document: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))["affected"]
    return document


def run(args: argparse.Namespace) -> int:
    try:
        selection = compute(args.since)
    except subprocess.CalledProcessError as exc:
        print(f"affected: git failed: {exc.stderr.strip()}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(selection.as_json(), indent=1, sort_keys=True))
    else:
        print_selection(selection)
    return 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("affected", help="the tests, scenarios and steps a change affects")
    parser.add_argument("--since", default="HEAD", help="compare the working tree with REF")
    parser.add_argument("--json", action="store_true", help="print the selection as JSON")
    parser.set_defaults(run=run)
