"""A pool on a real NVIDIA Triton server (PyTriton's bundled tritonserver, on the CPU).

The server runs ``engines/triton_tiny.py``, a decoupled Python model behind KServe v2
``generate_stream``; orchestratord reaches it as a remote endpoint, like a Triton box on the
network.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.sse import SSEParser
from xtask.fakes.live_server import LiveServer, default_live_config, live_server, task_body
from xtask.fakes.triton_server import TritonServer, triton_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def triton() -> Iterator[TritonServer]:
    with triton_server() as server:
        yield server


@pytest.fixture(scope="module")
def server(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    endpoint = {"url": triton.url, "model": triton.model, "metrics_url": triton.metrics_url}
    config = default_live_config(
        tmp_path_factory.mktemp("triton"),
        id="triton",
        engine="triton",
        model_ref="tiny-words",
        slots=2,
        endpoints=[endpoint],
    )
    with live_server(config) as live:
        yield live


def stream(client: httpx.Client, **fields: object) -> list[tuple[str, object]]:
    body = task_body(model_ref="tiny-words", engine="triton", **fields)
    accepted = client.post("/v1/tasks", json=body)
    assert accepted.status_code == 202, accepted.text
    return SSEParser().feed(client.get(f"/v1/tasks/{body['task_id']}/stream").content)


@pytest.mark.req("ORCH-3058", "ORCH-3054", "OC-ADAPT-5001", "OC-ADAPT-5002")
def test_a_triton_pool_streams_a_real_triton_server(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=60) as client:
        first = stream(client, max_tokens=12, seed=77)
        again = stream(client, max_tokens=12, seed=77)
        other = stream(client, max_tokens=12, seed=78)
        health = client.get("/v1/pools/triton/health").json()

    def text(frames: list[tuple[str, object]]) -> str:
        return "".join(p["t"] for e, p in frames if e == "token")  # type: ignore[index]

    assert [e for e, _ in first].count("token") == 12 and first[-1][0] == "end"
    assert first[0][1]["engine_version"] == "triton 2.51.0"  # type: ignore[index]
    assert text(first) == text(again) != text(other)
    assert health["ready"] is True and health["live"] is True
