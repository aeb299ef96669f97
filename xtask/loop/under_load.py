"""``dev-loop --under-load N``: the loop on a machine made slower on purpose (HARN-305).

N busy processes run beside the loop for its whole run, at normal priority, each spinning
one core in pure Python: the tests meet a machine with less CPU to give than the one they
were written on, as CI's or a newcomer's may be. They stop when the loop ends, whatever
ends it: the context manager kills them on the way out (an exception, Ctrl-C, or a SIGTERM
turned into one), and each one also checks, every few milliseconds, that the loop is still
its parent, so even a loop killed with SIGKILL leaves none behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType

# Spins until its parent is gone (then it is re-parented and getppid() changes). The parent's
# pid comes in argv, not from getppid() at start: a loop killed before the interpreter got
# that far would leave a spinner that took init for its parent and spun on forever.
SPIN = (
    "import os, sys\n"
    "parent = int(sys.argv[1])\n"
    "while os.getppid() == parent:\n"
    "    for _ in range(20000):\n"
    "        pass\n"
)


@dataclass
class Load:
    """What ran beside the loop: how many spinners, and the CPU seconds they took."""

    processes: int
    cpu_seconds: float = 0.0
    pids: list[int] = field(default_factory=list)

    def describe(self) -> str:
        return f"under load: {self.processes} busy processes, {self.cpu_seconds:.1f} s CPU"


def _spinner() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", SPIN, str(os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _stop(processes: list[subprocess.Popen[bytes]], load: Load) -> None:
    # os.kill, not Popen.kill: Popen polls first and could reap a spinner that wait4 then
    # cannot find; an unreaped spinner's pid is never reused, so the signal reaches it.
    for process in processes:
        os.kill(process.pid, signal.SIGKILL)
    for process in processes:
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        load.cpu_seconds += usage.ru_utime + usage.ru_stime


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so the ``finally`` below runs


@contextmanager
def busy_processes(count: int) -> Iterator[Load]:
    """Run ``count`` spinners for the duration of the block (0: none, nothing changes)."""
    load = Load(count)
    if count <= 0:
        yield load
        return
    previous = signal.signal(signal.SIGTERM, _terminated)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes = [_spinner() for _ in range(count)]
        load.pids = [p.pid for p in processes]
        time.sleep(0.05)  # give them their cores before the first step starts
        yield load
    finally:
        _stop(processes, load)
        signal.signal(signal.SIGTERM, previous)
