"""orchestratord serving a TGI pool, end to end over HTTP. TGI itself cannot run here: the
engine is the protocol fake ``xtask/fakes/fake_tgi.py`` (built from TGI's documented API), run as a
separate process; what is real is orchestratord and the adapter's HTTP exchange."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from orchestratord.replicas.engine_process import free_loopback_port
from tests.sse import SSEParser
from xtask.fakes.fake_tgi import seeded_tokens
from xtask.fakes.live_server import LiveServer, default_live_config, live_server, task_body

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tgi_fake() -> Iterator[str]:
    port = free_loopback_port()
    proc = subprocess.Popen([sys.executable, "-m", "xtask.fakes.fake_tgi", "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tgi_fake: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    config = default_live_config(
        tmp_path_factory.mktemp("tgi"),
        id="tgi",
        engine="tgi",
        model_ref="protocol-fake/tgi",
        endpoints=[{"url": tgi_fake}],
    )
    with live_server(config) as live:
        yield live


@pytest.mark.req("ORCH-3057", "ORCH-3054", "OC-ADAPT-5002")
def test_a_tgi_pool_streams_orchqueue_frames_from_the_protocol_fake(server: LiveServer) -> None:
    body = task_body(model_ref="protocol-fake/tgi", engine="tgi", max_tokens=5, seed=314)
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=30) as client:
        assert client.post("/v1/tasks", json=body).status_code == 202
        frames = SSEParser().feed(client.get(f"/v1/tasks/{body['task_id']}/stream").content)
    tokens = [p["t"] for e, p in frames if e == "token"]
    assert tokens == seeded_tokens(314, 5)
    assert frames[0][1]["engine"] == "tgi" and frames[-1][0] == "end"
    assert frames[-1][1]["tokens_out"] == 5
