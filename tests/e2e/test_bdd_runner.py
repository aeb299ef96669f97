"""The `bdd-runner` console script runs behave on exactly LLORCH_BDD_FEATURE_PATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BDD_RUNNER = Path(sys.executable).parent / "bdd-runner"


def bdd_runner(feature_path: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLORCH_BDD_FEATURE_PATH": feature_path}
    return subprocess.run(
        [str(BDD_RUNNER), *args],
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


@pytest.mark.req("HOME-1205", "FR-TH-001")
def test_bdd_runner_prints_undefined_steps_as_project_snippets(tmp_path: Path) -> None:
    # A feature beside a steps/ folder that loads the project's step library, as a spec
    # author's new feature would be run: one known step, two nobody wrote yet.
    (tmp_path / "steps").mkdir()
    bridge = ROOT / "steps" / "behave_bridge.py"
    (tmp_path / "steps" / "project_steps.py").write_text(
        f"import runpy\nrunpy.run_path({str(bridge)!r})\n"
    )
    feature = tmp_path / "new.feature"
    feature.write_text(
        "Feature: new\n\n  Scenario: a new one\n"
        "    Given a running orchestratord with a Ready llama.cpp pool\n"
        '    When I rename pool "default" to "big" 2 times\n'
        "    And I read the task's stream to the end\n"  # written already: not a snippet
        "    Then the pool list shows 1 pool\n"
    )
    done = bdd_runner(str(feature), "--dry-run")
    assert done.returncode == 1
    out = done.stdout
    assert "2 undefined step(s): add to steps/library.py" in out
    assert '@when(\'I rename pool "{text}" to "{text2}" {number:d} times\')' in out
    assert "def i_rename_pool_to_times(world: World, text: str, text2: str, number: int)" in out
    assert '@then("the pool list shows {number:d} pool")' in out
    assert "step_impl(context)" not in out and "a_running_orchestratord" not in out
    assert "i_read_the_tasks_stream" not in out and out.count("@when(") == 1
