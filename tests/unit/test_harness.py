"""The harness fails when it should: spec rows, unknown or malformed IDs, evidence that is
failing, missing, stale, from the wrong kind of test, or claimed too broadly."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from xtask.checks import bdd, pact
from xtask.loop import results
from xtask.loop.results import RUN_ID_ENV
from xtask.report import trace
from xtask.spec import claims, fingerprints, spec_extract
from xtask.spec.claims import Claim, Claims


def write_spec(tmp_path: Path, rows: str) -> Path:
    path = tmp_path / "spec.md"
    path.write_text("| ID | Level | Scope | Clause |\n|---|---|---|---|\n" + rows)
    return path


@pytest.fixture
def in_tmp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(spec_extract, "ROOT", tmp_path)
    return tmp_path


@pytest.mark.req("HOME-1206")
@pytest.mark.parametrize(
    ("row", "error"),
    [
        ("| HOME-1 | MUST | in | x |\n", "malformed requirement ID"),
        ("| HOME-101 | MUSTN'T | in | x |\n", "level must be"),
        ("| HOME-101 | MUST | maybe | x |\n", "scope must be"),
        ("| HOME-101 | MUST | waived: | x |\n", "needs a one-line reason"),
        ("| HOME-101 | MUST | in |  |\n", "empty clause"),
    ],
)
def test_malformed_spec_rows_are_errors(in_tmp_root: Path, row: str, error: str) -> None:
    _, problems = spec_extract.parse_file(write_spec(in_tmp_root, row))
    assert len(problems) == 1
    assert problems[0].startswith("spec.md:3: ") and error in problems[0]


@pytest.mark.req("HOME-1206")
def test_waiver_reason_is_kept(in_tmp_root: Path) -> None:
    (req,), problems = spec_extract.parse_file(
        write_spec(in_tmp_root, "| PROD-001 | MUST | waived: one user | q |\n")
    )
    assert problems == []
    assert (req.scope, req.waiver) == ("waived", "one user")


@pytest.mark.req("HOME-1206")
def test_extraction_is_byte_stable_and_committed() -> None:
    first = spec_extract.outputs()
    assert first == spec_extract.outputs()
    for path, content in first.items():
        assert path.read_bytes() == content, f"{path} drifted: run `python -m xtask spec-extract`"


@pytest.mark.req("HOME-1206")
def test_every_claim_in_the_repository_is_well_formed_and_defined() -> None:
    found = claims.collect(trace.PACT_FILE)
    assert found.errors == []
    known = set(spec_extract.all_requirements())
    every = [(i, c.location) for c in found.scenarios + found.tests for i in c.ids]
    every += found.openapi
    assert [(i, where) for i, where in every if i not in known] == []
    assert found.scenarios and found.tests


# --- trace over synthetic claims and results --------------------------------------------------


RUNNING = "a running orchestratord with a Ready llama.cpp pool"


def requirements(*ids: str, waived: tuple[str, ...] = ()) -> dict[str, spec_extract.Requirement]:
    def req(i: str) -> spec_extract.Requirement:
        scope, why = ("waived", "not here") if i in waived else ("in", None)
        return spec_extract.Requirement(i, "MUST", scope, why, "x", "spec.md:1")

    return {i: req(i) for i in ids}


class Run:
    """A reports/ folder of one run, and the claims the repository is said to make."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reports = root / "reports"
        self.reports.mkdir()
        self.run_id = "run-1"
        (self.reports / "run-id").write_text(self.run_id)
        monkeypatch.setattr(trace, "REPORTS", self.reports)
        monkeypatch.setattr("xtask.loop.results.REPORTS", self.reports)
        monkeypatch.setattr("xtask.loop.results.ROOT", root)
        self.claims = Claims([], [], [], [], [])
        monkeypatch.setattr(claims, "collect", lambda pact_file: self.claims)
        monkeypatch.setattr(fingerprints, "LOCK", root / "claims.lock")
        for runner in trace.RESULT_FILES:
            self.write(runner, {})

    def write(self, runner: str, body: dict[str, Any], run_id: str | None = None) -> None:
        document = {"run_id": run_id or self.run_id, **body}
        if runner == "behave":
            document.setdefault("features", [])
        else:
            document.setdefault("results", {})
        (self.reports / trace.RESULT_FILES[runner]).write_text(json.dumps(document))

    def test(self, key: str, *ids: str) -> None:
        self.claims.tests.append(Claim("pytest", key, ids, key.split("::", maxsplit=1)[0] + ":3"))

    def pytest_results(self, runner: str = "pytest", **outcomes: str) -> None:
        results = {
            f"tests/unit/test_x.py::{name}": {"ids": [], "outcome": outcome}
            for name, outcome in outcomes.items()
        }
        self.write(runner, {"results": results})

    def statuses(self, reqs: dict[str, spec_extract.Requirement]) -> dict[str, str]:
        rows, _, _ = trace.build(reqs)
        return {r.req.id: r.status for r in rows}


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    return Run(tmp_path, monkeypatch)


@pytest.mark.req("HOME-1206")
def test_statuses_follow_the_evidence(run: Run) -> None:
    run.test("tests/unit/test_x.py::a", "HOME-101")
    run.test("tests/unit/test_x.py::b", "HOME-102")
    run.test("tests/unit/test_x.py::c", "HOME-102")
    run.pytest_results(a="passed", b="failed", c="passed")
    assert run.statuses(requirements("HOME-101", "HOME-102", "HOME-103")) == {
        "HOME-101": "passed",
        "HOME-102": "failed",
        "HOME-103": "uncovered",
    }


@pytest.mark.req("HOME-1206")
def test_a_claimed_test_that_did_not_run_fails_its_ids(run: Run) -> None:
    run.test("tests/unit/test_x.py::ran", "HOME-101")
    run.test("tests/unit/test_x.py::never_ran", "HOME-102")
    run.pytest_results(ran="passed")
    assert run.statuses(requirements("HOME-101", "HOME-102")) == {
        "HOME-101": "passed",
        "HOME-102": "failed",
    }


@pytest.mark.req("HOME-1206")
def test_a_result_file_from_another_run_proves_nothing(run: Run) -> None:
    run.test("tests/unit/test_x.py::a", "HOME-101")
    run.write("pytest", {"results": {"tests/unit/test_x.py::a": {"outcome": "passed"}}}, "old")
    rows, problems, _ = trace.build(requirements("HOME-101"))
    assert rows[0].status == "failed"
    assert "reports/pytest-unit.json is not from the current run" in problems


@pytest.mark.req("HOME-1206")
def test_without_reports_nothing_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "reports"  # never created: as after `rm -r reports`
    monkeypatch.setattr(trace, "REPORTS", empty)
    monkeypatch.setattr("xtask.loop.results.REPORTS", empty)
    rows, problems, inputs = trace.build(spec_extract.all_requirements())
    assert inputs == []
    assert not [r.req.id for r in rows if r.status == "passed"]
    assert any("run-id is missing" in p for p in problems)


@pytest.mark.req("HOME-1206")
def test_a_failing_test_on_a_waived_id_fails(run: Run) -> None:
    run.test("tests/unit/test_x.py::a", "PROD-001")
    run.pytest_results(a="failed")
    assert run.statuses(requirements("PROD-001", waived=("PROD-001",))) == {"PROD-001": "failed"}


@pytest.mark.req("HOME-1206")
def test_pact_consumer_evidence_alone_proves_only_the_contract(run: Run) -> None:
    run.claims.tests.append(
        Claim("pytest", "tests/pact/test_c.py::a", ("HOME-304", "HOME-1204"), "tests/pact:1")
    )
    run.write(
        "pact-consumer",
        {"results": {"tests/pact/test_c.py::a": {"outcome": "passed"}}},
    )
    assert run.statuses(requirements("HOME-304", "HOME-1204")) == {
        "HOME-304": "uncovered",
        "HOME-1204": "passed",
    }


@pytest.mark.req("HOME-1206", "HOME-1205")
def test_an_outline_counts_once_and_fails_if_any_row_fails(run: Run) -> None:
    run.claims.scenarios.append(Claim("scenario", "Bad input", ("HOME-205",), "features/v.f:3"))
    rows = [
        {"type": "scenario", "name": f"Bad input -- @1.{n} ", "location": f"features/v.f:{n}",
         "status": status, "steps": []}
        for n, status in ((7, "passed"), (8, "failed"), (9, "passed"))
    ]  # fmt: skip
    run.write("behave", {"features": [{"elements": rows}]})
    bdd_results = {
        f"tests/bdd/test_features.py::test_bad_input[{n}]": {
            "outcome": "passed",
            "scenario": ["features/v.f", "Bad input"],
        }
        for n in "ab"
    }
    run.write("pytest-bdd", {"results": bdd_results})
    table, _, _ = trace.build(requirements("HOME-205"))
    assert [(e.runner, e.outcome) for e in table[0].evidence] == [
        ("behave", "failed"),
        ("pytest-bdd", "passed"),
    ]
    assert table[0].status == "failed"


@pytest.mark.req("HOME-1206")
def test_undefined_behave_steps_are_their_own_status(run: Run) -> None:
    run.claims.scenarios.append(Claim("scenario", "s", ("HOME-101",), "features/x.feature:3"))
    scenario = {"type": "scenario", "name": "s", "location": "features/x.feature:3",
                "status": "undefined", "steps": [{"result": {"status": "undefined"}}]}  # fmt: skip
    run.write("behave", {"features": [{"elements": [scenario]}]})
    passed = {"outcome": "passed", "scenario": ["features/x.feature", "s"]}
    run.write("pytest-bdd", {"results": {"tests/bdd/test_features.py::test_s": passed}})
    assert run.statuses(requirements("HOME-101")) == {"HOME-101": "undefined"}


@pytest.mark.req("HOME-1206")
def test_pytest_bdd_outcomes_belong_to_their_feature_file(run: Run) -> None:
    """Two features with a scenario of the same name: a result of one is no evidence for
    the other."""
    run.claims.scenarios += [
        Claim("scenario", "Same name", ("HOME-101",), "features/a.feature:3"),
        Claim("scenario", "Same name", ("HOME-102",), "features/b.feature:3"),
    ]
    elements = [
        {"type": "scenario", "name": "Same name", "location": f"features/{f}.feature:3",
         "status": "passed", "steps": []}
        for f in "ab"
    ]  # fmt: skip
    run.write("behave", {"features": [{"elements": elements}]})
    only_a = {"outcome": "passed", "scenario": ["features/a.feature", "Same name"]}
    run.write("pytest-bdd", {"results": {"tests/bdd/test_features.py::test_same_name": only_a}})
    assert run.statuses(requirements("HOME-101", "HOME-102")) == {
        "HOME-101": "passed",
        "HOME-102": "failed",  # its pytest-bdd run is missing
    }


@pytest.mark.req("HOME-1206")
def test_a_claim_of_an_undefined_id_is_reported_where_it_is(run: Run) -> None:
    run.test("tests/unit/test_x.py::a", "HOME-101", "HOME-9999")
    run.pytest_results(a="passed")
    _, problems, _ = trace.build(requirements("HOME-101"))
    assert "unknown requirement ID HOME-9999 (claimed by pytest tests/unit/test_x.py:3)" in problems


@pytest.mark.req("HOME-1206")
def test_report_is_byte_stable(run: Run) -> None:
    run.test("tests/unit/test_x.py::b", "HOME-101")
    run.test("tests/unit/test_x.py::a", "HOME-101")
    run.pytest_results(a="passed", b="passed")
    first = trace.render_markdown(*trace.build(requirements("HOME-101")))
    again = trace.render_markdown(*trace.build(requirements("HOME-101")))
    assert first == again
    assert first.index("::a`") < first.index("::b`")
    assert "| passed | pytest |" in first


# --- claims found in sources ------------------------------------------------------------------


@pytest.fixture
def tests_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(claims, "ROOT", tmp_path)
    monkeypatch.setattr(claims, "PYTEST_SUITES", {"tests/unit": "pytest"})
    (tmp_path / "tests" / "unit").mkdir(parents=True)
    return tmp_path / "tests" / "unit"


@pytest.mark.req("HOME-1206")
def test_a_malformed_marker_id_fails_naming_the_file(tests_root: Path) -> None:
    (tests_root / "test_bad.py").write_text(
        'import pytest\n\n\n@pytest.mark.req("HOME-30")\ndef test_x() -> None:\n    pass\n'
    )
    errors: list[str] = []
    claims.pytest_claims(errors)
    assert errors == ["tests/unit/test_bad.py:4: malformed requirement ID 'HOME-30'"]


@pytest.mark.req("HOME-1206")
def test_a_module_level_marker_is_an_error(tests_root: Path) -> None:
    (tests_root / "test_module.py").write_text(
        'import pytest\n\npytestmark = pytest.mark.req("HOME-101")\n\n\ndef test_x() -> None:\n'
        "    pass\n"
    )
    errors: list[str] = []
    claims.pytest_claims(errors)
    assert len(errors) == 1 and errors[0].startswith("tests/unit/test_module.py:3: module-level")


# --- Pact, BDD runners, the loop --------------------------------------------------------------


@pytest.mark.req("HOME-1204", "FR-TH-002")
def test_pact_outcomes_come_from_the_verifiers_results_and_fail_closed() -> None:
    names = ["a cancel", "a stream", "a capabilities request"]
    results = {
        "errors": [{"interaction": "a stream", "mismatch": {"mismatches": [{"mismatch": "bad"}]}}],
        "interactionResults": [
            {"description": "a cancel", "result": "OK", "pending": False},
            {"description": "a stream", "result": {"error": "x"}},
        ],
    }
    assert pact.interaction_outcomes(names, results) == {
        "a cancel": "passed",
        "a stream": "failed: bad",
        "a capabilities request": "failed: the verifier reported no result for it",
    }
    aborted = pact.interaction_outcomes(names, None)
    assert all(outcome.startswith("failed") for outcome in aborted.values())


@pytest.mark.req("HOME-1205")
def test_both_runners_name_scenarios_alike() -> None:
    assert bdd._normal("Cancel mid-stream") == "cancel_midstream"
    assert bdd._normal("An invalid field is a 400 INVALID_PARAMS -- @1.3 ") == (
        "an_invalid_field_is_a_400_invalid_params"
    )
    assert bdd._normal("the_stream_carries_the_engines_tokens") == bdd._normal(
        "The stream carries the engine's tokens"
    )


@pytest.mark.req("HOME-1207", "HARN-301", "HARN-302")
def test_dev_loop_chains_the_steps_and_fails_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from xtask.loop import dev_loop  # noqa: PLC0415

    required = ["lint", "types", "regen", "spec-extract", "unit", "metrics-lint", "pact", "bdd"]
    assert [step for step in dev_loop.CHAIN if step in required] == required
    assert dev_loop.NEEDS["trace"] >= set(required) | {"conformance", "soak"}
    assert dev_loop.NEEDS["report-page"] == {"trace"}

    def fake_command(name: str) -> list[str]:
        # Each step leaves a mark; unit fails after the others had time to start.
        mark = f"open({str(tmp_path / name)!r}, 'w').close()"
        if name == "unit":
            return [sys.executable, "-c", f"import sys, time; {mark}; time.sleep(0.5); "
                    "print('broken on purpose'); sys.exit(1)"]  # fmt: skip
        if name == "soak":  # long: still running when unit fails, so it finishes
            return [sys.executable, "-c", f"import time; {mark}; time.sleep(1.0)"]
        return [sys.executable, "-c", mark]

    monkeypatch.setattr(dev_loop, "step_command", fake_command)
    monkeypatch.setattr(dev_loop, "REPORTS", tmp_path)
    monkeypatch.setattr(dev_loop, "LOGS", tmp_path / "logs")
    monkeypatch.setattr(dev_loop, "start_run", lambda: "run-x")
    monkeypatch.setattr(dev_loop, "EXPECTED_S", {"unit": 9.0, "soak": 8.0})
    monkeypatch.delenv(RUN_ID_ENV, raising=False)
    code = dev_loop.run(argparse.Namespace(keep_going=False, jobs=2, shard=None))
    assert code == 1
    ran = {p.name for p in tmp_path.iterdir() if p.is_file() and "." not in p.name}
    # unit and soak started together (the two longest); nothing new started after unit
    # failed, but trace and report-page always run.
    assert {"unit", "soak", "trace", "report-page"} <= ran
    assert "metrics-lint" not in ran
    out, err = capsys.readouterr()
    assert "broken on purpose" in out
    assert "critical path: " in out and "→ trace → report-page" in out
    assert "FAILED at step 'unit'" in err and "broken on purpose" in err
    junit = (tmp_path / "junit-dev-loop.xml").read_text()
    assert 'name="unit"' in junit and "<failure" in junit and 'name="cpu_seconds"' in junit


@pytest.mark.req("HOME-1206")
def test_trace_reports_what_changed_since_the_committed_report() -> None:
    from xtask.report.compliance_diff import compare, statuses  # noqa: PLC0415

    def report(rows: dict[str, str]) -> str:
        header = (
            "| ID | Level | Scope | Status | Proven by | Evidence |\n|---|---|---|---|---|---|\n"
        )
        return header + "".join(f"| {i} | MUST | in | {s} |  |  |\n" for i, s in rows.items())

    before = statuses(
        report(
            {
                "HOME-101": "failed",
                "HOME-102": "passed",
                "HOME-103": "passed",
                "ORCH-3008": "uncovered",
            }
        )
    )
    after = statuses(
        report(
            {
                "HOME-101": "passed",
                "HOME-102": "failed",
                "HOME-103": "uncovered",
                "OC-TEST-7001": "passed",
            }
        )
    )
    changes = compare(before, after)
    assert changes.newly_passed == ["HOME-101"]
    assert changes.newly_failed == ["HOME-102"]
    assert changes.newly_uncovered == ["HOME-103"]
    assert changes.added == ["OC-TEST-7001"] and changes.removed == ["ORCH-3008"]
    assert changes.lines()[0] == "newly passed (1): HOME-101"
    assert compare(after, after).lines() == ["no change"]
    assert compare(None, after).lines() == ["no committed report to compare with"]


@pytest.mark.req("HOME-1205", "FR-TH-001")
def test_undefined_steps_become_snippets_in_the_projects_own_form() -> None:
    import parse  # noqa: PLC0415

    from xtask.report import snippets  # noqa: PLC0415

    behave_json = [
        {
            "elements": [
                {"type": "background", "steps": [{"step_type": "given", "name": RUNNING}]},
                {
                    "type": "scenario",
                    "steps": [
                        {"step_type": "given", "name": RUNNING, "match": {"location": "x"}},
                        {"step_type": "when", "name": 'I frobnicate "a b" 3 times',
                         "location": "features/p.feature:5"},
                        {"step_type": "then", "name": "the pool has -2 {odd} replicas",
                         "location": "features/p.feature:6"},
                        {"step_type": "when", "name": 'I frobnicate "a b" 3 times',
                         "location": "features/p.feature:9"},
                        # Defined, but behave reports steps after an undefined one unmatched.
                        {"step_type": "when", "name": "I read the task's stream to the end",
                         "location": "features/p.feature:10"},
                    ]
                }
            ]
        }
    ]  # fmt: skip
    steps = snippets.undefined_steps(behave_json)
    assert snippets.is_defined("when", "I read the task's stream to the end")
    assert [(s.keyword, s.location) for s in steps] == [
        ("when", "features/p.feature:5"),
        ("then", "features/p.feature:6"),
    ]
    first, second = (snippets.snippet(s) for s in steps)
    assert first.splitlines()[:2] == [
        "@when('I frobnicate \"{text}\" {number:d} times')",
        "def i_frobnicate_times(world: World, text: str, number: int) -> None:",
    ]
    assert second.splitlines()[:2] == [
        '@then("the pool has {number:d} {{odd}} replicas")',
        "def the_pool_has_odd_replicas(world: World, number: int) -> None:",
    ]

    # Each snippet is valid Python that registers a pattern matching its own step text, with
    # typed fields, through decorators shaped like steps/library.py's.
    registered: dict[str, Any] = {}
    namespace: dict[str, Any] = {
        "World": object,
        "when": lambda pattern: lambda f: registered.setdefault(pattern, f),
        "then": lambda pattern: lambda f: registered.setdefault(pattern, f),
    }
    exec(compile(first + second, "<snippets>", "exec"), namespace)
    matched = {
        text: parse.parse(pattern, text)
        for text in ('I frobnicate "a b" 3 times', "the pool has -2 {odd} replicas")
        for pattern in registered
        if parse.parse(pattern, text)
    }
    assert matched['I frobnicate "a b" 3 times'].named == {"text": "a b", "number": 3}
    assert matched["the pool has -2 {odd} replicas"].named == {"number": -2}
    with pytest.raises(NotImplementedError, match="When I frobnicate"):
        registered['I frobnicate "{text}" {number:d} times'](None, text="a b", number=3)
    assert snippets.report([]) == []


@pytest.mark.req("HOME-1206")
def test_tags_above_examples_belong_to_the_outline_not_the_next_scenario(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(claims, "ROOT", tmp_path)
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "x.feature").write_text(
        "Feature: x\n\n  @HOME-101\n  Scenario Outline: first\n    Given <a>\n\n"
        "    @HOME-102\n    Examples:\n      | a |\n      | 1 |\n\n"
        "  Scenario: second\n    Given b\n"
    )
    errors: list[str] = []
    found = {c.key: c.ids for c in claims.feature_claims(errors)}
    assert errors == []
    assert found == {"first": ("HOME-101", "HOME-102"), "second": ()}


@pytest.mark.req("HOME-1206")
def test_a_step_run_on_its_own_is_a_run_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results, "REPORTS", tmp_path / "reports")
    monkeypatch.setenv(results.RUN_ID_ENV, "the-dev-loops-run")
    results.write_result(tmp_path / "reports" / "behave.json", {"features": []})
    monkeypatch.delenv(results.RUN_ID_ENV)  # later: one step, run by hand
    results.write_result(tmp_path / "reports" / "pytest-bdd.json", {"results": {}})
    own = results.recorded_run_id()
    assert own is not None and own != "the-dev-loops-run"
    document, _ = results.read_result(tmp_path / "reports" / "pytest-bdd.json", own)
    assert document is not None
    stale, why = results.read_result(tmp_path / "reports" / "behave.json", own)
    assert stale is None and why is not None and "not from the current run" in why
