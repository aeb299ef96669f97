"""Fault test: llama-server is killed mid-stream; the task ends cleanly, the engine comes back."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.sse import SSEParser
from xtask.fakes.live_server import LiveServer, live_server, task_body

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server(server={"engine_restart_backoff_ms": 50}) as live:
        yield live


def engine_process(server: LiveServer) -> psutil.Process:
    (engine,) = [p for p in psutil.Process(server.pid).children() if "llama-server" in p.name()]
    return engine


@pytest.mark.req("OC-POOL-3010", "OC-ADAPT-5011", "HOME-301")
def test_killed_engine_ends_the_task_with_worker_reset_and_is_restarted(
    server: LiveServer,
) -> None:
    killed = engine_process(server)
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=30.0) as client:
        body = task_body(max_tokens=1900, sampler_profile_version="fixed-length")
        assert client.post("/v1/tasks", json=body).status_code == 202
        parser = SSEParser()
        with client.stream("GET", f"/v1/tasks/{body['task_id']}/stream") as response:
            chunks = response.iter_raw()
            for chunk in chunks:
                if any(e == "token" for e, _ in parser.feed(chunk)):
                    break
            killed.send_signal(signal.SIGKILL)
            for chunk in chunks:
                if any(e in ("end", "error") for e, _ in parser.feed(chunk)):
                    break
        terminal = [(e, p) for e, p in parser.frames if e in ("end", "error")]
        assert len(terminal) == 1
        assert terminal[0][0] == "error"
        assert terminal[0][1]["code"] == "WORKER_RESET"

        deadline = time.monotonic() + 60
        health: dict[str, object] = {}
        while time.monotonic() < deadline:
            health = client.get("/v1/pools/default/health").json()
            if (
                health["ready"]
                and health["last_error"] == "engine restarted after: engine exited (-9)"
            ):
                break
            time.sleep(0.05)
        assert health["ready"] is True, health
        assert health["last_error"] == "engine restarted after: engine exited (-9)"
        assert engine_process(server).pid != killed.pid

        again = task_body(max_tokens=8)
        assert client.post("/v1/tasks", json=again).status_code == 202
        with client.stream("GET", f"/v1/tasks/{again['task_id']}/stream") as response:
            parser = SSEParser()
            for chunk in response.iter_raw():
                if any(e in ("end", "error") for e, _ in parser.feed(chunk)):
                    break
        assert parser.frames[-1][0] == "end"
