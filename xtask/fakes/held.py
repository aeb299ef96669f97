"""States a test holds itself, instead of hoping the engine is slow (issue 23, item 1).

A cancel test must cancel a task that is still decoding. Asking for a long task and
cancelling "soon" races the engine: on a fast machine, or with the test's process starved,
the task can end first. Here the engine is stopped (SIGSTOP) the moment the test has seen
the tokens it wants: the decode stays where it is for as long as the test needs, while
orchestratord, which does not need the engine to cut a task's stream, answers the cancel.
The engine runs again once the terminal frame has arrived, so the slot it frees is freed by
the cancel, never by the task ending on its own (a fixed-length task is far from its end).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import psutil

from xtask.fakes.live_server import LiveServer


def managed_engine(server: LiveServer) -> psutil.Process:
    """The llama-server process ``server`` started (its only engine)."""
    (engine,) = [p for p in psutil.Process(server.pid).children() if "llama-server" in p.name()]
    return engine


@contextmanager
def stopped(engine: psutil.Process) -> Iterator[None]:
    """``engine`` stopped for the block, running again however the block ends."""
    engine.suspend()
    try:
        yield
    finally:
        engine.resume()


def cancel_while_stopped(
    server: LiveServer,
    task_id: str,
    engine: psutil.Process,
    read_to_terminal_frame: Callable[[], None],
    timeout_s: float = 120.0,
) -> httpx.Response:
    """Cancel ``task_id`` with ``engine`` stopped mid-decode: the cancel goes from a thread of
    its own, ``read_to_terminal_frame`` (the caller reading its open stream) returns once the
    stream has ended, then the engine runs again and the cancel's answer is returned (it
    comes once the engine's slot is free)."""

    def cancel() -> httpx.Response:
        with httpx.Client(base_url=server.url, headers=server.auth, timeout=timeout_s) as client:
            return client.post(f"/v1/tasks/{task_id}/cancel")

    with ThreadPoolExecutor(max_workers=1) as pool:
        with stopped(engine):
            answer = pool.submit(cancel)
            read_to_terminal_frame()
        return answer.result(timeout=timeout_s)
