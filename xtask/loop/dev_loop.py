"""``python -m xtask dev-loop``: the whole chain CI runs (HOME-1207, HARN-301..304).

lint, types, regen (drift), spec-extract (drift), unit (unit + e2e tests in parallel
processes), metrics-lint, pact (consumer + provider verify), bdd (behave + pytest-bdd),
conformance (schemathesis against both contracts, live) and soak (the short load and fault
probes) need nothing from each other: they run at once, up to ``--jobs`` at a time, longest
first (``xtask/loop/scheduler.py``). trace runs after all of them and report-page (the HTML report
checked against its JSON in headless Chromium) after trace.

Each step is its own child process, starting and stopping whatever servers it needs on its
own ports and state directories. After the first failure no new step starts; trace and
report-page still run, so the report names the requirements a failure touched;
``--keep-going`` runs every step to show everything a change broke. The step table gives
wall and CPU seconds per step and the critical path; ``reports/junit-dev-loop.xml`` has the
same. ``--shard I/N`` runs one runner's deterministic share (``xtask/loop/shards.py``) and leaves
``reports/shard.json`` for ``python -m xtask trace --merge``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from xtask.checks.deploy_matrix import commit
from xtask.fakes.live_server import SHARED_CPU_ENV
from xtask.loop import affected, bytecode, coverage_map, machine, reruns, shards
from xtask.loop.results import start_run, write_result
from xtask.loop.scheduler import Result, Step, critical_path, run_graph
from xtask.loop.under_load import Load, busy_processes

ROOT = Path(__file__).resolve().parents[2]
REPORTS = ROOT / "reports"
LOGS = REPORTS / "logs"
PY = sys.executable

# Steps that are plain tool invocations; the others are xtask subcommands of their own.
TOOL_STEPS: dict[str, tuple[str, list[str]]] = {
    "lint": ("ruff check and ruff format --check", [PY, "-m", "ruff", "check", "."]),
    "types": ("mypy --strict on the packages", [PY, "-m", "mypy"]),
}
CHAIN = [
    "lint", "types", "regen", "spec-extract", "unit", "metrics-lint", "pact", "bdd",
    "conformance", "soak", "trace", "report-page",
]  # fmt: skip
# Run even after a failure: they report on whatever the run produced.
ALWAYS = frozenset({"trace", "report-page"})
NEEDS = {
    "trace": frozenset(CHAIN[: CHAIN.index("trace")]),
    "report-page": frozenset({"trace"}),
}
# Seconds each step took lately (2 cores): the longest start first.
EXPECTED_S = {"unit": 110.0, "bdd": 25.0, "conformance": 16.0, "soak": 13.0, "types": 9.0}
# Split by the tests' own files on every shard; the other steps run whole on one shard.
SPLIT = frozenset({"unit", "bdd"})


def step_command(name: str) -> list[str]:
    if name in TOOL_STEPS and name != "lint":
        return TOOL_STEPS[name][1]
    if name in ("regen", "spec-extract"):
        return [PY, "-m", "xtask", name, "--check"]
    if name == "soak":
        return [PY, "-m", "xtask", "soak", "--short"]
    return [PY, "-m", "xtask", name]


def steps_for(shard: tuple[int, int] | None) -> list[Step]:
    """The steps this run runs: all of them, or one shard's share (trace merges later)."""
    if shard is None:
        names = CHAIN
    else:
        index, count = shard
        own = [n for n in CHAIN if n not in ALWAYS]
        names = [
            n for pos, n in enumerate(own) if n in SPLIT or shards.step_owner(pos, count) == index
        ]
    return [
        Step(
            name,
            step_command(name),
            NEEDS.get(name, frozenset()) & set(names),
            EXPECTED_S.get(name, 1.0),
        )
        for name in names
    ]


STATIC = ("lint", "types", "regen", "spec-extract")


def steps_for_affected(selection: affected.Selection) -> list[Step]:
    """The cheap static steps, the test steps with something selected, the steps the change
    reaches, then trace and report-page (HARN-203)."""
    wanted = set(STATIC) | set(selection.steps) | {"trace", "report-page"}
    if selection.tests:
        wanted.add("unit")
    if selection.scenarios:
        wanted.add("bdd")
    names = [n for n in CHAIN if n in wanted]
    return [
        Step(n, step_command(n), NEEDS.get(n, frozenset()) & set(names), EXPECTED_S.get(n, 1.0))
        for n in names
    ]


def with_coverage_map(steps: list[Step]) -> list[Step]:
    """The full run's steps plus ``coverage-map`` (after the test steps, before trace)."""
    names = {s.name for s in steps}
    record = Step(
        "coverage-map",
        [PY, "-m", "xtask", "coverage-map"],
        frozenset({"unit", "bdd"}) & names,
    )
    traced = [
        Step(s.name, s.command, s.needs | {"coverage-map"}, s.expected_s)
        if s.name == "trace"
        else s
        for s in steps
    ]
    return [*traced[:-2], record, *traced[-2:]]


def run_step(name: str) -> Result:
    """One step alone, in the foreground (``xtask`` subcommands call this)."""
    return run_graph([Step(name, step_command(name))], cwd=ROOT, log_dir=LOGS, jobs=1)[0]


def print_finished(result: Result) -> None:
    if result.log is not None and result.log.exists():
        sys.stdout.write(result.log.read_text(encoding="utf-8", errors="replace"))
    cpu = f", {result.cpu_seconds:.1f} s CPU" if result.status != "skipped" else ""
    print(f"<== {result.name}: {result.status} in {result.seconds:.1f} s{cpu}\n", flush=True)


def write_junit(
    results: list[Result], load: Load | None = None, host: dict[str, Any] | None = None
) -> None:
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
    properties = ET.SubElement(suite, "properties")
    if host is not None:
        ET.SubElement(properties, "property", name="machine", value=machine.line(host))
    if load is not None and load.processes:
        ET.SubElement(properties, "property", name="under_load", value=str(load.processes))
        ET.SubElement(
            properties, "property", name="under_load_cpu_seconds", value=f"{load.cpu_seconds:.1f}"
        )
    for r in results:
        case = ET.SubElement(suite, "testcase", classname="dev-loop", name=r.name)
        case.set("time", f"{r.seconds:.1f}")
        ET.SubElement(case, "property", name="cpu_seconds", value=f"{r.cpu_seconds:.1f}")
        if r.status == "FAILED":
            ET.SubElement(case, "failure", message=r.reason.splitlines()[0]).text = r.reason
        elif r.status == "skipped":
            ET.SubElement(case, "skipped", message="an earlier step failed")
    ET.ElementTree(suite).write(REPORTS / "junit-dev-loop.xml", encoding="unicode")


def print_table(
    results: list[Result], wall: float, load: Load | None = None,
    host: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    if host is not None:
        print(f"\n{machine.line(host)}")
    print("\nstep           start    wall     CPU  result")
    for r in results:
        start = f"{r.started:7.1f}" if r.status != "skipped" else "      -"
        print(f"{r.name:<14} {start} {r.seconds:7.1f} {r.cpu_seconds:7.1f}  {r.status}")
    cpu = sum(r.cpu_seconds for r in results)
    path, path_s = critical_path([r for r in results if r.status != "skipped"])
    print(f"{'total':<14} {'':7} {wall:7.1f} {cpu:7.1f}  (CPU/wall {cpu / max(wall, 1e-9):.2f})")
    print(f"critical path: {' → '.join(path)} ({path_s:.1f} s)")
    if load is not None and load.processes:
        print(f"{load.describe()} (not in the totals)")


def run(args: argparse.Namespace) -> int:
    shard = getattr(args, "shard", None)  # parsed by argparse (shard_arg)
    only_affected = getattr(args, "affected", False)
    run_id = start_run()  # reports/ emptied: trace can only ever see this run's results
    host = machine.describe()
    print(f"dev-loop: run {run_id}" + (f", shard {shard[0]}/{shard[1]}" if shard else ""))
    print(f"dev-loop: {machine.line(host)}")
    # The steps share the cores (engines must not spin) and the project's byte code.
    env = bytecode.step_env({**os.environ, SHARED_CPU_ENV: "1"})
    if bytecode.NO_BYTECODE_ENV in os.environ:
        print(f"dev-loop: the steps cache byte code ({bytecode.NO_BYTECODE_ENV} not passed on)")
    bytecode.warm(ROOT)
    steps = steps_for(shard)
    if only_affected:
        try:
            selection = affected.compute(getattr(args, "since", None) or "HEAD")
        except subprocess.CalledProcessError as exc:  # an unknown REF, not a git checkout
            print(f"dev-loop --affected: git failed: {exc.stderr.strip()}", file=sys.stderr)
            return 2
        affected.print_selection(selection)
        affected.write_selection(selection, affected.SELECTION_FILE)
        env[affected.AFFECTED_ENV] = str(affected.SELECTION_FILE)
        steps = steps_for_affected(selection)
    elif shard is None:  # the full run records which test ran which line
        env[coverage_map.COVERAGE_DIR_ENV] = str(coverage_map.DATA_DIR)
        coverage_map.DATA_DIR.mkdir(parents=True, exist_ok=True)
        steps = with_coverage_map(steps)
    if shard is not None:
        env[shards.SHARD_ENV] = f"{shard[0]}/{shard[1]}"
    started = time.monotonic()
    spinners = max(0, getattr(args, "under_load", 0) or 0)
    if spinners:
        print(f"dev-loop: {spinners} busy processes run beside the loop (--under-load)")
    with busy_processes(spinners) as load:
        results = run_graph(
            steps,
            cwd=ROOT,
            log_dir=LOGS,
            jobs=max(1, getattr(args, "jobs", None) or default_jobs()),
            keep_going=args.keep_going,
            always=ALWAYS,
            on_finish=print_finished,
            env=env,
        )
    print_table(results, time.monotonic() - started, load, host)
    write_junit(results, load, host)
    if shard is not None:
        write_manifest(shard, results)
    failures = [r for r in results if r.status == "FAILED"]
    passed = sum(1 for r in results if r.status == "ok")
    print(f"\ndev-loop: {passed} passed, {len(failures)} failed")
    if failures:
        first = min(failures, key=lambda r: r.started + r.seconds)
        also = [r.name for r in failures if r is not first]
        more = f" (other steps also failed: {', '.join(also)})" if also else ""
        print(f"\ndev-loop FAILED at step '{first.name}'{more}: {first.reason}", file=sys.stderr)
        return 1
    print("\ndev-loop passed")
    return 0


def default_jobs() -> int:
    # Most steps wait on servers and engines a good part of the time: one more than cores.
    return (os.cpu_count() or 1) + 1


def write_manifest(shard: tuple[int, int], results: list[Result]) -> None:
    manifest = {
        "shard": shard[0],
        "of": shard[1],
        "commit": commit((".",)),
        "steps": {r.name: r.status for r in results},
    }
    write_result(REPORTS / "shard.json", manifest)


def lint(args: argparse.Namespace) -> int:
    check = subprocess.call([PY, "-m", "ruff", "check", "."], cwd=ROOT)
    fmt = subprocess.call([PY, "-m", "ruff", "format", "--check", "."], cwd=ROOT)
    return 1 if check or fmt else 0


def unit(args: argparse.Namespace) -> int:
    REPORTS.mkdir(exist_ok=True)
    paths = ["tests/e2e", "tests/unit"]  # the long end-to-end modules start first
    chosen = affected.chosen()
    if chosen is not None:  # only the files that hold affected tests; conftest picks within
        paths = sorted({t.split("::", 1)[0] for t in chosen["tests"]})
        if not paths:
            write_result(REPORTS / "pytest-unit.json", {"results": {}})
            print("unit: no affected tests")
            return 0
    return reruns.run_pytest(
        paths,
        REPORTS / "pytest-unit.json",
        REPORTS / "junit-unit.xml",
        parallel=True,
        extra=coverage_map.pytest_args("unit"),
    )


def record_coverage_map(args: argparse.Namespace) -> int:
    folder = coverage_map.recording_dir() or coverage_map.DATA_DIR
    if not any(folder.glob(".coverage*")):
        print(f"coverage-map: no coverage data in {folder} (a full dev-loop records it)")
        return 1
    bdd_results = REPORTS / "pytest-bdd.json"
    scenarios: dict[str, list[str]] = {}
    if bdd_results.exists():
        for nodeid, entry in json.loads(bdd_results.read_text(encoding="utf-8"))["results"].items():
            if isinstance(entry.get("scenario"), list):
                scenarios[nodeid] = entry["scenario"]
    document = coverage_map.build(folder, scenarios, commit((".",)))
    path = coverage_map.write(document)
    print(
        f"coverage-map: {len(document['contexts'])} tests over {len(document['files'])} files "
        f"→ {path}"
    )
    return 0


def tool_step(name: str) -> Any:
    def run_tool(args: argparse.Namespace) -> int:
        REPORTS.mkdir(exist_ok=True)
        return subprocess.call(TOOL_STEPS[name][1], cwd=ROOT)

    return run_tool


def shard_arg(value: str) -> tuple[int, int]:
    try:
        return shards.parse(value)
    except shards.ShardError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("dev-loop", help="the whole chain: " + " → ".join(CHAIN))
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="run every step even after a failure (still exits non-zero), to see all that broke",
    )
    parser.add_argument(
        "--jobs", type=int, default=None, help="steps at once (default: CPU count + 1)"
    )
    parser.add_argument(
        "--shard",
        metavar="I/N",
        type=shard_arg,
        help="run shard I of N (then: xtask trace --merge DIR...)",
    )
    parser.add_argument(
        "--affected",
        action="store_true",
        help="only what the working-tree change affects (xtask affected), the static steps, "
        "then trace; every other ID is `not re-run`",
    )
    parser.add_argument("--since", default="HEAD", help="with --affected: compare with REF")
    parser.add_argument(
        "--under-load",
        metavar="N",
        type=int,
        default=0,
        help="run N CPU-bound busy processes beside the loop for its whole run (a slower "
        "machine on purpose); the step table says so",
    )
    parser.set_defaults(run=run)
    sub.add_parser("lint", help=TOOL_STEPS["lint"][0]).set_defaults(run=lint)
    sub.add_parser("types", help=TOOL_STEPS["types"][0]).set_defaults(run=tool_step("types"))
    sub.add_parser(
        "unit", help="unit and end-to-end tests (live orchestratord + llama-server), in parallel"
    ).set_defaults(run=unit)
    sub.add_parser(
        "coverage-map", help="combine the full run's coverage into the map `affected` reads"
    ).set_defaults(run=record_coverage_map)
