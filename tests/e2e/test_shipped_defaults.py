"""Defaults exercised as shipped, on a real server and engine: the loopback bind with no host
given, a CPU replica that sees no GPU, OTLP spans received by a real HTTP endpoint, the
self-test after a restart, and a model retired from the CLI draining its pool."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from orchestratord.models.tiny_gguf import ensure_tiny_model
from xtask.fakes.held import managed_engine
from xtask.fakes.live_server import LiveServer, default_live_config, live_server, task_body

pytestmark = pytest.mark.e2e

LLORCH = str(Path(sys.executable).with_name("llorch"))


def run_task(server: LiveServer, max_tokens: int = 4) -> tuple[str, str]:
    """(task_id, its whole stream)."""
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=30) as client:
        body = task_body(max_tokens=max_tokens)
        assert client.post("/v1/tasks", json=body).status_code == 202
        return body["task_id"], client.get(f"/v1/tasks/{body['task_id']}/stream").text


@pytest.mark.req("HOME-101", "FR-SI-001", "OC-POOL-3020", "HARD-112")
def test_with_no_host_given_it_listens_on_loopback_and_the_cpu_engine_sees_no_gpu(
    tmp_path: Path,
) -> None:
    config = default_live_config(tmp_path)
    del config["server"]["host"]  # as shipped: nothing says where to bind
    with live_server(config) as server:
        listening = [
            c.laddr.ip
            for c in psutil.Process(server.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        engine = managed_engine(server)
        environ = dict(
            item.split("=", 1)
            for item in Path(f"/proc/{engine.pid}/environ").read_text().split("\0")
            if "=" in item
        )
        cmdline = engine.cmdline()
        metrics = httpx.get(server.url + "/metrics", timeout=5)  # open on loopback
        assert "event: end" in run_task(server)[1]
    assert server.url.startswith("http://127.0.0.1:")
    assert listening == ["127.0.0.1"]
    assert environ["CUDA_VISIBLE_DEVICES"] == ""  # a CPU pool's engine sees no card at all
    assert cmdline[cmdline.index("--n-gpu-layers") + 1] == "0"
    assert metrics.status_code == 200


class _Collector(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def otlp_collector() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    received: list[tuple[str, str, bytes]] = []
    handler = type("Collector", (_Collector,), {"received": received})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1/traces", received
    httpd.shutdown()


@pytest.mark.req("FR-OB-002")
def test_task_spans_reach_a_real_otlp_http_endpoint(
    tmp_path: Path, otlp_collector: tuple[str, list[tuple[str, str, bytes]]]
) -> None:
    endpoint, received = otlp_collector
    config = default_live_config(tmp_path)
    config["tracing"] = {"enabled": True, "otlp_endpoint": endpoint}
    with live_server(config) as server:
        task_id, stream = run_task(server)
        output = server.output
    # The server flushed its spans on the way down (SIGTERM).
    assert "event: end" in stream
    assert received, "no OTLP export arrived:\n" + "\n".join(output[-30:])
    spans = []
    for path, content_type, body in received:
        assert path == "/v1/traces" and content_type == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                spans += list(scope.spans)
    names = {span.name for span in spans}
    assert {"task", "admission", "queue", "decode", "stream"} <= names, names
    task_span = next(s for s in spans if s.name == "task")
    attributes = {a.key: a.value.string_value for a in task_span.attributes}
    assert task_id in attributes.values()


@pytest.mark.req("ORCH-3049", "OC-POOL-3010")
def test_the_self_test_runs_again_after_an_engine_restart(tmp_path: Path) -> None:
    config = default_live_config(tmp_path, server={"engine_restart_backoff_ms": 50})
    passed = re.compile(r"replica default-r0: self-test passed")
    with live_server(config) as server:
        managed_engine(server).send_signal(signal.SIGKILL)
        # The server's output is read by a thread of the test: wait until the second pass
        # (after the restart) has been read, or give up after 30 s.
        for _ in range(600):
            output = "\n".join(server.output)
            if len(passed.findall(output)) >= 2:
                break
            time.sleep(0.05)
    passes = [m.start() for m in passed.finditer(output)]
    restart = output.index("replica default-r0: engine exited")
    assert len(passes) == 2 and passes[0] < restart < passes[1], output[-3000:]


@pytest.mark.req("FR-CP-001", "ORCH-3071", "HOME-502")
def test_a_model_registered_verified_and_retired_from_the_cli_drains_its_pool(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    model = models / "tiny-copy.gguf"
    model.write_bytes(ensure_tiny_model(tmp_path / "gen").read_bytes())
    digest = "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    config = default_live_config(tmp_path)
    config["catalog"] = {"model_dirs": [str(models)]}
    with live_server(config) as server:
        env = {**os.environ, "LLORCH_URL": server.url, "LLORCH_API_TOKEN": server.token}

        def llorch(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([LLORCH, *args], capture_output=True, text=True, env=env,
                                  timeout=120, check=False)  # fmt: skip

        added = llorch("models", "add", "tiny-copy", "--digest", digest,
                       "--source-url", model.as_uri())  # fmt: skip
        verified = llorch("models", "verify", "tiny-copy")
        reloaded = llorch("pools", "reload", "default", "tiny-copy", "--wait")
        retired = llorch("--json", "models", "retire", "tiny-copy", "--deadline-ms", "0")
        health = llorch("--json", "pools", "health", "default")
        refused = llorch("run", "hello", "--model", "tiny-copy", "--max-wait-s", "1")
    assert added.returncode == 0, added.stderr
    assert verified.returncode == 0 and "trust_gap" in verified.stdout, verified.stderr
    assert reloaded.returncode == 0, reloaded.stderr
    assert retired.returncode == 0, retired.stderr
    assert '"pools_draining": [\n    "default"\n  ]' in retired.stdout
    assert '"draining": true' in health.stdout and "Retired" in health.stdout
    assert refused.returncode == 1 and "MODEL_DEPRECATED" in refused.stderr
