"""Clause fingerprints and suspect claims (HARN-101..104): a changed clause un-proves its
claims until someone has read them and re-bound them."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from xtask.report import report_html, trace
from xtask.spec import fingerprints, spec_extract
from xtask.spec.spec_extract import Requirement, clause_text, fingerprint

KEYS = {"HOME-203": {"pytest tests/unit/test_q.py::test_drop", "scenario features/q.feature: Full"}}


def clause(text: str = "When the queue is full the oldest is dropped.", level: str = "MUST",
           scope: str = "in", waiver: str | None = None) -> Requirement:  # fmt: skip
    return Requirement("HOME-203", level, scope, waiver, text, ".specs/x.md:3")


@pytest.mark.req("HARN-101")
def test_a_fingerprint_covers_what_a_clause_says_not_how_it_is_wrapped() -> None:
    base = clause()
    rewrapped = clause("When the queue is full   the oldest\n is dropped.")
    assert fingerprint(base) == fingerprint(rewrapped)
    changed = [
        clause("When the queue is full the newest is dropped."),
        clause(level="SHOULD"),
        clause(scope="waived", waiver="not here"),
    ]
    assert len({fingerprint(base), *(fingerprint(c) for c in changed)}) == 4
    assert clause_text(base) == "MUST in | When the queue is full the oldest is dropped."


@pytest.mark.req("HARN-102")
def test_spec_extract_binds_new_claims_drops_vanished_ones_and_keeps_old_bindings() -> None:
    first = fingerprints.synced({}, {"HOME-203": clause()}, KEYS)
    assert set(first["HOME-203"]["claims"].values()) == {fingerprint(clause())}
    changed = clause("When the queue is full the newest is dropped.")
    added = {"HOME-203": KEYS["HOME-203"] | {"pytest tests/unit/test_q.py::test_new"}}
    second = fingerprints.synced(first, {"HOME-203": changed}, added)
    bound = second["HOME-203"]["claims"]
    assert bound["pytest tests/unit/test_q.py::test_new"] == fingerprint(changed)  # new: as is
    assert bound["pytest tests/unit/test_q.py::test_drop"] == fingerprint(clause())  # kept
    assert set(second["HOME-203"]["clauses"]) == {fingerprint(clause()), fingerprint(changed)}
    gone = fingerprints.synced(second, {"HOME-203": changed}, {"HOME-203": set()})
    assert gone == {"HOME-203": {"clauses": {}, "claims": {}}}
    text = fingerprints.render_lock(second)
    path = Path(__file__).parent / "unused"
    assert (
        fingerprints.render_lock(fingerprints.synced(second, {"HOME-203": changed}, added)) == text
    )
    assert text.index("pytest tests/unit/test_q.py::test_drop") < text.index("scenario features")
    assert not path.exists()


@pytest.mark.req("HARN-103", "HARN-104")
def test_a_changed_clause_makes_its_old_claims_suspect_until_reviewed() -> None:
    lock = fingerprints.synced({}, {"HOME-203": clause()}, KEYS)
    changed = clause("When the queue is full the newest is dropped.")
    found = fingerprints.suspects(lock, {"HOME-203": changed})
    assert {s.claim for s in found} == KEYS["HOME-203"]
    assert found[0].reviewed_text == clause_text(clause())
    assert found[0].current_text == clause_text(changed)
    after, said = fingerprints.reviewed(lock, {"HOME-203": changed}, ["HOME-203"])
    assert fingerprints.suspects(after, {"HOME-203": changed}) == []
    assert len(said) == 2 and all(f"-> {fingerprint(changed)}" in line for line in said)
    again, said_again = fingerprints.reviewed(after, {"HOME-203": changed}, ["HOME-203"])
    assert again == after and "already bound" in said_again[0]


@pytest.mark.req("HARN-103")
def test_a_suspect_must_fails_trace_and_a_suspect_should_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = fingerprints.synced({}, {"HOME-203": clause()}, KEYS)
    changed = clause("When the queue is full the newest is dropped.")
    suspect = fingerprints.suspects(lock, {"HOME-203": changed})
    evidence = [trace.Evidence("pytest", "tests/unit/test_q.py::test_drop", "passed", "x:1")]
    must = trace.Row(changed, evidence, suspect)
    should = trace.Row(dataclasses.replace(changed, id="HOME-204", level="SHOULD"), evidence,
                       [dataclasses.replace(s, req_id="HOME-204") for s in suspect])  # fmt: skip
    assert must.status == should.status == "suspect"
    failing = trace.Row(changed, [dataclasses.replace(evidence[0], outcome="failed")], suspect)
    assert failing.status == "failed"  # a failure still shows as a failure
    markdown = trace.render_markdown([must, should], [], [])
    assert "| suspect | 2 |" in markdown and "the newest is dropped" in markdown
    page = report_html.render_html([must], [], None, root=tmp_path, page_dir=tmp_path)
    assert 'data-status="suspect"' in page and 'id="count-suspect"' in page
    assert "<del>oldest</del>" in page and "<ins>newest</ins>" in page
    failing, notes = trace.gate([must, should], {})
    assert len(failing) == 1 and failing[0].startswith("HOME-203 suspect: 2 claims")
    assert "python -m xtask review HOME-203" in failing[0]
    assert len(notes) == 1 and notes[0].startswith("HOME-204 suspect") and "SHOULD" in notes[0]


@pytest.mark.req("HARN-104")
def test_review_re_binds_what_it_is_told_and_says_what_is_still_suspect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lock_path = tmp_path / "claims.lock"
    keys = {**KEYS, "HOME-204": {"pytest tests/unit/test_q.py::test_other"}}
    other = dataclasses.replace(clause(), id="HOME-204")
    lock_path.write_text(fingerprints.render_lock(
        fingerprints.synced({}, {"HOME-203": clause(), "HOME-204": other}, keys)))  # fmt: skip
    changed = {"HOME-203": clause("Changed."), "HOME-204": dataclasses.replace(other, text="New.")}
    monkeypatch.setattr(fingerprints, "LOCK", lock_path)
    monkeypatch.setattr(fingerprints, "current_requirements", lambda: changed)
    monkeypatch.setattr(fingerprints, "claim_keys", lambda: keys)
    assert fingerprints.run_review(argparse.Namespace(ids=["HOME-203"])) == 0
    out = capsys.readouterr().out
    assert "review: HOME-203: pytest tests/unit/test_q.py::test_drop:" in out
    assert "still suspect: HOME-204" in out
    left = fingerprints.suspects(fingerprints.read_lock(lock_path), changed)
    assert {s.req_id for s in left} == {"HOME-204"}


@pytest.mark.req("HARN-102")
def test_the_committed_lock_is_in_step_with_the_sources() -> None:
    requirements = fingerprints.current_requirements()
    assert fingerprints.sync_lock(requirements, check=True) == []


@pytest.mark.req("HARN-102")
def test_spec_extract_check_fails_on_a_lock_out_of_step_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    committed = fingerprints.LOCK.read_text(encoding="utf-8")
    stale = tmp_path / "requirements" / "claims.lock"
    stale.parent.mkdir()
    lines = committed.splitlines(keepends=True)
    claim = next(i for i, line in enumerate(lines) if line.lstrip().startswith("pytest "))
    stale.write_text("".join(lines[:claim] + lines[claim + 1 :]), encoding="utf-8")  # one lost
    monkeypatch.setattr(fingerprints, "LOCK", stale)
    before = stale.read_text(encoding="utf-8")
    assert spec_extract.run(argparse.Namespace(check=True)) == 1
    assert f"drift: {stale} is out of date" in capsys.readouterr().out
    assert stale.read_text(encoding="utf-8") == before  # --check writes nothing
    stale.write_text(committed, encoding="utf-8")
    assert spec_extract.run(argparse.Namespace(check=True)) == 0
