"""A pool served by an engine orchestratord did not start (``endpoints``).

The llama-server here is started by the test itself, outside orchestratord, on a loopback
port and with its own API key, as it would run on another machine. orchestratord only
health-checks it, then queues, places and streams exactly as for a spawned engine. Bad
endpoints (nothing listening, a server speaking another protocol) leave that replica Unready
with a reason while the rest of orchestratord serves.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import psutil
import pytest

from orchestratord.models.tiny_gguf import default_cache_dir, ensure_tiny_model
from orchestratord.replicas.engine_process import free_loopback_port, llama_server_binary
from tests.sse import SSEParser
from xtask.fakes.live_server import LiveServer, default_live_config, live_server, task_body

pytestmark = pytest.mark.e2e

ENGINE_KEY = "remote-engine-key-0123456789"


@pytest.fixture(scope="module")
def outside_engine() -> Iterator[str]:
    model = ensure_tiny_model(default_cache_dir())
    port = free_loopback_port()
    args = [str(llama_server_binary()), "--model", str(model), "--host", "127.0.0.1"]
    args += ["--port", str(port), "--parallel", "2", "--ctx-size", "4096", "--api-key", ENGINE_KEY]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class _NotAnEngine(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>a web page, not an engine</html>"
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def other_protocol() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotAnEngine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def remote(
    outside_engine: str, other_protocol: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    workdir = tmp_path_factory.mktemp("remote")
    token_file = workdir / "engine-key"
    token_file.write_text(ENGINE_KEY + "\n")
    os.chmod(token_file, 0o600)
    config = default_live_config(
        workdir,
        id="far",
        model_ref="remote/tiny",
        model_path=str(ensure_tiny_model(default_cache_dir())),
        endpoints=[{"url": outside_engine, "token_file": str(token_file)}],
    )
    config["pools"] += [
        {
            # vLLM cannot run here; llama-server serves the same OpenAI-compatible protocol
            # (/v1/models, /tokenize, streamed /v1/completions with usage and [DONE]), so
            # the vllm adapter is driven against a real engine through it.
            "id": "openai",
            "engine": "vllm",
            "model_ref": "remote/openai",
            "slots": 2,
            "endpoints": [{"url": outside_engine, "token_file": str(token_file)}],
        },
        {
            "id": "nowhere",
            "model_ref": "remote/nowhere",
            "endpoints": [{"url": f"http://127.0.0.1:{free_loopback_port()}"}],
        },
        {"id": "webpage", "model_ref": "remote/webpage", "endpoints": [{"url": other_protocol}]},
    ]
    config["server"]["engine_restart_backoff_ms"] = 50
    with live_server(config) as server:
        yield server


def client(server: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=server.auth, timeout=30)


@pytest.mark.req("ORCH-3054", "ORCH-3055", "OC-ADAPT-5001")
def test_a_remote_engine_is_used_not_spawned(remote: LiveServer, outside_engine: str) -> None:
    children = [p.name() for p in psutil.Process(remote.pid).children(recursive=True)]
    assert not [name for name in children if "llama-server" in name]
    with client(remote) as c:
        body = task_body(
            model_ref="remote/tiny", max_tokens=8, sampler_profile_version="fixed-length"
        )
        assert c.post("/v1/tasks", json=body).status_code == 202
        stream = c.get(f"/v1/tasks/{body['task_id']}/stream").text
        assert stream.count("event: token") == 8 and "event: end" in stream
        (far,) = [s for s in c.get("/v1/replicasets").json() if s["id"] == "far"]
    (replica,) = far["replicas"]
    assert replica["endpoint"] == outside_engine and replica["devices"] == []
    assert replica["ready"] is True and replica["model_digest"].startswith("sha256:")


@pytest.mark.req("ORCH-3018")
def test_an_unreachable_or_foreign_endpoint_is_an_unready_replica_with_a_reason(
    remote: LiveServer,
) -> None:
    with client(remote) as c:
        nowhere = c.get("/v1/pools/nowhere/health").json()
        webpage = c.get("/v1/pools/webpage/health").json()
        refused = c.post("/v1/tasks", json=task_body(model_ref="remote/nowhere"))
    assert nowhere["ready"] is False and nowhere["live"] is False
    assert nowhere["last_error"] == "engine start failed: the engine is unavailable"
    assert webpage["ready"] is False
    assert webpage["last_error"] == "engine start failed: the engine answered HTTP 404"
    assert refused.status_code == 503 and refused.json()["code"] == "POOL_UNREADY"
    assert int(refused.headers["Retry-After"]) >= 1


@pytest.mark.req("OC-CTRL-2041")
def test_the_engine_key_goes_only_to_the_engine(remote: LiveServer, outside_engine: str) -> None:
    # The engine really wants its key (so the streamed task above proves it was sent) ...
    assert httpx.post(outside_engine + "/completion", json={"prompt": "a"}).status_code == 401
    # ... and orchestratord never shows it to its own clients or in its output.
    with client(remote) as c:
        paths = ("/v1/replicasets", "/v1/pools/far/health", "/v1/capabilities")
        texts = [c.get(p).text for p in paths]
    assert not [t for t in texts if ENGINE_KEY in t]
    assert ENGINE_KEY not in "\n".join(remote.output)


@pytest.mark.req("ORCH-3056", "ORCH-3054", "OC-ADAPT-5001", "OC-ADAPT-5002")
def test_the_vllm_adapter_streams_a_real_engine_through_its_openai_api(
    remote: LiveServer,
) -> None:
    with client(remote) as c:
        caps = c.get("/v1/capabilities").json()
        body = task_body(
            model_ref="remote/openai",
            engine="vllm",
            max_tokens=6,
            seed=11,
            sampler_profile_version="fixed-length",
        )
        accepted = c.post("/v1/tasks", json=body)
        assert accepted.status_code == 202, accepted.text
        frames = SSEParser().feed(c.get(f"/v1/tasks/{body['task_id']}/stream").content)
        again = {**body, "task_id": str(uuid.uuid4())}
        assert c.post("/v1/tasks", json=again).status_code == 202
        repeat = SSEParser().feed(c.get(f"/v1/tasks/{again['task_id']}/stream").content)
    assert "vllm" in [e["engine"] for e in caps["engines"]]
    kinds = [event for event, _ in frames]
    assert kinds[0] == "started" and kinds[-1] == "end" and kinds.count("token") == 6
    end = frames[-1][1]
    assert end["tokens_out"] == 6 and end["finish_reason"] == "length"
    text = "".join(p["t"] for e, p in frames if e == "token")
    assert text and text == "".join(p["t"] for e, p in repeat if e == "token")  # same seed
    # The public API is OrchQueue v1 only: no OpenAI shapes reach the client.
    assert not [p for _, p in frames if isinstance(p, dict) and "choices" in p]
