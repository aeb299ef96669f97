"""BDD in both runners over the same ``features/`` and ``steps/``.

``bdd-runner`` (console script) runs behave on ``LLORCH_BDD_FEATURE_PATH`` (a file or folder;
default ``features/``). ``python -m xtask bdd`` runs behave and pytest-bdd, writes JSON and
JUnit reports under ``reports/``, and fails unless both runners executed the same scenarios
and all passed. Both report undefined steps as snippets in the project's own form
(``xtask/report/snippets.py``), to paste into ``steps/library.py``.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from xtask.loop import affected, coverage_map, reruns, shards
from xtask.loop.results import write_result
from xtask.report import cucumber_json, snippets
from xtask.spec import claims

ROOT = Path(__file__).resolve().parents[2]
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


def shard_features() -> list[str] | None:
    """The feature files of this shard (``LLORCH_SHARD``), or None for all of them."""
    shard = shards.current()
    if shard is None:
        return None
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / feature_path()).rglob("*.feature"))
    return [f for f in files if shards.owns(f, shard)]


def failed_scenarios(features: list[dict[str, Any]]) -> list[str]:
    """Locations (``file:line``) of the scenarios behave failed: undefined steps excluded."""
    found = []
    for feature in features:
        for element in feature.get("elements", []):
            steps = [s.get("result", {}).get("status") for s in element.get("steps", [])]
            if element.get("status") in ("failed", "error") and "undefined" not in steps:
                found.append(element["location"])
    return found


def fold_behave_rerun(features: list[dict[str, Any]], again: list[dict[str, Any]]) -> None:
    """Scenarios that failed and passed on their re-run become ``flaky`` (HARN-401)."""
    second = {
        e["location"]: e.get("status")
        for f in again
        for e in f.get("elements", [])
        if e.get("type") == "scenario"
    }
    for feature in features:
        for element in feature.get("elements", []):
            if element.get("location") in second and element.get("status") in ("failed", "error"):
                element["first"] = element["status"]
                element["rerun"] = second[element["location"]]
                if element["rerun"] == "passed":
                    element["status"] = "flaky"


def run_behave(paths: list[str], raw_json: Path, log: Path, junit: bool) -> subprocess.Popen[str]:
    extra = ["--format", "json", "--outfile", str(raw_json)]
    if junit:
        extra += ["--junit", "--junit-directory", str(REPORTS / "behave-junit")]
    out = log.open("w", encoding="utf-8")
    command = behave_command(*extra)[:-1] + paths
    return subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)


def behave_with_rerun(paths: list[str]) -> tuple[int, Path]:
    """behave on ``paths``, its failed scenarios once more in a fresh process."""
    raw_json = REPORTS / "behave-raw.json"
    raw_json.unlink(missing_ok=True)
    log = REPORTS / "logs" / "behave.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    code = run_behave(paths, raw_json, log, junit=True).wait()
    sys.stdout.write(log.read_text(encoding="utf-8", errors="replace"))
    features = json.loads(raw_json.read_text(encoding="utf-8") or "[]") if raw_json.exists() else []
    failed = failed_scenarios(features)
    if code != 0 and failed and len(failed) <= reruns.RERUN_LIMIT:
        print(f"\nreruns: behave: {len(failed)} failed scenario(s) once more: {failed}")
        again_json = REPORTS / "behave-rerun-raw.json"
        again_log = REPORTS / "logs" / "behave-rerun.log"
        again = run_behave(failed, again_json, again_log, junit=False).wait()
        sys.stdout.write(again_log.read_text(encoding="utf-8", errors="replace"))
        second = json.loads(again_json.read_text(encoding="utf-8") or "[]")
        fold_behave_rerun(features, second)
        still = [f for f in failed_scenarios(features)]
        for feature in features:
            for element in feature.get("elements", []):
                if element.get("status") == "flaky":
                    print(f"reruns: FLAKY behave {element['location']}: failed, then passed")
        code = 0 if again == 0 and not still else 1
    write_result(REPORTS / "behave.json", {"features": features})
    cucumber = json.dumps(cucumber_json.from_behave(features), indent=1)
    (REPORTS / "cucumber-behave.json").write_text(cucumber + "\n", encoding="utf-8")
    return code, raw_json


def run_both() -> int:
    REPORTS.mkdir(exist_ok=True)
    own = shard_features()
    paths = [feature_path()] if own is None else own
    chosen = affected.chosen()
    if chosen is not None:  # an affected-only run: the chosen scenarios, by file:line
        wanted = {(f, n) for f, n in chosen["scenarios"]}
        found = claims.feature_claims([])
        paths = [c.location for c in found if (c.location.rsplit(":", 1)[0], c.key) in wanted]
    pytest_json = REPORTS / "pytest-bdd.json"
    if not paths:  # a shard that owns no feature file, or nothing affected
        write_result(REPORTS / "behave.json", {"features": []})
        write_result(pytest_json, {"results": {}})
        print("bdd: no feature files in this shard")
        return 0
    # The two runners start their own servers: they run side by side.
    with ThreadPoolExecutor(max_workers=1) as pool:
        behave_run = pool.submit(behave_with_rerun, paths)
        pytest_code = reruns.run_pytest(
            ["tests/bdd"],
            pytest_json,
            REPORTS / "junit-pytest-bdd.xml",
            extra=[
                f"--cucumberjson={REPORTS / 'cucumber-pytest-bdd.json'}",
                *coverage_map.pytest_args("bdd"),
            ],
        )
        behave_code, raw_json = behave_run.result()
    behave_json = REPORTS / "behave.json"
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
