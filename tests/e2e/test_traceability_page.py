"""The traceability page in a real headless Chromium, generated for a small repository made
by the test: requirements that passed, failed, are undefined, uncovered and waived, a spec row
with an empty clause, an ID defined twice, evidence whose file was deleted, and a clause and a
test name that look like HTML. Trace reports every bad input; the page still renders, agrees
with the JSON written beside it, and runs none of the hostile text."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from xtask.report import report_page, trace
from xtask.report.compliance_diff import compare
from xtask.report.trace import Evidence, Row
from xtask.spec import spec_extract
from xtask.spec.fingerprints import Suspect

HOSTILE = (
    '<script>document.title = "owned"</script>'
    '<img src="x" onerror="document.body.dataset.owned = 1">'
)
SPEC = f"""# Small

| ID | Level | Scope | Clause |
|---|---|---|---|
| HOME-101 | MUST | in | Plain clause with `code`. |
| HOME-102 | MUST | in | {HOSTILE} |
| HOME-103 | SHOULD | in |  |
| HOME-104 | MUST | in | Nothing claims this one. |
| HOME-105 | MUST | waived: one user | No tenants. |
| HOME-106 | MAY | in | A scenario with a step nobody wrote. |
| HOME-107 | MUST | in | A full queue drops the newest task. |
| HOME-101 | MUST | in | Defined again. |
"""


@pytest.fixture
def small_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / ".specs").mkdir()
    (tmp_path / ".specs" / "00_small.md").write_text(SPEC, encoding="utf-8")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_small.py").write_text(
        "def test_ok():\n    pass\n\n\ndef test_broken():\n    raise AssertionError\n"
    )
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "small.feature").write_text(
        "Feature: small\n\n  Scenario: Hostile <b>name</b>\n    Given nothing\n"
    )
    monkeypatch.setattr(spec_extract, "ROOT", tmp_path)
    monkeypatch.setattr(spec_extract, "SPECS", tmp_path / ".specs")
    return tmp_path


SMALL_TEST = "tests/test_small.py"


def evidence_for(req_id: str) -> list[Evidence]:
    scenario = "features/small.feature:3"
    return {
        "HOME-101": [
            Evidence("pytest", "tests/test_small.py::test_ok", "passed", "tests/test_small.py:1"),
            Evidence("behave", f"{scenario} Hostile <b>name</b>", "passed", scenario),
        ],
        "HOME-102": [
            Evidence("pytest", "tests/test_small.py::test_broken", "failed", SMALL_TEST + ":5"),
            Evidence("pytest", f"{SMALL_TEST}::test_{HOSTILE}", "passed", SMALL_TEST + ":1"),
        ],
        "HOME-103": [
            Evidence("pytest", "tests/test_gone.py::test_gone", "passed", "tests/test_gone.py:7")
        ],
        "HOME-106": [Evidence("behave", f"{scenario} Hostile <b>name</b>", "undefined", scenario)],
        "HOME-107": [Evidence("pytest", f"{SMALL_TEST}::test_drop", "passed", SMALL_TEST + ":1")],
    }.get(req_id, [])  # fmt: skip


def suspects_for(req: spec_extract.Requirement) -> list[Suspect]:
    """HOME-107's test was reviewed when the clause said "oldest"."""
    if req.id != "HOME-107":
        return []
    reviewed = spec_extract.clause_text(
        dataclasses.replace(req, text="A full queue drops the oldest task.")
    )
    claim = "pytest tests/test_small.py::test_drop"
    return [Suspect(req.id, claim, reviewed, spec_extract.clause_text(req))]


def generate(root: Path) -> tuple[list[str], dict[str, Any]]:
    """What trace does: specs → rows → problems → the three reports under ``root``."""
    by_file, spec_problems = spec_extract.collect_specs()
    rows = [Row(req, evidence_for(req.id), suspects_for(req)) for req in by_file["00_small"]]
    problems = spec_problems + trace.link_problems(rows, root)
    before = dict.fromkeys(["HOME-102", "HOME-103", "HOME-104", "HOME-106", "HOME-99"], "passed")
    before |= {"HOME-101": "failed", "HOME-105": "waived", "HOME-107": "passed"}
    changes = compare(before, {r.req.id: r.status for r in rows})
    trace.write_reports(
        rows, problems, ["reports/pytest-unit.json"], changes, root=root, reports=root / "reports"
    )
    data = json.loads((root / "reports" / "traceability.json").read_text(encoding="utf-8"))
    return problems, data


@pytest.mark.req("HOME-1206")
def test_bad_spec_rows_and_dangling_links_are_reported_and_the_reports_still_written(
    small_repo: Path,
) -> None:
    problems, data = generate(small_repo)
    assert problems == [
        ".specs/00_small.md:7: HOME-103 has an empty clause",
        ".specs/00_small.md:12: HOME-101 is already defined at .specs/00_small.md:5",
        "link to a missing file tests/test_gone.py (from HOME-103)",
    ]
    assert data["problems"] == problems
    compliance = (small_repo / "COMPLIANCE.md").read_text(encoding="utf-8")
    assert all(f"- {p}" in compliance for p in problems)
    assert {r["id"]: r["status"] for r in data["requirements"]} == {
        "HOME-101": "passed",
        "HOME-102": "failed",
        "HOME-103": "passed",
        "HOME-104": "uncovered",
        "HOME-105": "waived",
        "HOME-106": "undefined",
        "HOME-107": "suspect",
    }


@pytest.mark.req("HOME-1206", "HARN-103")
def test_the_page_in_chromium_agrees_with_the_json_and_filters_to_exactly_the_failed(
    small_repo: Path,
) -> None:
    problems, data = generate(small_repo)
    page_path = small_repo / "reports" / "traceability.html"
    with report_page.open_report(page_path) as page:
        assert report_page.check(page, data) == []
        assert page.cards() == {
            "total": 7, "passed": 2, "flaky": 0, "failed": 1, "undefined": 1, "suspect": 1,
            "not re-run": 0, "uncovered": 1, "waived": 1,
        }  # fmt: skip
        page.filter(status="failed")
        assert page.visible_ids() == ["HOME-102"]
        page.filter(status="suspect")  # HARN-103: its own filter, both clauses side by side
        assert page.visible_ids() == ["HOME-107"]
        box = page.page.locator('[data-suspect="HOME-107"]')
        assert box.locator("del").text_content() == "oldest"  # inside a closed <details>
        assert box.locator("ins").text_content() == "newest"
        page.filter(status="uncovered", level="MUST")
        assert page.visible_ids() == ["HOME-104"]
        page.filter(text="test_ok")
        assert page.visible_ids() == ["HOME-101"]
        page.filter()
        assert page.problems() == problems
        # A filtered view is kept in the URL, so it can be shared and reopened.
        page.filter(status="undefined")
        shared = page.page.url
        assert shared.endswith("#status=undefined")
        page.page.goto("about:blank")
        page.page.goto(shared)
        assert page.visible_ids() == ["HOME-106"]
        page.filter()
        changed = page.page.inner_text("#changes")
        assert "newly passed (1): HOME-101" in changed
        assert "newly failed, undefined or suspect (3): HOME-102, HOME-106, HOME-107" in changed
        assert "newly uncovered (1): HOME-104" in changed
        assert "requirements gone (1): HOME-99" in changed

        # A link resolves to a file that exists, and opens it.
        spec_link = page.page.locator("details#req-HOME-101 dl.meta a.loc")
        target = report_page.file_of(spec_link.evaluate("a => a.href"))
        assert target == (small_repo / ".specs" / "00_small.md").resolve()
        test_link = page.page.locator("details#req-HOME-101 ul.evidence[data-runner=pytest] a")
        assert report_page.file_of(test_link.evaluate("a => a.href")) == (
            small_repo / "tests" / "test_small.py"
        )
        page.page.locator("details#req-HOME-101 summary").click()
        test_link.click()
        page.page.wait_for_load_state()
        assert "def test_ok():" in page.page.inner_text("body")


@pytest.mark.req("HOME-1206")
def test_html_in_clauses_and_test_names_is_shown_never_run_and_missing_files_are_not_links(
    small_repo: Path,
) -> None:
    generate(small_repo)
    with report_page.open_report(small_repo / "reports" / "traceability.html") as page:
        hostile = page.open_requirement("HOME-102")
        # As text: the clause (folded line and in full) and the test's name.
        assert hostile.count(HOSTILE) == 3
        assert page.page.title() == "llama-orch traceability"
        assert page.page.evaluate("() => document.body.dataset.owned") is None
        assert (
            page.page.locator("details#req-HOME-102 script, details#req-HOME-102 img").count() == 0
        )
        assert "Hostile <b>name</b>" in page.open_requirement("HOME-101")
        assert "code" in page.page.locator("details#req-HOME-101 .clause code").inner_text()

        gone = page.open_requirement("HOME-103")
        assert "(empty clause)" in gone
        assert "tests/test_gone.py:7 (missing file)" in gone
        assert page.page.locator("details#req-HOME-103 ul.evidence a").count() == 0
        assert page.errors == []


@pytest.mark.req("HOME-1206")
def test_the_browser_check_fails_on_a_page_that_disagrees_with_its_json(small_repo: Path) -> None:
    _, data = generate(small_repo)
    page_path = small_repo / "reports" / "traceability.html"
    honest = page_path.read_text(encoding="utf-8")
    lying = honest.replace('id="req-HOME-102" data-id="HOME-102" data-status="failed"',
                           'id="req-HOME-102" data-id="HOME-102" data-status="passed"')  # fmt: skip
    assert lying != honest
    page_path.write_text(lying, encoding="utf-8")
    with report_page.open_report(page_path) as page:
        found = report_page.check(page, data)
    assert any(p.startswith("filter failed: shows []") for p in found)
    assert any(p.startswith("filter passed: shows ['HOME-101', 'HOME-102'") for p in found)
