"""The dev loop's graph, step table, shards and merge (HARN-301..304)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from xtask.bench import bench, bench_small
from xtask.loop import bytecode, dev_loop, machine, shards
from xtask.loop.scheduler import Result, Step, critical_path, run_graph
from xtask.report import trace_merge

ROOT = Path(__file__).resolve().parents[2]


def sleeper(name: str, seconds: float, tmp: Path, needs: frozenset[str] = frozenset()) -> Step:
    code = (
        "import time, pathlib; "
        f"pathlib.Path({str(tmp / (name + '.start'))!r}).write_text(str(time.time())); "
        f"time.sleep({seconds}); "
        f"pathlib.Path({str(tmp / (name + '.end'))!r}).write_text(str(time.time()))"
    )
    return Step(name, [sys.executable, "-c", code], needs, seconds)


MEETER = """
import pathlib, sys, time
here, name, other = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
(here / f"{name}.start").write_text(str(time.time()))
deadline = time.monotonic() + 60
while not (here / f"{other}.start").exists() and time.monotonic() < deadline:
    time.sleep(0.01)
(here / f"{name}.end").write_text(str(time.time()))
(here / f"{name}.met").write_text(str((here / f"{other}.start").exists()))
"""


def meeter(name: str, other: str, tmp: Path) -> Step:
    """Writes its start, then waits (up to a minute) for ``other`` to have started before it
    ends: both can end having met only if they ran at the same time, however slowly each
    one's interpreter started."""
    return Step(name, [sys.executable, "-c", MEETER, str(tmp), name, other], frozenset(), 0.6)


def stamp(tmp: Path, name: str, edge: str) -> float:
    return float((tmp / f"{name}.{edge}").read_text())


@pytest.mark.req("HARN-301", "HARN-302")
def test_independent_steps_overlap_and_needs_wait(tmp_path: Path) -> None:
    steps = [
        meeter("a", "b", tmp_path),
        meeter("b", "a", tmp_path),
        sleeper("c", 0.1, tmp_path, frozenset({"a", "b"})),
    ]
    finished: list[str] = []
    results = run_graph(
        steps,
        cwd=tmp_path,
        log_dir=tmp_path / "logs",
        jobs=2,
        on_finish=lambda r: finished.append(r.name),
    )
    assert [r.status for r in results] == ["ok", "ok", "ok"]
    # a and b ran at the same time (each saw the other start before it ended); c only after
    # both had ended.
    assert [(tmp_path / f"{n}.met").read_text() for n in "ab"] == ["True", "True"]
    assert stamp(tmp_path, "c", "start") >= max(stamp(tmp_path, n, "end") for n in "ab")
    assert finished[-1] == "c"
    path, seconds = critical_path(results)
    assert path[-1] == "c" and path[0] in ("a", "b") and seconds > 0
    assert all(r.log is not None and r.log.exists() for r in results)


@pytest.mark.req("HARN-301")
def test_one_job_runs_one_step_at_a_time(tmp_path: Path) -> None:
    steps = [sleeper("a", 0.3, tmp_path), sleeper("b", 0.3, tmp_path)]
    run_graph(steps, cwd=tmp_path, log_dir=tmp_path / "logs", jobs=1)
    first, second = sorted("ab", key=lambda n: stamp(tmp_path, n, "start"))
    assert stamp(tmp_path, second, "start") >= stamp(tmp_path, first, "end")


@pytest.mark.req("HARN-301")
def test_steps_off_the_expected_critical_path_run_at_a_lower_priority(tmp_path: Path) -> None:
    probe = "import os, pathlib; pathlib.Path({!r}).write_text(str(os.nice(0)))"
    steps = [
        Step("long", [sys.executable, "-c", probe.format(str(tmp_path / "long"))], expected_s=9),
        Step("short", [sys.executable, "-c", probe.format(str(tmp_path / "short"))]),
        Step(
            "after",
            [sys.executable, "-c", probe.format(str(tmp_path / "after"))],
            frozenset({"long", "short"}),
        ),
    ]
    base = os.nice(0)
    run_graph(steps, cwd=tmp_path, log_dir=tmp_path / "logs", jobs=2)
    seen = {n: int((tmp_path / n).read_text()) - base for n in ("long", "short", "after")}
    assert seen == {"long": 0, "short": 10, "after": 0}  # long → after is the path
    run_graph(steps, cwd=tmp_path, log_dir=tmp_path / "logs", jobs=1)  # nothing to yield to
    assert int((tmp_path / "short").read_text()) == base


CHATTY = """
import pathlib, sys, time
here, name, other = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
(here / f"{name}.start").write_text("")
deadline = time.monotonic() + 60
for i in range(4):  # each line after the other step has started, so the two overlap
    while not (here / f"{other}.start").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    print(f"{name} line {i}", flush=True)
    time.sleep(0.02)
"""


@pytest.mark.req("HARN-301")
def test_each_steps_output_is_printed_whole_when_it_ends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    steps = [
        Step(n, [sys.executable, "-c", CHATTY, str(tmp_path), n, other])
        for n, other in (("a", "b"), ("b", "a"))
    ]
    results = run_graph(
        steps, cwd=tmp_path, log_dir=tmp_path / "logs", jobs=2, on_finish=dev_loop.print_finished
    )
    assert [r.status for r in results] == ["ok", "ok"]
    out = capsys.readouterr().out.splitlines()
    owners = [line[0] for line in out if re.fullmatch(r"[ab] line \d", line)]
    assert sorted(owners) == ["a"] * 4 + ["b"] * 4
    assert owners in (["a"] * 4 + ["b"] * 4, ["b"] * 4 + ["a"] * 4), owners  # never interleaved


@pytest.mark.req("HARN-301")
def test_the_longest_step_starts_first_and_jobs_default_to_one_more_than_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = [
        sleeper("short", 0.05, tmp_path),
        replace(sleeper("long", 0.05, tmp_path), expected_s=30.0),
    ]
    run_graph(steps, cwd=tmp_path, log_dir=tmp_path / "logs", jobs=1)
    assert stamp(tmp_path, "long", "end") <= stamp(tmp_path, "short", "start")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert dev_loop.default_jobs() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert dev_loop.default_jobs() == 2


@pytest.mark.req("HARN-301")
def test_after_a_failure_no_new_step_starts_unless_keep_going(tmp_path: Path) -> None:
    fail = Step("fail", [sys.executable, "-c", "raise SystemExit(3)"], expected_s=9.0)
    steps = [fail, sleeper("later", 0.01, tmp_path), sleeper("report", 0.01, tmp_path)]
    stopped = run_graph(
        steps, cwd=tmp_path, log_dir=tmp_path / "logs", jobs=1, always=frozenset({"report"})
    )
    assert [r.status for r in stopped] == ["FAILED", "skipped", "ok"]
    assert "exit 3" in stopped[0].reason and not (tmp_path / "later.start").exists()
    going = run_graph(steps, cwd=tmp_path, log_dir=tmp_path / "logs", jobs=1, keep_going=True)
    assert [r.status for r in going] == ["FAILED", "ok", "ok"]
    assert (tmp_path / "later.end").exists()


@pytest.mark.req("HARN-302")
def test_cpu_seconds_count_the_step_and_what_it_waited_for(tmp_path: Path) -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\n"
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])"
    steps = [Step("idle", [sys.executable, "-c", "import time; time.sleep(0.4)"]),
             Step("busy", [sys.executable, "-c", child])]  # fmt: skip
    idle, busy = run_graph(steps, cwd=tmp_path, log_dir=tmp_path / "logs", jobs=2)
    assert busy.cpu_seconds >= 0.35  # the grandchild's CPU is the step's
    assert idle.cpu_seconds < busy.cpu_seconds
    assert idle.seconds >= 0.4


@pytest.mark.req("HARN-304")
def test_shards_are_deterministic_and_cover_everything_once() -> None:
    assert shards.parse("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "x", "1/0"):
        with pytest.raises(shards.ShardError):
            shards.parse(bad)
        with pytest.raises(argparse.ArgumentTypeError):  # a usage error, not a traceback
            dev_loop.shard_arg(bad)
    files = [f"tests/unit/test_{i}.py" for i in range(40)] + [
        f"features/f{i}.feature" for i in range(12)
    ]
    owners = {f: shards.owner(f, 2) for f in files}
    assert owners == {f: shards.owner(f, 2) for f in files}  # stable
    assert set(owners.values()) == {1, 2}
    for f in files:
        assert [i for i in (1, 2) if shards.owns(f, (i, 2))] == [owners[f]]
    # Every step runs exactly once over the shards; unit and bdd on each.
    chains = [[s.name for s in dev_loop.steps_for((i, 2))] for i in (1, 2)]
    whole = [n for n in dev_loop.CHAIN if n not in dev_loop.ALWAYS and n not in dev_loop.SPLIT]
    assert sorted(n for c in chains for n in c if n not in dev_loop.SPLIT) == sorted(whole)
    assert all({"unit", "bdd"} <= set(c) and "trace" not in c for c in chains)


def write_shard(
    folder: Path, index: int, count: int, results: dict[str, str], commit: str = "abc"
) -> None:
    folder.mkdir(parents=True)
    run_id = f"run-{index}"
    (folder / "shard.json").write_text(
        json.dumps({"run_id": run_id, "shard": index, "of": count, "commit": commit, "steps": {}})
    )
    body = {k: {"ids": [], "outcome": v} for k, v in results.items()}
    (folder / "pytest-unit.json").write_text(json.dumps({"run_id": run_id, "results": body}))
    scenario = {"location": f"features/f{index}.feature:3", "type": "scenario"}
    behave = {"run_id": run_id, "features": [{"elements": [scenario]}]}
    (folder / "behave.json").write_text(json.dumps(behave))


@pytest.mark.req("HARN-304")
def test_merge_refuses_a_missing_duplicated_or_foreign_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("xtask.loop.results.REPORTS", tmp_path / "reports")
    names = ["pytest-unit.json", "behave.json"]
    write_shard(tmp_path / "s1", 1, 3, {"t1": "passed"})
    write_shard(tmp_path / "s2", 2, 3, {"t2": "passed"})
    write_shard(tmp_path / "s2b", 2, 3, {"t3": "passed"})
    write_shard(tmp_path / "s3", 3, 3, {"t4": "failed"}, commit="def")
    write_shard(tmp_path / "s3ok", 3, 3, {"t1": "passed"})
    out = tmp_path / "reports"
    missing = trace_merge.merge([tmp_path / "s1", tmp_path / "s2"], out, names)
    assert missing == ["shard(s) [3] of 3 missing"]
    doubled = trace_merge.merge([tmp_path / d for d in ("s1", "s2", "s2b")], out, names)
    assert "shard(s) [2] of 3 given more than once" in doubled
    foreign = trace_merge.merge([tmp_path / d for d in ("s1", "s2", "s3")], out, names)
    assert foreign == ["shards of different commits: ['abc', 'def']"]
    twice = trace_merge.merge([tmp_path / d for d in ("s1", "s2", "s3ok")], out, names)
    assert twice == ["pytest-unit.json: t1 reported by two shards (one is 3)"]
    assert not out.exists()  # nothing written for a refused merge


@pytest.mark.req("HARN-304")
def test_merge_writes_one_run_from_the_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("xtask.loop.results.REPORTS", tmp_path / "reports")
    monkeypatch.delenv("LLORCH_RUN_ID", raising=False)
    write_shard(tmp_path / "s1", 1, 2, {"t1": "passed"})
    write_shard(tmp_path / "s2", 2, 2, {"t2": "failed"})
    out = tmp_path / "reports"
    assert (
        trace_merge.merge(
            [tmp_path / "s2", tmp_path / "s1"], out, ["pytest-unit.json", "behave.json"]
        )
        == []
    )
    run_id = (out / "run-id").read_text().strip()
    unit = json.loads((out / "pytest-unit.json").read_text())
    assert unit["run_id"] == run_id and set(unit["results"]) == {"t1", "t2"}
    behave = json.loads((out / "behave.json").read_text())
    assert len(behave["features"]) == 2


@pytest.mark.req("HARN-302")
def test_the_step_table_names_the_critical_path(capsys: pytest.CaptureFixture[str]) -> None:
    results = [
        Result("types", 9.0, 8.5, "ok", started=0.0),
        Result("unit", 80.0, 120.0, "ok", started=0.0),
        Result("trace", 1.0, 0.9, "ok", started=80.0, needs=frozenset({"types", "unit"})),
        Result("report-page", 3.0, 1.0, "ok", started=81.0, needs=frozenset({"trace"})),
    ]
    dev_loop.print_table(results, 84.0)
    out = capsys.readouterr().out
    assert "critical path: unit → trace → report-page (84.0 s)" in out
    assert "total" in out and "130.4" in out


@pytest.mark.req("HARN-304")
def test_two_real_shards_split_the_tests_and_merge_into_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pytest on two shards of the same modules, each leaving its reports; the merge has
    every test exactly once."""
    modules = [
        "tests/unit/test_fingerprints.py",
        "tests/unit/test_deploy_matrix.py",
        "tests/unit/test_flaky.py",
        "tests/unit/test_affected.py",
    ]
    # A run of the loop (sharded or affected-only) must not choose this test's tests.
    base = {k: v for k, v in os.environ.items() if k not in ("LLORCH_SHARD", "LLORCH_AFFECTED")}
    folders = []
    for index in (1, 2):
        folder = tmp_path / f"shard{index}"
        folder.mkdir()
        run_id = f"shard-run-{index}"
        env = {**base, shards.SHARD_ENV: f"{index}/2", "LLORCH_RUN_ID": run_id}
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *modules,
             "--collect-only", "--req-report", str(folder / "pytest-unit.json")],
            cwd=ROOT, env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        manifest = {"run_id": run_id, "shard": index, "of": 2, "commit": "c", "steps": {}}
        (folder / "shard.json").write_text(json.dumps(manifest))
        folders.append(folder)
    everything = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *modules,
         "--collect-only", "--req-report", str(tmp_path / "all.json")],
        cwd=ROOT, env={**base, "LLORCH_RUN_ID": "all"}, check=True,
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert everything.returncode == 0
    parts = [set(json.loads((f / "pytest-unit.json").read_text())["results"]) for f in folders]
    whole = set(json.loads((tmp_path / "all.json").read_text())["results"])
    assert parts[0] and parts[1] and not parts[0] & parts[1]
    assert parts[0] | parts[1] == whole
    monkeypatch.setattr("xtask.loop.results.REPORTS", tmp_path / "merged")
    monkeypatch.delenv("LLORCH_RUN_ID", raising=False)
    assert trace_merge.merge(folders, tmp_path / "merged", ["pytest-unit.json"]) == []
    merged = json.loads((tmp_path / "merged" / "pytest-unit.json").read_text())["results"]
    assert set(merged) == whole


@pytest.mark.req("HARN-303")
def test_tests_run_in_parallel_processes_and_servers_never_share_a_port_or_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from xtask.fakes.live_server import live_server  # noqa: PLC0415
    from xtask.loop import reruns  # noqa: PLC0415

    monkeypatch.delenv(reruns.WORKERS_ENV, raising=False)
    command = reruns.pytest_command(["tests/unit"], Path("r.json"), None, parallel=True)
    assert command[command.index("-n") + 1] == reruns.workers() == str(os.cpu_count() or 1)
    assert command[command.index("--dist") + 1] == "loadfile"  # a module's servers, one process
    monkeypatch.setenv(reruns.WORKERS_ENV, "3")
    three = reruns.pytest_command(["tests/unit"], Path("r.json"), None, parallel=True)
    assert three[three.index("-n") + 1] == "3"
    alone = reruns.pytest_command(["tests/unit"], Path("r.json"), None, parallel=False)
    assert "-n" not in alone  # re-runs go one by one, in a fresh process
    # Two servers at once, as two test processes start them: own port, own state directory.
    with live_server(residency="on-demand") as one, live_server(residency="on-demand") as two:
        assert one.url != two.url
        assert one.workdir != two.workdir
        assert one.engine_socket != two.engine_socket


@pytest.mark.req("HARN-302")
def test_the_step_table_and_the_junit_file_name_the_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Test CPU 9000 @ 1.00GHz\n")
    (proc / "meminfo").write_text("MemTotal:       25165824 kB\n")
    monkeypatch.setattr(machine.os, "getloadavg", lambda: (1.5, 0.75, 0.25))
    host = machine.describe(proc)
    assert host == {"cpu": "Test CPU 9000 @ 1.00GHz", "cores": os.cpu_count(),
                    "memory_gib": 24.0, "load_average": [1.5, 0.75, 0.25]}  # fmt: skip
    results = [Result("lint", 1.0, 0.5, "ok")]
    dev_loop.print_table(results, 1.0, None, host)
    printed = capsys.readouterr().out
    assert "machine: Test CPU 9000 @ 1.00GHz" in printed and "24 GiB" in printed
    assert "load average 1.50/0.75/0.25 (1/5/15 min) at the start" in printed
    monkeypatch.setattr(dev_loop, "REPORTS", tmp_path)
    dev_loop.write_junit(results, None, host)
    junit = (tmp_path / "junit-dev-loop.xml").read_text()
    assert 'name="machine" value="machine: Test CPU 9000' in junit


@pytest.mark.req("HARN-302")
def test_every_benchmark_names_the_machine_first(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_small, "run", lambda *args: {"ratio": 1.0})
    monkeypatch.setattr(bench_small, "report", lambda result: print("the table"))
    args = argparse.Namespace(which="small", runs=1, per_block=1, blocks=1, json=False)
    assert bench.run(args) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("machine: ") and table[1] == "the table"
    assert bench.run(argparse.Namespace(**{**vars(args), "json": True})) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["ratio"] == 1.0 and as_json["machine"]["cores"] == os.cpu_count()


LOAD = """
import importlib.util, sys
for path in sys.argv[1:]:
    spec = importlib.util.spec_from_file_location("m", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print(module.VALUE)
"""


@pytest.mark.req("HARN-306")
def test_the_steps_share_byte_code_even_where_the_environment_forbids_writing_it(
    tmp_path: Path,
) -> None:
    package = tmp_path / "orchestratord"
    package.mkdir()
    compiled, fresh = package / "compiled.py", package / "fresh.py"
    compiled.write_text("VALUE = 1\n")
    assert bytecode.warm(tmp_path)
    assert Path(importlib.util.cache_from_source(str(compiled))).exists()
    env = bytecode.step_env({**os.environ, bytecode.NO_BYTECODE_ENV: "1"})
    assert bytecode.NO_BYTECODE_ENV not in env
    fresh.write_text("VALUE = 2\n")
    compiled.write_text("VALUE = 10\n")  # edited after it was compiled: never served stale
    load = [sys.executable, "-c", LOAD, str(compiled), str(fresh)]
    ran = subprocess.run(load, env=env, capture_output=True, text=True, check=True)
    assert ran.stdout.split() == ["10", "2"]
    assert Path(importlib.util.cache_from_source(str(fresh))).exists()  # the step wrote it
    forbidden = {**env, bytecode.NO_BYTECODE_ENV: "1"}
    (package / "third.py").write_text("VALUE = 3\n")
    subprocess.run([*load[:3], str(package / "third.py")], env=forbidden, check=True)
    assert not Path(importlib.util.cache_from_source(str(package / "third.py"))).exists()


@pytest.mark.req("HARN-306")
def test_the_loop_compiles_before_its_first_step_and_its_steps_may_write_byte_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop itself, not only its helpers: with PYTHONDONTWRITEBYTECODE set, the project
    is compiled before any step starts, and every step's interpreter may write byte code."""
    warmed = tmp_path / "warmed"

    def warm(root: Path) -> bool:
        assert root == dev_loop.ROOT
        warmed.write_text("")
        return True

    def probe(name: str) -> list[str]:
        code = (
            "import pathlib, sys; out, warmed = map(pathlib.Path, sys.argv[1:]); "
            "out.write_text(f'{sys.dont_write_bytecode} {warmed.exists()}')"
        )
        return [sys.executable, "-c", code, str(tmp_path / name), str(warmed)]

    monkeypatch.setattr(bytecode, "warm", warm)
    monkeypatch.setattr(dev_loop, "step_command", probe)
    monkeypatch.setattr(dev_loop, "REPORTS", tmp_path)
    monkeypatch.setattr(dev_loop, "LOGS", tmp_path / "logs")
    monkeypatch.setattr(dev_loop, "start_run", lambda: "run-bytecode")
    monkeypatch.setenv("LLORCH_RUN_ID", "run-bytecode")
    monkeypatch.setenv(bytecode.NO_BYTECODE_ENV, "1")
    code = dev_loop.run(argparse.Namespace(keep_going=False, jobs=2, shard=(1, 1)))
    assert code == 0
    ran = [s.name for s in dev_loop.steps_for((1, 1))]
    assert ran and {n: (tmp_path / n).read_text() for n in ran} == {n: "False True" for n in ran}
