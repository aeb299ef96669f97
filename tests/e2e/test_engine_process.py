"""The spawned llama-server: what it inherits, who owns its port, and what a hang does.

Read from the real processes: ``/proc/<pid>/fd`` and ``/proc/<pid>/environ`` of the engine
orchestratord spawned, its argv, and the pool's health while the engine is SIGSTOPped.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from orchestratord.models.tiny_gguf import default_cache_dir, ensure_tiny_model
from orchestratord.replicas.engine_process import (
    EngineStartError,
    LlamaServerProcess,
    free_loopback_port,
    llama_server_binary,
)
from xtask.fakes.held import managed_engine
from xtask.fakes.live_server import LiveServer, live_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    overrides = {"engine_hang_timeout_ms": 1500, "engine_restart_backoff_ms": 50}
    with live_server(server=overrides) as live:
        yield live


@pytest.mark.req("OC-CTRL-2041", "HOME-102")
def test_the_engine_inherits_no_descriptor_and_no_token(server: LiveServer) -> None:
    engine = managed_engine(server)
    fds = sorted(int(fd) for fd in os.listdir(f"/proc/{engine.pid}/fd"))
    targets = {fd: os.readlink(f"/proc/{engine.pid}/fd/{fd}") for fd in fds}
    # orchestratord's own listening socket (and any other fd of ours) must not be there: the
    # engine's sockets are its own listener and connections, opened by itself after exec.
    ours = {c.fd for c in psutil.Process(server.pid).net_connections() if c.fd != -1}
    inherited_inodes = {os.readlink(f"/proc/{server.pid}/fd/{fd}") for fd in ours}
    assert not inherited_inodes & set(targets.values()), targets
    assert targets[0] == "/dev/null"
    environ = Path(f"/proc/{engine.pid}/environ").read_bytes().split(b"\0")
    assert not [v for v in environ if v.startswith(b"LLORCH_")]
    assert server.token.encode() not in b"\0".join(environ)
    assert server.token not in " ".join(engine.cmdline())


@pytest.mark.req("OC-POOL-3003", "OC-POOL-3010", "ORCH-3010")
def test_a_hung_engine_is_killed_and_replaced(server: LiveServer) -> None:
    hung = managed_engine(server)
    hung.send_signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 30
        health: dict[str, object] = {}
        with httpx.Client(base_url=server.url, headers=server.auth, timeout=5.0) as client:
            saw_unready = False
            while time.monotonic() < deadline:
                health = client.get("/v1/pools/default/health").json()
                saw_unready = saw_unready or not health["ready"]
                if saw_unready and health["ready"]:
                    break
                time.sleep(0.05)
        assert saw_unready and health["ready"] is True, health
        assert "hung" in str(health["last_error"])
        assert not hung.is_running() or hung.status() == psutil.STATUS_ZOMBIE
        assert managed_engine(server).pid != hung.pid
    finally:
        if hung.is_running():
            hung.send_signal(signal.SIGCONT)


class _ForeignHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"model_path": "/somewhere/else.gguf"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.mark.req("OC-POOL-3001", "OC-POOL-3002")
async def test_a_port_held_by_another_server_is_never_taken_for_our_engine(
    tmp_path: Path,
) -> None:
    port = free_loopback_port()
    foreign = http.server.HTTPServer(("127.0.0.1", port), _ForeignHandler)
    thread = threading.Thread(target=foreign.serve_forever, daemon=True)
    thread.start()
    process = LlamaServerProcess(
        binary=llama_server_binary(),
        model_path=ensure_tiny_model(default_cache_dir()),
        ctx_per_slot=256,
        slots=1,
        log_path=tmp_path / "engine.log",
        port=port,
    )
    try:
        with pytest.raises(EngineStartError):
            await process.start(timeout_s=30)
        assert not process.running()
    finally:
        foreign.shutdown()
        await process.stop()


@pytest.mark.req("HARD-209")
def test_the_engine_dies_with_a_killed_orchestratord() -> None:
    """SIGKILL leaves orchestratord no chance to stop its engine: the death signal set by
    setpriv before exec must end it (no Python runs in the child between fork and exec)."""
    with live_server() as live:
        engine = managed_engine(live)
        assert engine.cmdline()[0].endswith("llama-server")  # setpriv exec'd the engine itself
        os.kill(live.pid, signal.SIGKILL)
        gone, alive = psutil.wait_procs([engine], timeout=15)
    assert gone and not alive, "the engine outlived the orchestratord that spawned it"
