"""The `bdd-runner` console script runs behave on exactly LLORCH_BDD_FEATURE_PATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BDD_RUNNER = Path(sys.executable).parent / "bdd-runner"


def bdd_runner(feature_path: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLORCH_BDD_FEATURE_PATH": feature_path}
    return subprocess.run(
        [str(BDD_RUNNER)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.req("HOME-1205", "FR-TH-001")
def test_bdd_runner_honours_the_feature_path() -> None:
    done = bdd_runner("features/security.feature")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 feature passed, 0 failed" in done.stdout
    assert "4 scenarios passed, 0 failed" in done.stdout
    assert "Feature: Bearer auth and correlation IDs" in done.stdout
    assert "Feature: Determinism by seed" not in done.stdout


def test_bdd_runner_refuses_a_missing_path() -> None:
    done = bdd_runner("features/nope.feature")
    assert done.returncode == 2
    assert "does not exist" in done.stderr
