"""Result files of one run, stamped with that run's id so trace never reads stale evidence.

``python -m xtask dev-loop`` empties ``reports/``, writes a fresh id to ``reports/run-id`` and
passes it to every step in ``LLORCH_RUN_ID``. A step run on its own starts a run of its own
(a new id), never borrowing the last run's. Every result file carries the id; trace accepts only
files of the current run, and a missing or foreign file fails every claim it should prove.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
REPORTS = ROOT / "reports"
RUN_ID_ENV = "LLORCH_RUN_ID"


def run_id_file() -> Path:
    return REPORTS / "run-id"


def start_run() -> str:
    """A new run: empty ``reports/``, a fresh id, exported to child steps."""
    if REPORTS.exists():
        shutil.rmtree(REPORTS)
    REPORTS.mkdir()
    run_id = str(uuid.uuid4())
    run_id_file().write_text(run_id + "\n", encoding="utf-8")
    os.environ[RUN_ID_ENV] = run_id
    return run_id


def current_run_id() -> str:
    """The id results written now belong to: the dev loop's, or, for a step run on its own,
    a run of its own. Results an earlier run left in ``reports/`` are not its evidence, so
    a trace after it sees this step's results and counts every other runner as not run. The
    id goes to the environment, so the step's child processes share it."""
    from_env = os.environ.get(RUN_ID_ENV)
    if from_env:
        return from_env
    REPORTS.mkdir(exist_ok=True)
    run_id = str(uuid.uuid4())
    run_id_file().write_text(run_id + "\n", encoding="utf-8")
    os.environ[RUN_ID_ENV] = run_id
    return run_id


def recorded_run_id() -> str | None:
    """The id of the run ``reports/`` holds, if any."""
    path = run_id_file()
    return path.read_text(encoding="utf-8").strip() if path.exists() else None


def write_result(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"run_id": current_run_id(), **payload}
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def read_result(path: Path, run_id: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """(document, None) for a result of run ``run_id``; (None, why not) otherwise."""
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    if not path.exists():
        return None, f"{rel} is missing"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return None, f"{rel} is not JSON ({exc.msg})"
    if not isinstance(document, dict) or document.get("run_id") != run_id or run_id is None:
        return None, f"{rel} is not from the current run"
    return document, None
