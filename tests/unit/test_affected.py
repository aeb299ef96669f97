"""What a change affects, and a run of only that (HARN-201..203)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import coverage
import pytest

from tests.unit.test_flaky import CONFTEST
from xtask.loop import affected, coverage_map, dev_loop, reruns
from xtask.report import trace
from xtask.report.trace import Evidence
from xtask.spec import claims, spec_extract


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository standing in for the project's root."""
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@example.invalid")
    git(tmp_path, "config", "user.name", "t")
    (tmp_path / ".specs").mkdir()
    (tmp_path / ".specs" / "00_x.md").write_text(
        "| ID | Level | Scope | Clause |\n|---|---|---|---|\n"
        "| HOME-101 | MUST | in | A task is queued. |\n"
        "| HOME-102 | MUST | in | A task is   run. |\n"
    )
    (tmp_path / "mod.py").write_text("".join(f"x{i} = {i}\n" for i in range(1, 21)))
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "base")
    monkeypatch.setattr(affected, "ROOT", tmp_path)
    monkeypatch.setattr(spec_extract, "ROOT", tmp_path)
    return tmp_path


@pytest.mark.req("HARN-201")
def test_a_changed_clause_is_found_by_its_fingerprint_and_rewrapping_is_not(repo: Path) -> None:
    spec = repo / ".specs" / "00_x.md"
    spec.write_text(
        spec.read_text().replace("A task is   run.", "A task is run.")  # whitespace only
        .replace("A task is queued.", "A task is queued or refused.")
        + "| HOME-103 | SHOULD | in | New. |\n"
    )  # fmt: skip
    (repo / "untracked.py").write_text("y = 1\n")
    files = affected.changed_files("HEAD")
    assert files == [".specs/00_x.md", "untracked.py"]
    assert affected.changed_ids(files, "HEAD") == {
        "HOME-101": "HOME-101's clause changed (.specs/00_x.md)",
        "HOME-103": "HOME-103 is new in .specs/00_x.md",
    }


@pytest.mark.req("HARN-202")
def test_changed_lines_are_the_old_lines_an_edit_touches(repo: Path) -> None:
    module = repo / "mod.py"
    lines = module.read_text().splitlines(keepends=True)
    lines[4] = "x5 = 50\n"  # line 5 changed
    lines.insert(11, "inserted = True\n")  # inserted after old line 11
    module.write_text("".join(lines))
    assert affected.changed_lines("mod.py", "HEAD") == {5, 11, 12}
    (repo / "new.py").write_text("z = 1\n")
    assert affected.changed_lines("new.py", "HEAD") is None


def real_claimants(req_id: str) -> tuple[set[str], set[tuple[str, str]]]:
    found = claims.collect(affected.PACT_FILE)
    tests = {c.key for c in found.tests if req_id in c.ids and not c.key.startswith("tests/pact/")}
    scenarios = {(c.location.rsplit(":", 1)[0], c.key) for c in found.scenarios if req_id in c.ids}
    return tests, scenarios


@pytest.mark.req("HARN-201")
def test_a_changed_clause_selects_every_claimant_of_its_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(affected, "changed_files", lambda since: [".specs/00_home_profile.md"])
    monkeypatch.setattr(affected, "changed_ids", lambda files, since: {"HOME-203": "edited"})
    selection = affected.compute()
    tests, scenarios = real_claimants("HOME-203")
    assert tests or scenarios  # the ID is claimed in this repository
    assert set(selection.tests) == tests
    assert set(selection.scenarios) == scenarios
    assert all(r == ["edited"] for r in selection.tests.values())


@pytest.mark.req("HARN-201")
def test_a_feature_file_selects_its_scenarios_and_data_files_their_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    changed = ["features/cancel.feature", "ci/metrics.lint.json", "contracts/openapi/data.yaml"]
    monkeypatch.setattr(affected, "changed_files", lambda since: changed)
    monkeypatch.setattr(affected, "changed_ids", lambda files, since: {})
    selection = affected.compute()
    found = claims.collect(affected.PACT_FILE)
    cancel = {
        ("features/cancel.feature", c.key)
        for c in found.scenarios
        if c.location.startswith("features/cancel.feature:")
    }
    assert set(selection.scenarios) == cancel and cancel
    assert selection.tests == {}
    assert set(selection.steps) == {"metrics-lint", "regen", "conformance", "pact"}


def recorded_map(tmp_path: Path) -> dict[str, Any]:
    """A real coverage map: coverage.py measured a function under a test's context, and a
    server's import list."""
    source = Path(affected.ROOT) / "xtask" / "loop" / "shards.py"
    data_dir = tmp_path / "cov"
    data_dir.mkdir()
    cov = coverage.Coverage(data_file=str(data_dir / ".coverage.unit"), include=[str(source)])
    cov.start()
    cov.switch_context("tests/unit/test_loop_speed.py::test_shards|run")
    from xtask.loop import shards  # noqa: PLC0415

    shards.parse("1/2")
    cov.stop()
    cov.save()
    imports = data_dir / "imports.tests~e2e~test_live_llamacpp.py.ab12.json"
    imports.write_text(json.dumps({"files": ["orchestratord/app.py"]}))
    return coverage_map.build(data_dir, {}, "abc")


@pytest.mark.req("HARN-202")
def test_a_module_change_selects_the_tests_that_ran_its_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = recorded_map(tmp_path)
    assert "tests/unit/test_loop_speed.py::test_shards" in document["contexts"]
    text = Path(affected.ROOT, "xtask/loop/shards.py").read_text().splitlines()
    body = next(n for n, line in enumerate(text, 1) if "match = _SPEC.match" in line)
    hit = coverage_map.tests_for_lines(document, "xtask/loop/shards.py", {body})
    assert hit == {"tests/unit/test_loop_speed.py::test_shards"}
    assert coverage_map.tests_for_lines(document, "xtask/loop/shards.py", {9999}) == set()
    assert coverage_map.tests_for_lines(document, "orchestratord/app.py", {1}) == {
        "tests/e2e/test_live_llamacpp.py"
    }
    monkeypatch.setattr(affected, "changed_files", lambda since: ["xtask/loop/shards.py"])
    monkeypatch.setattr(affected, "changed_ids", lambda files, since: {})
    monkeypatch.setattr(affected, "changed_lines", lambda path, since: {body})
    monkeypatch.setattr(coverage_map, "read", lambda: document)
    selection = affected.compute()
    assert list(selection.tests) == ["tests/unit/test_loop_speed.py::test_shards"]
    assert (
        f"xtask/loop/shards.py lines {body} ran by it"
        in selection.tests["tests/unit/test_loop_speed.py::test_shards"]
    )
    monkeypatch.setattr(coverage_map, "read", lambda: None)
    blind = affected.compute()
    assert set(blind.tests) == {"tests/unit", "tests/e2e"}
    assert any("no coverage map" in note for note in blind.notes)


@pytest.mark.req("HARN-203")
def test_an_affected_run_marks_what_it_did_not_rerun(monkeypatch: pytest.MonkeyPatch) -> None:
    selection = affected.Selection()
    selection.add(selection.tests, "tests/unit/test_queue.py::test_a", "why")
    steps = [s.name for s in dev_loop.steps_for_affected(selection)]
    assert steps == ["lint", "types", "regen", "spec-extract", "unit", "trace", "report-page"]
    chosen = selection.as_json()
    ran = Evidence("pytest", "tests/unit/test_queue.py::test_a", "not run", "x:1")
    other = Evidence("pytest", "tests/unit/test_queue.py::test_b", "not run", "x:2")
    soak = Evidence("soak", "soak::probe", "not run", "xtask/checks/soak.py")
    assert trace.not_rerun(ran, chosen).outcome == "not run"  # selected, yet it did not run
    assert trace.not_rerun(other, chosen).outcome == "not re-run"
    assert trace.not_rerun(soak, chosen).outcome == "not re-run"
    row = trace.Row(
        spec_extract.Requirement("HOME-101", "MUST", "in", None, "c", "x:1"),
        [Evidence("pytest", "t", "passed"), trace.not_rerun(other, chosen)],
    )
    assert row.status == "not re-run"  # never passed by a run that did not re-run it


@pytest.mark.req("HARN-202")
def test_a_recording_run_learns_which_modules_a_real_server_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xtask.fakes.live_server import live_server  # noqa: PLC0415

    monkeypatch.setenv(coverage_map.COVERAGE_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/e2e/test_example.py::test_x (setup)")
    with live_server(residency="on-demand"):
        pass  # started, served its banner, stopped by SIGTERM (which uvicorn re-raises)
    (recorded,) = tmp_path.glob("imports.*.json")
    document = coverage_map.build(tmp_path, {}, "abc")
    hit = coverage_map.tests_for_lines(document, "orchestratord/residency/state.py", {1})
    assert hit == {"tests/e2e/test_example.py"}
    assert not any(f.startswith(".venv") for f in document["files"])
    assert recorded.name.startswith("imports.tests~e2e~test_example.py.")


@pytest.mark.req("HARN-203")
def test_an_affected_run_runs_only_the_selected_tests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unit step of an affected-only run: pytest collects the whole module, and only the
    test the selection names runs (the others are deselected, not passed)."""
    monkeypatch.setenv("LLORCH_RUN_ID", "run-affected")
    for env in ("LLORCH_SHARD", affected.AFFECTED_ENV):
        monkeypatch.delenv(env, raising=False)
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(CONFTEST)
    (suite / "test_two.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.req('HOME-101')\ndef test_chosen():\n    pass\n\n"
        "@pytest.mark.req('HOME-102')\ndef test_left_alone():\n    pass\n"
    )
    # Inside the suite: pytest's rootdir (and so the test ids) is then the same on both runs.
    report = suite / "out.json"
    assert reruns.run_pytest([str(suite)], report) == 0
    everything = sorted(json.loads(report.read_text())["results"])
    chosen = next(n for n in everything if n.endswith("::test_chosen"))
    selection = tmp_path / "affected.json"
    selection.write_text(json.dumps(
        {"affected": {"tests": {chosen: ["changed"]}, "scenarios": [], "steps": {}}}))  # fmt: skip
    monkeypatch.setenv(affected.AFFECTED_ENV, str(selection))
    assert reruns.run_pytest([str(suite)], report) == 0
    ran = json.loads(report.read_text())["results"]
    assert len(everything) == 2 and list(ran) == [chosen], ran


@pytest.mark.req("HARN-201")
def test_a_changed_id_selects_its_interactions_operations_and_generated_probes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The claimants that are not tests: a Pact interaction and a consumer test → the pact
    step, an OpenAPI operation → conformance, a generated probe that claimed the ID in the
    last recorded run → its step. An ID nobody claims is said to be uncovered."""
    found = claims.Claims(
        scenarios=[],
        tests=[claims.Claim("pytest", "tests/pact/test_consumer.py::test_x", ("HOME-203",), "p:1")],
        interactions=[claims.Claim("pact-interaction", "a task", ("HOME-204",), "pact:1")],
        openapi=[("HOME-205", "contracts/openapi/data.yaml:/v1/tasks")],
        errors=[],
    )
    monkeypatch.setattr(claims, "collect", lambda pact_file: found)
    recorded = {"HOME-206": [("soak", "soak::overload"), ("schemathesis", "POST /v1/tasks")]}
    monkeypatch.setattr(affected.history, "claimants", lambda req_id: recorded.get(req_id, []))
    ids = {i: f"{i} edited" for i in ("HOME-203", "HOME-204", "HOME-205", "HOME-206", "HOME-299")}
    monkeypatch.setattr(affected, "changed_files", lambda since: [".specs/00_home_profile.md"])
    monkeypatch.setattr(affected, "changed_ids", lambda files, since: ids)
    selection = affected.compute()
    assert selection.tests == {} and selection.scenarios == {}
    assert selection.steps == {
        "pact": ["HOME-203 edited", "HOME-204 edited"],
        "conformance": ["HOME-205 edited", "HOME-206 edited"],
        "soak": ["HOME-206 edited"],
    }
    assert any(n.startswith("HOME-299 edited: nothing claims it") for n in selection.notes)


@pytest.mark.req("HARN-201")
def test_a_test_module_selects_itself_and_the_pact_file_the_pact_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    changed = [
        "tests/unit/test_queue.py",
        "tests/bdd/conftest.py",
        "contracts/pacts/cli-consumer-orchestratord.json",
    ]
    monkeypatch.setattr(affected, "changed_files", lambda since: changed)
    monkeypatch.setattr(affected, "changed_ids", lambda files, since: {})
    selection = affected.compute()
    assert selection.tests == {"tests/unit/test_queue.py": ["tests/unit/test_queue.py changed"]}
    assert selection.steps == {
        "bdd": ["tests/bdd/conftest.py changed"],
        "pact": ["contracts/pacts/cli-consumer-orchestratord.json changed (the step reads it)"],
    }  # a Pact file is read by the pact step only, not by regen and conformance


@pytest.mark.req("HARN-203")
def test_an_affected_trace_writes_its_report_under_reports_and_leaves_the_committed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trace of an affected-only run, on the project's real specs and claims: one selected
    test of a MUST ran and failed. trace fails on it, writes its COMPLIANCE.md under
    reports/ (that ID failed, the others not re-run, none passed) and leaves the committed
    COMPLIANCE.md at the root alone, byte for byte."""
    from xtask.loop import results  # noqa: PLC0415

    by_file, _ = spec_extract.collect_specs()
    level = {r.id: r.level for reqs in by_file.values() for r in reqs}
    test = next(
        c for c in claims.collect(affected.PACT_FILE).tests
        if c.key.startswith("tests/unit/") and any(level.get(i) == "MUST" for i in c.ids)
    )  # fmt: skip
    root, reports = tmp_path, tmp_path / "reports"
    reports.mkdir()
    committed = root / "COMPLIANCE.md"
    committed.write_text(Path(affected.ROOT, "COMPLIANCE.md").read_text(encoding="utf-8"))
    before = committed.read_bytes()
    real = Path(affected.ROOT, "COMPLIANCE.md").stat().st_mtime_ns
    monkeypatch.setattr(trace, "ROOT", root)
    monkeypatch.setattr(trace, "REPORTS", reports)
    monkeypatch.setattr(results, "REPORTS", reports)
    monkeypatch.setenv("LLORCH_RUN_ID", "run-affected-trace")
    monkeypatch.setenv("LLORCH_HISTORY_DB", str(tmp_path / "history.sqlite"))
    (reports / "run-id").write_text("run-affected-trace\n")
    selection = affected.Selection()
    selection.add(selection.tests, test.key, "changed")
    affected.write_selection(selection, reports / "affected.json")
    results.write_result(
        reports / "pytest-unit.json",
        {"results": {test.key: {"outcome": "failed"}}, "rootdir": str(affected.ROOT)},
    )
    assert trace.run(argparse.Namespace(merge=None)) == 1  # a failed MUST still fails it
    assert committed.read_bytes() == before
    assert Path(affected.ROOT, "COMPLIANCE.md").stat().st_mtime_ns == real
    written = (reports / "COMPLIANCE.md").read_text(encoding="utf-8")
    failed_must = next(i for i in test.ids if level.get(i) == "MUST")
    assert re.search(rf"^\| {failed_must} \| MUST \| in \| failed \|", written, re.M)
    statuses = re.findall(r"^\| [A-Z]+-[0-9]+ \| \w+ \| \w+ \| ([a-z -]+) \|", written, re.M)
    assert "not re-run" in statuses and "passed" not in statuses
