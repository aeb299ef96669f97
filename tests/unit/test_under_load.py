"""``dev-loop --under-load N`` (HARN-305): the busy processes run for the block and are
gone after it, however it ends."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from xtask.loop.under_load import busy_processes

ROOT = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it has stopped)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone_within(pid: int, seconds: float) -> bool:
    """Polls: a reaped or exited pid (a generous bound; it says what it waited for)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.req("HARN-305")
def test_the_busy_processes_run_for_the_block_and_stop_after_it() -> None:
    with busy_processes(2) as load:
        pids = list(load.pids)
        running = [alive(pid) for pid in pids]
    assert len(pids) == 2 and running == [True, True]
    assert not any(alive(pid) for pid in pids)
    assert load.describe().startswith("under load: 2 busy processes")


@pytest.mark.req("HARN-305")
def test_a_failure_inside_the_block_still_stops_them() -> None:
    pids: list[int] = []

    def a_step_that_blows_up() -> None:
        with busy_processes(1) as load:
            pids.extend(load.pids)
            raise RuntimeError("a step blew up")

    with pytest.raises(RuntimeError, match="a step blew up"):
        a_step_that_blows_up()
    assert pids and not any(alive(pid) for pid in pids)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
@pytest.mark.req("HARN-305")
def test_a_loop_that_is_terminated_or_killed_leaves_no_busy_process(how: int) -> None:
    script = (
        "import sys, time\n"
        "from xtask.loop.under_load import busy_processes\n"
        "with busy_processes(1) as load:\n"
        "    print(load.pids[0], flush=True)\n"
        "    time.sleep(60)\n"
    )
    loop = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert loop.stdout is not None
    spinner = int(loop.stdout.readline())
    assert alive(spinner)
    loop.send_signal(how)
    loop.wait(timeout=30)
    assert gone_within(spinner, 30), f"busy process {spinner} outlived the loop ({how!r})"
