"""BDD in both runners over the same ``features/`` and ``steps/``.

``bdd-runner`` (console script) runs behave on ``LLORCH_BDD_FEATURE_PATH`` (a file or folder;
default ``features/``). ``python -m xtask bdd`` runs behave and pytest-bdd, writes JSON and
JUnit reports under ``reports/``, and fails unless both runners executed the same scenarios
and all passed. Both report undefined steps as snippets in the project's own form
(``xtask/snippets.py``), to paste into ``steps/library.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from xtask import snippets
from xtask.results import write_result

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports"
FEATURE_ENV = "LLORCH_BDD_FEATURE_PATH"


def feature_path() -> str:
    return os.environ.get(FEATURE_ENV) or "features"


def behave_command(*extra: str) -> list[str]:
    # behave pairs --outfile with formats in order; the pretty console format comes last so
    # it keeps stdout. behave's own snippets (``context``-style) are replaced by ours.
    return [
        sys.executable, "-m", "behave", "--no-capture", "--no-source", "--no-snippets",
        *extra, "--format", "pretty", feature_path(),
    ]  # fmt: skip


def print_snippets(behave_json: Path) -> int:
    """Print project-form snippets for the undefined steps in a behave JSON report."""
    if not behave_json.exists():
        return 0
    features = json.loads(behave_json.read_text(encoding="utf-8") or "[]")
    lines = snippets.report(features)
    if lines:
        print("\n" + "\n".join(lines))
    return len(snippets.undefined_steps(features))


def main(argv: list[str] | None = None) -> int:
    """``bdd-runner [behave args]``: behave on LLORCH_BDD_FEATURE_PATH (default features/)."""
    args = list(sys.argv[1:] if argv is None else argv)
    target = feature_path()
    if not (ROOT / target).exists() and not Path(target).exists():
        print(f"bdd-runner: {FEATURE_ENV}={target} does not exist", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bdd-runner-") as scratch:
        behave_json = Path(scratch) / "behave.json"
        code = subprocess.call(
            behave_command("--format", "json", "--outfile", str(behave_json), *args), cwd=ROOT
        )
        undefined = print_snippets(behave_json)
    return code or (1 if undefined else 0)


def _normal(name: str) -> str:
    name = re.sub(r" -- @.*$", "", name)  # behave's outline-row suffix
    return re.sub(r"\s+", "_", re.sub(r"[^a-z0-9\s_]", "", name.lower().replace("_", " "))).strip(
        "_"
    )


def behave_scenarios(path: Path) -> Counter[str]:
    found: Counter[str] = Counter()
    for feature in json.loads(path.read_text(encoding="utf-8"))["features"]:
        for element in feature.get("elements", []):
            if element.get("type") == "scenario" and element.get("status") != "skipped":
                found[_normal(element["name"])] += 1
    return found


def pytest_bdd_scenarios(path: Path) -> Counter[str]:
    found: Counter[str] = Counter()
    for nodeid, entry in json.loads(path.read_text(encoding="utf-8"))["results"].items():
        if entry["outcome"] == "skipped":
            continue
        name = nodeid.split("::", 1)[1].split("[", 1)[0].removeprefix("test_")
        found[_normal(name)] += 1
    return found


def run_both() -> int:
    REPORTS.mkdir(exist_ok=True)
    raw_json = REPORTS / "behave-raw.json"
    raw_json.unlink(missing_ok=True)
    behave_code = subprocess.call(
        behave_command(
            "--format", "json", "--outfile", str(raw_json),
            "--junit", "--junit-directory", str(REPORTS / "behave-junit"),
        ),
        cwd=ROOT,
    )  # fmt: skip
    behave_json = REPORTS / "behave.json"
    if raw_json.exists():
        features = json.loads(raw_json.read_text(encoding="utf-8") or "[]")
        write_result(behave_json, {"features": features})
    pytest_json = REPORTS / "pytest-bdd.json"
    pytest_code = subprocess.call(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/bdd",
            "--req-report", str(pytest_json), "--junitxml", str(REPORTS / "junit-pytest-bdd.xml"),
        ],
        cwd=ROOT,
    )  # fmt: skip
    problems: list[str] = []
    if behave_code != 0:
        problems.append(f"behave failed (exit {behave_code})")
    if pytest_code != 0:
        problems.append(f"pytest-bdd failed (exit {pytest_code})")
    if behave_json.exists() and pytest_json.exists():
        by_behave, by_pytest = behave_scenarios(behave_json), pytest_bdd_scenarios(pytest_json)
        if by_behave != by_pytest:
            only_b = sorted((by_behave - by_pytest).elements())
            only_p = sorted((by_pytest - by_behave).elements())
            problems.append(f"runners disagree: only behave {only_b}, only pytest-bdd {only_p}")
        else:
            total = sum(by_behave.values())
            print(f"bdd: behave and pytest-bdd ran the same {total} scenarios")
    undefined = print_snippets(raw_json)
    if undefined:
        problems.append(f"{undefined} undefined step(s): snippets above")
    for problem in problems:
        print(f"bdd: {problem}", file=sys.stderr)
    return 1 if problems else 0


def run(args: argparse.Namespace) -> int:
    return run_both()


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("bdd", help="features/ through behave and pytest-bdd")
    parser.set_defaults(run=run)


if __name__ == "__main__":
    sys.exit(main())
