"""A failure gets one more try in a fresh process; pass-on-rerun is ``flaky`` (HARN-401).

``run_pytest`` runs pytest (in parallel processes when asked), then re-runs only the tests
that failed, once, in a new pytest process, and folds the second outcome into the result
file: a test that failed and then passed is ``flaky`` with both outcomes kept (``first``,
``rerun``, and the first failure's ``detail``); one that failed twice stays ``failed``. The
step itself passes when every failure was flaky: whether a flaky result may pass the loop is
decided by trace, against the quarantine file (``xtask/spec/quarantine.py``). Undefined steps are
not re-run (they cannot pass on a second try), and neither is a run with more failures than
``RERUN_LIMIT``: that is a broken change, not a flaky test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xtask.loop.results import write_result

ROOT = Path(__file__).resolve().parents[2]
RERUN_LIMIT = 12
WORKERS_ENV = "LLORCH_TEST_WORKERS"


def workers() -> str:
    """pytest-xdist processes for the test steps: the CPU count unless set."""
    return os.environ.get(WORKERS_ENV) or str(os.cpu_count() or 1)


def pytest_command(
    paths: list[str], report: Path, junit: Path | None, parallel: bool, extra: Sequence[str] = ()
) -> list[str]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths, *extra]
    command += ["--req-report", str(report)]
    if junit is not None:
        command += ["--junitxml", str(junit)]
    if parallel and workers() not in ("0", "1"):
        # loadfile: a module's tests share its live servers, so they go to one process.
        command += ["-n", workers(), "--dist", "loadfile"]
    return command


def _load(path: Path) -> tuple[dict[str, Any], Path]:
    """(results, the folder the test ids are relative to)."""
    if not path.exists():
        return {}, ROOT
    document = json.loads(path.read_text(encoding="utf-8"))
    return document.get("results", {}), Path(document.get("rootdir") or ROOT)


def fold_rerun(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """``first``'s results with each re-run test's second outcome folded in."""
    merged = {nodeid: dict(entry) for nodeid, entry in first.items()}
    for nodeid, again in second.items():
        entry = merged.get(nodeid)
        if entry is None or entry.get("outcome") != "failed":
            continue
        entry["first"] = "failed"
        entry["rerun"] = again.get("outcome", "not run")
        if entry["rerun"] == "passed":
            entry["outcome"] = "flaky"
    return merged


def failed_tests(results: dict[str, Any]) -> list[str]:
    return sorted(n for n, e in results.items() if e.get("outcome") == "failed")


def run_pytest(
    paths: list[str],
    report: Path,
    junit: Path | None = None,
    *,
    parallel: bool = False,
    extra: Sequence[str] = (),
) -> int:
    """Exit status of the step: 0 when every test passed or was flaky. ``extra``: more
    pytest arguments for the first run (coverage, in a recording run)."""
    code = subprocess.call(pytest_command(paths, report, junit, parallel, extra), cwd=ROOT)
    first, rootdir = _load(report)
    failed = failed_tests(first)
    if code == 0 or not failed:
        return code
    if len(failed) > RERUN_LIMIT:
        print(f"reruns: {len(failed)} failures (more than {RERUN_LIMIT}): not re-run")
        return code
    print(f"\nreruns: {len(failed)} failed test(s) once more, in a fresh process:")
    for nodeid in failed:
        print(f"  {nodeid}")
    again_path = report.with_name(report.stem + "-rerun.json")
    absolute = [str(rootdir / nodeid) for nodeid in failed]  # file::name: the file resolves
    again_code = subprocess.call(pytest_command(absolute, again_path, None, False), cwd=ROOT)
    second = {nodeid: entry for nodeid, entry in _load(again_path)[0].items()}
    merged = fold_rerun(first, second)
    write_result(report, {"results": merged, "rootdir": str(rootdir)})
    flaky = sorted(n for n, e in merged.items() if e["outcome"] == "flaky")
    for nodeid in flaky:
        print(f"reruns: FLAKY {nodeid}: failed, then passed ({merged[nodeid].get('detail', '')})")
    still = failed_tests(merged)
    for nodeid in still:
        print(f"reruns: {nodeid} failed twice")
    return 0 if again_code == 0 and not still else 1
