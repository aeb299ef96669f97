"""Flaky results: re-run once in a fresh process, named, gated by quarantine, remembered
(HARN-401..403)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from xtask.checks import bdd
from xtask.loop import history, reruns
from xtask.report import flaky_report, trace
from xtask.report.trace import Evidence, Row
from xtask.spec import quarantine
from xtask.spec.spec_extract import Requirement, all_requirements

ROOT = Path(__file__).resolve().parents[2]

CONFTEST = """
from tests.conftest import (  # noqa: F401  the project's result recording
    pytest_addoption, pytest_collection_modifyitems, pytest_runtest_logreport,
    pytest_runtest_makereport, pytest_sessionfinish,
)
"""
FLIPPING = """
import pathlib
import pytest

COUNTER = pathlib.Path(__file__).with_name("runs")


@pytest.mark.req("HOME-101")
def test_fails_one_time_in_two():
    n = int(COUNTER.read_text()) if COUNTER.exists() else 0
    COUNTER.write_text(str(n + 1))
    assert n % 2 == 1, "odd run"


@pytest.mark.req("HOME-102")
def test_always_fails():
    assert False, "broken"


def test_passes():
    pass
"""


@pytest.mark.req("HARN-401")
def test_a_test_failing_one_time_in_two_is_flaky_and_a_broken_one_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLORCH_RUN_ID", "run-flaky")
    for env in ("LLORCH_SHARD", "LLORCH_AFFECTED"):  # this loop's own share is not the suite's
        monkeypatch.delenv(env, raising=False)
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(CONFTEST)
    (suite / "test_flip.py").write_text(FLIPPING)
    report = tmp_path / "out.json"
    code = reruns.run_pytest([str(suite)], report)
    results = {k.split("::")[-1]: v for k, v in json.loads(report.read_text())["results"].items()}
    assert code == 1  # one test failed twice
    flaky = results["test_fails_one_time_in_two"]
    assert flaky["outcome"] == "flaky" and flaky["first"] == "failed" and flaky["rerun"] == "passed"
    assert "odd run" in flaky["detail"]
    assert results["test_always_fails"]["outcome"] == "failed"
    assert results["test_always_fails"]["rerun"] == "failed"
    assert results["test_passes"] == {"ids": [], "outcome": "passed", "runner": "pytest"}
    assert (suite / "runs").read_text() == "2"  # re-run once, not more

    # Alone, the flaky test makes the step pass: trace decides whether flaky may pass.
    (suite / "test_flip.py").write_text(
        FLIPPING.split('@pytest.mark.req("HOME-102")', maxsplit=1)[0]
    )
    (suite / "runs").unlink()
    assert reruns.run_pytest([str(suite)], report) == 0


def req(req_id: str, level: str = "MUST") -> Requirement:
    return Requirement(req_id, level, "in", None, "a clause", ".specs/x.md:1")


@pytest.mark.req("HARN-401")
def test_a_flaky_claim_makes_its_requirement_flaky_after_failed_and_undefined() -> None:
    def status(*outcomes: str) -> str:
        return Row(
            req("HOME-101"), [Evidence("pytest", f"t{i}", o) for i, o in enumerate(outcomes)]
        ).status

    assert status("passed", "flaky") == "flaky"
    assert status("flaky", "failed") == "failed"
    assert status("flaky", "undefined") == "undefined"
    assert status("passed") == "passed"


@pytest.mark.req("HARN-402")
def test_quarantine_needs_a_known_id_a_reason_and_a_date(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text(
        "quarantine:\n"
        "  - {id: HOME-101, reason: timing under load, since: 2026-12-02}\n"
        "  - {id: HOME-102, since: 2026-12-02}\n"
        "  - {id: HOME-103, reason: x, since: soon}\n"
        "  - {id: NOPE-1, reason: x, since: 2026-12-02}\n"
    )
    held, problems = quarantine.load({"HOME-101", "HOME-102", "HOME-103"}, path)
    assert held == {
        "HOME-101": quarantine.Quarantined("HOME-101", "timing under load", dt.date(2026, 12, 2))
    }
    assert len(problems) == 3
    assert any("HOME-102: a quarantine needs a reason" in p for p in problems)
    assert any("HOME-103: `since` must be a date" in p for p in problems)
    assert any("'NOPE-1' is not a requirement ID" in p for p in problems)
    _committed, committed_problems = quarantine.load(set(all_requirements()))
    assert committed_problems == []  # the committed file is well-formed


@pytest.mark.req("HARN-402")
def test_the_gate_fails_a_flaky_must_unless_quarantined_and_reports_a_flaky_should() -> None:
    def row(req_id: str, level: str = "MUST") -> Row:
        return Row(req(req_id, level), [Evidence("pytest", f"tests/unit/t.py::{req_id}", "flaky")])

    rows = [row("HOME-101"), row("HOME-102"), row("HOME-103", "SHOULD")]
    held = {"HOME-102": quarantine.Quarantined("HOME-102", "timing", dt.date(2026, 12, 2))}
    failing, notes = trace.gate(rows, held)
    assert len(failing) == 1 and failing[0].startswith("HOME-101 flaky: failed, then passed")
    assert "quarantine it with a reason and a date" in failing[0]
    assert any(n.startswith("HOME-102 flaky") and "quarantined since 2026-12-02" in n
               for n in notes)  # fmt: skip
    assert any(n.startswith("HOME-103 flaky") and "SHOULD: reported" in n for n in notes)
    assert all(r.status == "flaky" for r in rows)  # a quarantined flaky is still flaky
    assert trace.gate(rows, {**held, "HOME-101": held["HOME-102"]})[0] == []


@pytest.mark.req("HARN-401", "HARN-402")
def test_the_report_lists_each_flaky_test_with_both_outcomes() -> None:
    documents = {
        "pytest": {"results": {
            "tests/unit/test_x.py::t": {"ids": ["HOME-101"], "outcome": "flaky", "first": "failed",
                                        "rerun": "passed", "detail": "AssertionError: odd run"},
            "tests/unit/test_x.py::u": {"ids": [], "outcome": "passed"},
        }},
        "behave": {"features": [{"elements": [
            {"type": "scenario", "location": "features/a.feature:4", "name": "S", "status": "flaky",
             "first": "failed", "rerun": "passed", "tags": ["HOME-102"]}]}]},
    }  # fmt: skip
    flaky = flaky_report.flaky_tests(documents)
    assert [(f.runner, f.ids) for f in flaky] == [
        ("behave", ("HOME-102",)),
        ("pytest", ("HOME-101",)),
    ]
    held = {"HOME-101": quarantine.Quarantined("HOME-101", "timing", dt.date(2026, 12, 2))}
    table = "\n".join(flaky_report.markdown(flaky, held))
    row = "| pytest | `tests/unit/test_x.py::t` | HOME-101 | failed: AssertionError: odd run |"
    assert row + " passed |" in table
    assert "HOME-101 since 2026-12-02: timing" in table


@pytest.mark.req("HARN-401")
def test_behave_scenarios_that_pass_on_rerun_become_flaky() -> None:
    features = [{"elements": [
        {"type": "scenario", "location": "features/a.feature:4", "status": "failed", "steps": []},
        {"type": "scenario", "location": "features/a.feature:9", "status": "failed", "steps": []},
        {"type": "scenario", "location": "features/a.feature:12", "status": "failed",
         "steps": [{"result": {"status": "undefined"}}]},
    ]}]  # fmt: skip
    assert bdd.failed_scenarios(features) == ["features/a.feature:4", "features/a.feature:9"]
    again = [{"elements": [
        {"type": "scenario", "location": "features/a.feature:4", "status": "passed"},
        {"type": "scenario", "location": "features/a.feature:9", "status": "failed"},
    ]}]  # fmt: skip
    bdd.fold_behave_rerun(features, again)
    first, second, _ = features[0]["elements"]
    assert (first["status"], first["first"], first["rerun"]) == ("flaky", "failed", "passed")
    assert (second["status"], second["rerun"]) == ("failed", "failed")


@pytest.mark.req("HARN-403")
def test_history_keeps_every_run_and_gives_the_flip_rate(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    outcomes = ["passed", "failed", "passed", "flaky", "passed"]
    for n, outcome in enumerate(outcomes):
        first = "failed" if outcome == "flaky" else None
        record = history.Outcome("pytest", "tests/unit/test_x.py::t", outcome, first, ("HOME-101",))
        history.record(f"run-{n}", f"c{n}", [record], db)
    by_id = history.query("HOME-101", 10, db)
    by_name = history.query("test_x.py::t", 3, db)
    runs = by_id[("pytest", "tests/unit/test_x.py::t")]
    assert [o for _, _, o, _ in runs] == list(reversed(outcomes))  # newest first
    assert [c for _, c, _, _ in runs][:2] == ["c4", "c3"]
    assert len(by_name[("pytest", "tests/unit/test_x.py::t")]) == 3
    # Runs 2..5 each differ from the run before (run 4 is flaky besides): 4 of 5 flipped.
    assert history.flip_rate(outcomes) == pytest.approx(4 / 5)
    assert history.flip_rate(["passed"] * 5) == 0.0
    assert history.flip_rate(["flaky"]) == 1.0 and history.flip_rate([]) == 0.0
    assert history.flip_rate(["flaky", "flaky", "flaky"]) == 1.0  # never above 1
    assert history.flip_rate(["passed", "passed", "failed", "failed"]) == pytest.approx(1 / 4)
    assert history.query("HOME-999", 10, db) == {}
