"""The harness tools fail when they should: spec rows, unknown IDs, failing evidence."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from xtask import bdd, spec_extract, trace

pytestmark = pytest.mark.req("HOME-1206")


def write_spec(tmp_path: Path, rows: str) -> Path:
    path = tmp_path / "spec.md"
    path.write_text("| ID | Level | Scope | Clause |\n|---|---|---|---|\n" + rows)
    return path


@pytest.fixture
def in_tmp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(spec_extract, "ROOT", tmp_path)
    return tmp_path


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
    with pytest.raises(spec_extract.SpecError, match=error):
        spec_extract.parse_file(write_spec(in_tmp_root, row))


def test_waiver_reason_is_kept(in_tmp_root: Path) -> None:
    (req,) = spec_extract.parse_file(
        write_spec(in_tmp_root, "| PROD-001 | MUST | waived: one user | q |\n")
    )
    assert (req.scope, req.waiver) == ("waived", "one user")


def test_extraction_is_byte_stable_and_committed() -> None:
    first = spec_extract.outputs()
    assert first == spec_extract.outputs()
    for path, content in first.items():
        assert path.read_bytes() == content, f"{path} drifted: run `python -m xtask spec-extract`"


def test_every_openapi_and_feature_id_is_defined_in_the_specs() -> None:
    known = set(spec_extract.all_requirements())
    unknown = [(i, where) for i, where in trace.static_claims() if i not in known]
    assert unknown == []


def requirements(*ids: str) -> dict[str, spec_extract.Requirement]:
    return {i: spec_extract.Requirement(i, "MUST", "in", None, "x", "spec.md:1") for i in ids}


@pytest.fixture
def reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(trace, "BEHAVE_JSON", tmp_path / "behave.json")
    monkeypatch.setattr(trace, "PYTEST_REPORTS", (tmp_path / "pytest.json",))
    monkeypatch.setattr(trace, "static_claims", list)
    monkeypatch.setattr(trace, "ROOT", tmp_path)
    return tmp_path


def write_pytest(reports: Path, **entries: tuple[list[str], str]) -> None:
    data = {
        name: {"ids": ids, "outcome": outcome, "runner": "pytest"}
        for name, (ids, outcome) in entries.items()
    }
    (reports / "pytest.json").write_text(json.dumps(data))


def test_statuses_follow_the_evidence(reports: Path) -> None:
    write_pytest(
        reports, a=(["HOME-101"], "passed"), b=(["HOME-102"], "failed"), c=(["HOME-102"], "passed")
    )
    rows, unknown, _ = trace.build(requirements("HOME-101", "HOME-102", "HOME-103"))
    assert unknown == []
    assert {r.req.id: r.status for r in rows} == {
        "HOME-101": "passed",
        "HOME-102": "failed",
        "HOME-103": "uncovered",
    }


def test_a_marker_naming_an_undefined_id_is_reported(reports: Path) -> None:
    write_pytest(reports, a=(["HOME-101", "HOME-9999"], "passed"))
    _, unknown, _ = trace.build(requirements("HOME-101"))
    assert unknown == ["HOME-9999 (claimed by pytest a)"]


def test_deleting_a_clause_turns_its_tags_into_errors(reports: Path) -> None:
    write_pytest(reports, a=(["HOME-101", "HOME-102"], "passed"))
    _, unknown, _ = trace.build(requirements("HOME-101"))  # HOME-102's clause is gone
    assert unknown == ["HOME-102 (claimed by pytest a)"]


def test_undefined_behave_steps_are_their_own_status(reports: Path) -> None:
    scenario = {
        "type": "scenario",
        "name": "s",
        "location": "features/x.feature:3",
        "tags": ["HOME-101"],
        "status": "undefined",
        "steps": [{"result": {"status": "undefined"}}],
    }
    (reports / "behave.json").write_text(json.dumps([{"tags": [], "elements": [scenario]}]))
    rows, _, _ = trace.build(requirements("HOME-101"))
    assert rows[0].status == "undefined"


def test_report_is_byte_stable(reports: Path) -> None:
    write_pytest(reports, b=(["HOME-101"], "passed"), a=(["HOME-101"], "passed"))
    first = trace.render_markdown(*trace.build(requirements("HOME-101")))
    again = trace.render_markdown(*trace.build(requirements("HOME-101")))
    assert first == again
    assert first.index("`a`") < first.index("`b`")


def test_both_runners_name_scenarios_alike() -> None:
    assert bdd._normal("Cancel mid-stream") == "cancel_midstream"
    assert bdd._normal("An invalid field is a 400 INVALID_PARAMS -- @1.3 ") == (
        "an_invalid_field_is_a_400_invalid_params"
    )
    assert bdd._normal("the_stream_carries_the_engines_tokens") == bdd._normal(
        "The stream carries the engine's tokens"
    )


@pytest.mark.req("HOME-1207")
def test_dev_loop_chains_the_steps_in_order_and_fails_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from xtask import dev_loop  # noqa: PLC0415

    assert dev_loop.CHAIN == [
        "lint", "types", "regen", "spec-extract", "unit", "metrics-lint", "pact", "bdd", "trace",
    ]  # fmt: skip
    ran: list[str] = []

    def fake_step(name: str) -> dev_loop.Result:
        ran.append(name)
        if name == "unit":
            return dev_loop.Result(name, 1.0, "FAILED", "exit 1\nbroken on purpose")
        return dev_loop.Result(name, 0.5, "ok")

    monkeypatch.setattr(dev_loop, "run_step", fake_step)
    monkeypatch.setattr(dev_loop, "REPORTS", tmp_path)
    (tmp_path / "results.json").write_text("{}")
    code = dev_loop.run(argparse.Namespace(keep_going=False))
    assert code == 1
    assert ran == ["lint", "types", "regen", "spec-extract", "unit", "trace"]
    out, err = capsys.readouterr()
    assert "metrics-lint       0.0  skipped" in out
    assert "dev-loop: 5 passed, 1 failed" in out
    assert "FAILED at step 'unit'" in err and "broken on purpose" in err
    junit = (tmp_path / "junit-dev-loop.xml").read_text()
    assert 'name="unit"' in junit and "<failure" in junit
