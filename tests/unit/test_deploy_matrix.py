"""Which provider verified which pact, and can-i-deploy (HARN-501, HARN-502)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from xtask.checks import deploy_matrix, pact


def entry(pact_hash: str, provider: str, **interactions: str) -> dict[str, object]:
    return {"pact": pact_hash, "consumer": "c1", "consumer_commit": "abc", "provider": provider,
            "provider_commit": f"commit-of-{provider}", "interactions": interactions}  # fmt: skip


@pytest.mark.req("HARN-501")
def test_a_later_verification_replaces_its_row_and_the_file_is_byte_stable() -> None:
    rows = deploy_matrix.recorded([], entry("p1", "v1", a="failed: 500"))
    rows = deploy_matrix.recorded(rows, entry("p1", "v2", a="passed"))
    rows = deploy_matrix.recorded(rows, entry("p1", "v1", a="passed"))
    assert [(r["provider"], r["interactions"]["a"]) for r in rows] == [
        ("v2", "passed"), ("v1", "passed")
    ]  # fmt: skip
    text = deploy_matrix.render_matrix(rows)
    assert deploy_matrix.render_matrix(list(reversed(rows))) == text
    assert [r["provider"] for r in json.loads(text)["verifications"]] == ["v1", "v2"]
    # Verified again at a later commit with nothing changed: the row, its commits, the file.
    again = {**entry("p1", "v1", a="passed"), "provider_commit": "later", "consumer_commit": "x"}
    assert deploy_matrix.recorded(rows, again) == rows


@pytest.mark.req("HARN-501")
def test_source_hashes_see_an_uncommitted_change(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    before = deploy_matrix.source_digest(("pkg",), tmp_path)
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert deploy_matrix.source_digest(("pkg",), tmp_path) != before


@pytest.mark.req("HARN-502")
def test_can_i_deploy_says_yes_only_for_this_pact_verified_in_full_by_this_provider() -> None:
    rows = [entry("p1", "v1", a="passed", b="failed: status 500"), entry("p1", "v2", a="passed")]
    assert deploy_matrix.answer(rows, "p1", "v2", ["a"]) == (True, [])
    no, reasons = deploy_matrix.answer(rows, "p1", "v1", ["a", "b"])
    assert not no and reasons == ["b: failed: status 500"]
    no, reasons = deploy_matrix.answer(rows, "p1", "v2", ["a", "c"])
    assert not no and reasons == ["c: not verified"]
    no, reasons = deploy_matrix.answer(rows, "p1", "v3", ["a"])
    assert not no and "never verified by this provider" in reasons[0]
    assert "commit-of-v1" in reasons[0] and "commit-of-v2" in reasons[0]
    no, reasons = deploy_matrix.answer(rows, None, "v1", ["a"])
    assert not no and "no pact" in reasons[0]


@pytest.mark.req("HARN-502")
def test_the_command_exits_by_its_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pact_file = tmp_path / "pact.json"
    pact_file.write_text(json.dumps({"interactions": [{"description": "a"}]}))
    matrix = tmp_path / "verifications.json"
    monkeypatch.setattr(deploy_matrix, "PACT_FILE", pact_file)
    monkeypatch.setattr(deploy_matrix, "MATRIX", matrix)
    assert deploy_matrix.run(argparse.Namespace()) == 1
    assert "can-i-deploy: no" in capsys.readouterr().out
    deploy_matrix.record({"a": "passed"})
    assert deploy_matrix.run(argparse.Namespace()) == 0
    assert capsys.readouterr().out.rstrip().endswith("can-i-deploy: yes")


@pytest.mark.req("HARN-501")
def test_pact_telemetry_is_off_in_every_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    envs: list[dict[str, str]] = []

    def call(*args: object, env: dict[str, str], **kwargs: object) -> int:
        envs.append(env)
        return 1

    monkeypatch.setenv("PACT_DO_NOT_TRACK", "false")
    monkeypatch.setattr(pact.subprocess, "call", call)
    monkeypatch.setattr(pact, "PACT_FILE", tmp_path / "pact.json")  # consumer() removes it
    pact.consumer()  # the consumer tests run in a child process
    pact.verify()  # the verifier runs in this one
    assert envs[0]["PACT_DO_NOT_TRACK"] == "true"
    assert os.environ["PACT_DO_NOT_TRACK"] == "true"
