"""SIGTERM under load: every open stream gets one terminal frame, then everything stops.

Running tasks may go on for ``server.shutdown_grace_ms``; queued tasks end at once; a task
still decoding when the grace is over ends with ``error POOL_UNAVAILABLE``. The server then
stops its engine and exits; no llama-server is left behind.
"""

from __future__ import annotations

import os
import signal
import threading

import httpx
import psutil
import pytest

from tests.sse import SSEParser
from xtask.fakes.live_server import LiveServer, live_server, task_body

pytestmark = pytest.mark.e2e

LONG = {"max_tokens": 1900, "sampler_profile_version": "fixed-length", "prompt": "a"}


def follow(
    server: LiveServer, task_id: str, started: threading.Event, out: dict[str, SSEParser]
) -> None:
    parser = SSEParser()
    with (
        httpx.Client(base_url=server.url, headers=server.auth, timeout=60.0) as client,
        client.stream("GET", f"/v1/tasks/{task_id}/stream") as response,
    ):
        for chunk in response.iter_raw():
            parser.feed(chunk)
            started.set()
    out[task_id] = parser


@pytest.mark.req("HOME-301", "FR-DP-002")
def test_sigterm_ends_every_open_stream_once_and_stops_the_engine() -> None:
    with live_server(server={"shutdown_grace_ms": 300}) as server:
        engine = [p for p in psutil.Process(server.pid).children() if "llama" in p.name()]
        # Stopped by the test, the engine holds the two tasks placed on it: neither can end
        # before the SIGTERM, and the two behind them stay queued, however fast it would be.
        for process in engine:
            process.suspend()
        with httpx.Client(base_url=server.url, headers=server.auth, timeout=30.0) as client:
            ids = []
            for _ in range(4):  # 2 slots: two held on the engine, two wait in the queue
                body = task_body(**LONG)
                assert client.post("/v1/tasks", json=body).status_code == 202
                ids.append(body["task_id"])
        results: dict[str, SSEParser] = {}
        threads = []
        for task_id in ids:
            started = threading.Event()
            thread = threading.Thread(target=follow, args=(server, task_id, started, results))
            thread.start()
            assert started.wait(30)
            threads.append(thread)
        os.kill(server.pid, signal.SIGTERM)
        for thread in threads:
            thread.join(60)
            assert not thread.is_alive()
        # uvicorn re-raises the signal it handled once it has shut down cleanly.
        assert psutil.Process(server.pid).wait(60) in (0, -signal.SIGTERM)
        assert any("Application shutdown complete" in line for line in server.output)
    assert len(results) == 4
    outcomes = []
    for task_id in ids:
        frames = results[task_id].frames
        terminal = [(e, p) for e, p in frames if e in ("end", "error")]
        assert len(terminal) == 1, frames[-3:]
        assert frames[-1] == terminal[0]
        outcomes.append(terminal[0][1].get("code") or terminal[0][1].get("finish_reason"))
    # The two held tasks are ended when the grace is over (a stopped engine is killed); the
    # queued ones end at once.
    assert outcomes[:2] == ["POOL_UNAVAILABLE", "POOL_UNAVAILABLE"], outcomes
    assert outcomes[2:] == ["POOL_UNAVAILABLE", "POOL_UNAVAILABLE"], outcomes
    assert engine and not any(p.is_running() for p in engine)
