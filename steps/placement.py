"""Placement scenarios: a second orchestratord on the example mixed-GPU config, and the plan.

The example config declares an RTX 3090 + RTX 3060; its engines run on this machine's CPU
with the GPU flags placement chose. Every check reads an observable: ``/v1/replicasets``,
each engine's own ``/slots``, the metrics scrape, or ``orchestratord plan --json``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from xtask.fakes.live_server import LiveServer, live_server, task_body, wait_until
from xtask.fakes.model_files import write_shaped_gguf

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "config" / "examples"


def example_config(name: str, workdir: Path) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))
    config["server"] = {**config.get("server", {}), "port": 0, "heartbeat_ms": 200}
    config["state_dir"] = str(workdir / "state")
    return config


class MixedBox:
    """An orchestratord serving an example config, for one scenario."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self.server: LiveServer | None = None
        self.client: httpx.Client | None = None
        self.replica_sets: list[dict[str, Any]] = []
        self.plan: dict[str, Any] = {}
        self.accepted: list[str] = []
        self.workdir = Path(self._stack.enter_context(tempfile.TemporaryDirectory()))
        self.config: dict[str, Any] = {}

    def close(self) -> None:
        if self.client is not None and self.server is not None:
            for task_id in self.accepted:
                self.client.post(f"/v1/tasks/{task_id}/cancel", headers=self.server.auth)
            self.client.close()
        self._stack.close()

    # --- config ---------------------------------------------------------------------------

    def load(self, name: str) -> None:
        self.config = example_config(name, self.workdir)

    def add_seven_b_pool(self, pool_id: str, devices: list[int]) -> None:
        """A pool for a llama-2-7B-shaped f16 model (12.6 GiB of weights, a sparse file)."""
        path = self.workdir / "7b-f16.gguf"
        write_shaped_gguf(path, n_layer=32, n_embd=4096, n_head=32, n_head_kv=32, n_ff=11008)
        self.config["pools"].append(
            {
                "id": pool_id,
                "model_ref": "local/llama-7b-f16",
                "model_path": str(path),
                "devices": devices,
                "ctx_max": 4096,
                "slots": 1,
            }
        )

    # --- serving --------------------------------------------------------------------------

    def serve(self) -> None:
        self.server = self._stack.enter_context(live_server(self.config))
        self.client = httpx.Client(base_url=self.server.url, timeout=30.0)

    def _get(self, path: str) -> httpx.Response:
        assert self.client is not None and self.server is not None
        return self.client.get(path, headers=self.server.auth)

    def list_replica_sets(self) -> None:
        response = self._get("/v1/replicasets")
        assert response.status_code == 200, response.text
        self.replica_sets = response.json()

    def replicas(self, pool_id: str) -> list[dict[str, Any]]:
        (found,) = [s for s in self.replica_sets if s["id"] == pool_id]
        return list(found["replicas"])

    def start_long_tasks(self, count: int) -> None:
        assert self.client is not None and self.server is not None
        for _ in range(count):
            body = task_body(
                task_id=str(uuid.uuid4()),
                max_tokens=1900,
                sampler_profile_version="fixed-length",
                prompt="load",
            )
            response = self.client.post("/v1/tasks", json=body, headers=self.server.auth)
            assert response.status_code == 202, response.text
            self.accepted.append(body["task_id"])

    def engine_busy(self, replica_id: str) -> bool:
        assert self.server is not None
        socket = Path(self.config["state_dir"]) / "engines" / f"{replica_id}.sock"
        transport = httpx.HTTPTransport(uds=str(socket))
        with httpx.Client(base_url="http://localhost", transport=transport, timeout=5.0) as c:
            return any(s["is_processing"] for s in c.get("/slots").json())

    def wait_all_decoding(self, replica_ids: list[str]) -> None:
        """Polls the engines themselves until every one is decoding at the same moment."""
        wait_until(
            lambda: all(self.engine_busy(r) for r in replica_ids),
            f"{replica_ids} all decoding at once",
        )

    def started_per_replica(self) -> dict[str, float]:
        text = self._get("/metrics").text
        started: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "tasks_started_total":
                    replica = sample.labels["replica_id"]
                    started[replica] = started.get(replica, 0.0) + sample.value
        return started

    # --- planning -------------------------------------------------------------------------

    def run_plan(self) -> None:
        path = self.workdir / "config.yaml"
        path.write_text(yaml.safe_dump(self.config), encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "-m", "orchestratord", "plan", "--config", str(path), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        self.plan = json.loads(done.stdout)

    def planned_devices(self, pool_id: str) -> list[list[int]]:
        (pool,) = [p for p in self.plan["pools"] if p["id"] == pool_id]
        return [list(r["devices"]) for r in pool["replicas"]]
