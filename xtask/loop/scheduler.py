"""Runs the dev loop's steps as a graph: independent steps at once, each as a child process.

A step starts when every step it needs has finished and a job slot is free; the longest
steps (by their expected seconds) start first, so the critical path is not left for last,
and the steps off that expected path run at a lower CPU priority (``nice``): they have slack,
so on a saturated machine the cores go to the path that sets the loop's wall time.
Each step's output goes to ``reports/logs/<step>.log`` and is printed whole when the step
ends, never interleaved. Wall and CPU seconds are measured per step (``os.wait4`` gives the
CPU of the step and of every process it waited for). After a failure no new step starts
unless ``keep_going``; steps in ``always`` still run to report on what there is.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path


@dataclass(frozen=True)
class Step:
    name: str
    command: list[str]
    needs: frozenset[str] = frozenset()
    expected_s: float = 1.0  # what it took lately: longest first
    niceness: int = 0  # set by run_graph for the steps off the expected critical path


@dataclass
class Result:
    name: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    status: str = "skipped"  # ok | FAILED | skipped
    reason: str = ""
    started: float = 0.0  # seconds after the loop began
    log: Path | None = None
    needs: frozenset[str] = field(default_factory=frozenset)


def _run_one(step: Step, cwd: Path, log_dir: Path, begin: float, env: Mapping[str, str]) -> Result:
    log = log_dir / f"{step.name}.log"
    started = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        command = step.command
        if step.niceness:  # nice(1) execs the command: same pid, so wait4 still measures it
            command = ["nice", "-n", str(step.niceness), *command]
        proc = subprocess.Popen(
            command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env={**env, "LLORCH_STEP": step.name},
        )  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    result = Result(
        step.name, seconds, usage.ru_utime + usage.ru_stime, "ok",
        started=started - begin, log=log, needs=step.needs,
    )  # fmt: skip
    if proc.returncode != 0:
        tail: deque[str] = deque(maxlen=25)
        with log.open(encoding="utf-8", errors="replace") as text:
            tail.extend(line.rstrip("\n") for line in text if line.strip())
        result.status = "FAILED"
        result.reason = f"exit {proc.returncode}\n" + "\n".join(tail)[-2000:]
    return result


def run_graph(
    steps: Sequence[Step],
    *,
    cwd: Path,
    log_dir: Path,
    jobs: int,
    keep_going: bool = False,
    always: frozenset[str] = frozenset(),
    on_finish: Callable[[Result], None] = lambda r: None,
    env: Mapping[str, str] | None = None,
) -> list[Result]:
    """Every step's result, in the order of ``steps``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ if env is None else env)
    if jobs > 1:
        steps = yield_off_path(steps)
    pending = {s.name: s for s in steps}
    results: dict[str, Result] = {}
    running: dict[str, threading.Thread] = {}
    done = threading.Condition()
    begin = time.monotonic()
    failed = False

    def worker(step: Step) -> None:
        try:
            result = _run_one(step, cwd, log_dir, begin, env)
        except OSError as exc:  # the command could not even start
            result = Result(step.name, status="FAILED", reason=f"{exc}", needs=step.needs)
        with done:
            results[step.name] = result
            del running[step.name]
            done.notify_all()

    with done:
        while pending or running:
            progressed = True
            while progressed:  # a skipped step may unblock the steps that need it
                progressed = False
                for name in sorted(pending, key=lambda n: -pending[n].expected_s):
                    step = pending[name]
                    if any(n not in results for n in step.needs) or len(running) >= jobs:
                        continue
                    del pending[name]
                    progressed = True
                    if failed and not keep_going and name not in always:
                        results[name] = Result(name, needs=step.needs)
                        continue
                    print(f"==> {name}: {' '.join(_shown(step.command))}", flush=True)
                    thread = threading.Thread(target=worker, args=(step,), daemon=True)
                    running[name] = thread
                    thread.start()
            if not running:
                if pending:
                    raise RuntimeError(f"steps wait on unknown steps: {sorted(pending)}")
                break
            before = set(results)
            done.wait()
            for name in sorted(set(results) - before):
                result = results[name]
                failed = failed or result.status == "FAILED"
                on_finish(result)
    return [results[s.name] for s in steps]


OFF_PATH_NICENESS = 10


def yield_off_path(steps: Sequence[Step]) -> list[Step]:
    """The steps with ``niceness`` set on those off the longest expected chain of needs."""
    on_path, _ = _longest_chain({s.name: (s.expected_s, s.needs) for s in steps})
    return [s if s.name in on_path else replace(s, niceness=OFF_PATH_NICENESS) for s in steps]


def _shown(command: list[str]) -> list[str]:
    return ["python" if part == sys.executable else part for part in command]


def critical_path(results: Sequence[Result]) -> tuple[list[str], float]:
    """The chain of needs with the most wall time: what a faster loop must shorten."""
    return _longest_chain({r.name: (r.seconds, r.needs) for r in results})


def _longest_chain(
    graph: Mapping[str, tuple[float, frozenset[str]]],
) -> tuple[list[str], float]:
    """``graph``: each name's seconds and the names it needs; the costliest chain of needs."""
    best: dict[str, tuple[float, list[str]]] = {}

    def longest(name: str) -> tuple[float, list[str]]:
        if name not in best:
            seconds, needs = graph[name]
            chains = [longest(n) for n in needs if n in graph]
            before, path = max(chains, default=(0.0, []))
            best[name] = (before + seconds, [*path, name])
        return best[name]

    seconds, path = max((longest(name) for name in graph), default=(0.0, []))
    return path, seconds
