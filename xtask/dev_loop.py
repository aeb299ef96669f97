"""``python -m xtask dev-loop``: the whole chain CI runs (HOME-1207).

lint → types → regen (drift) → spec-extract (drift) → unit (unit + e2e tests) → metrics-lint
→ pact (consumer + provider verify) → bdd (behave + pytest-bdd) → conformance (schemathesis
against both contracts, live) → soak (the short load and fault probes) → trace → report-page
(the HTML report checked against its JSON in headless Chromium).

Each step is its own ``python -m xtask <step>`` and runs as a child process, starting and
stopping whatever servers it needs. The loop stops at the first failing step; ``trace`` and
``report-page`` still run afterwards, so the report names the requirements a failure touched;
``--keep-going`` runs every step to show everything a change broke. It prints a table of steps
with durations and the failing step's reason, writes ``reports/junit-dev-loop.xml``, and exits
non-zero on any failure.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xtask.results import start_run

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports"
PY = sys.executable

# Steps that are plain tool invocations; the others are xtask subcommands of their own.
TOOL_STEPS: dict[str, tuple[str, list[str]]] = {
    "lint": ("ruff check and ruff format --check", [PY, "-m", "ruff", "check", "."]),
    "types": ("mypy --strict on the packages", [PY, "-m", "mypy"]),
    "unit": (
        "unit and end-to-end tests (live orchestratord + llama-server)",
        [
            PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit", "tests/e2e",
            "--req-report", "reports/pytest-unit.json", "--junitxml", "reports/junit-unit.xml",
        ],
    ),
}  # fmt: skip
CHAIN = [
    "lint", "types", "regen", "spec-extract", "unit", "metrics-lint", "pact", "bdd",
    "conformance", "soak", "trace", "report-page",
]  # fmt: skip
# Run even after a failure: they report on whatever the run produced.
ALWAYS = frozenset({"trace", "report-page"})


def step_command(name: str) -> list[str]:
    if name == "lint":
        return [PY, "-m", "xtask", "lint"]
    if name in TOOL_STEPS:
        return TOOL_STEPS[name][1]
    if name in ("regen", "spec-extract"):
        return [PY, "-m", "xtask", name, "--check"]
    if name == "soak":
        return [PY, "-m", "xtask", "soak", "--short"]
    return [PY, "-m", "xtask", name]


@dataclass
class Result:
    name: str
    seconds: float
    status: str  # ok | FAILED | skipped
    reason: str = ""


def run_step(name: str) -> Result:
    print(f"\n==> {name}: {' '.join('python' if c == PY else c for c in step_command(name))}")
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=25)
    with subprocess.Popen(
        step_command(name),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            tail.append(line.rstrip("\n"))
        code = proc.wait()
    seconds = time.monotonic() - started
    if code == 0:
        return Result(name, seconds, "ok")
    reason = "\n".join(line for line in tail if line.strip())[-2000:]
    return Result(name, seconds, "FAILED", f"exit {code}\n{reason}")


def write_junit(results: list[Result]) -> None:
    REPORTS.mkdir(exist_ok=True)
    failures = sum(1 for r in results if r.status == "FAILED")
    skipped = sum(1 for r in results if r.status == "skipped")
    suite = ET.Element(
        "testsuite",
        name="dev-loop",
        tests=str(len(results)),
        failures=str(failures),
        skipped=str(skipped),
        time=f"{sum(r.seconds for r in results):.1f}",
    )
    for r in results:
        case = ET.SubElement(suite, "testcase", classname="dev-loop", name=r.name)
        case.set("time", f"{r.seconds:.1f}")
        if r.status == "FAILED":
            ET.SubElement(case, "failure", message=r.reason.splitlines()[0]).text = r.reason
        elif r.status == "skipped":
            ET.SubElement(case, "skipped", message="an earlier step failed")
    ET.ElementTree(suite).write(REPORTS / "junit-dev-loop.xml", encoding="unicode")


def run(args: argparse.Namespace) -> int:
    run_id = start_run()  # reports/ emptied: trace can only ever see this run's results
    print(f"dev-loop: run {run_id}")
    results: list[Result] = []
    failed: Result | None = None
    for name in CHAIN:
        if failed is not None and name not in ALWAYS and not args.keep_going:
            results.append(Result(name, 0.0, "skipped"))
            continue
        result = run_step(name)
        results.append(result)
        if result.status == "FAILED" and failed is None:
            failed = result
    print("\nstep           seconds  result")
    for r in results:
        print(f"{r.name:<14} {r.seconds:>7.1f}  {r.status}")
    write_junit(results)
    passed = sum(1 for r in results if r.status == "ok")
    print(f"\ndev-loop: {passed} passed, {sum(1 for r in results if r.status == 'FAILED')} failed")
    if failed is not None:
        also = [r.name for r in results if r.status == "FAILED" and r is not failed]
        more = f" (later steps also failed: {', '.join(also)})" if also else ""
        print(f"\ndev-loop FAILED at step '{failed.name}'{more}: {failed.reason}", file=sys.stderr)
        return 1
    print("\ndev-loop passed")
    return 0


def lint(args: argparse.Namespace) -> int:
    check = subprocess.call([PY, "-m", "ruff", "check", "."], cwd=ROOT)
    fmt = subprocess.call([PY, "-m", "ruff", "format", "--check", "."], cwd=ROOT)
    return 1 if check or fmt else 0


def tool_step(name: str) -> Any:
    def run_tool(args: argparse.Namespace) -> int:
        REPORTS.mkdir(exist_ok=True)
        return subprocess.call(TOOL_STEPS[name][1], cwd=ROOT)

    return run_tool


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("dev-loop", help="the whole chain: " + " → ".join(CHAIN))
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="run every step even after a failure (still exits non-zero), to see all that broke",
    )
    parser.set_defaults(run=run)
    sub.add_parser("lint", help=TOOL_STEPS["lint"][0]).set_defaults(run=lint)
    for name in ("types", "unit"):
        sub.add_parser(name, help=TOOL_STEPS[name][0]).set_defaults(run=tool_step(name))
