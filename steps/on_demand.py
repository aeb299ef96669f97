"""Models-on-demand scenarios: a second orchestratord on ``models-on-demand.yaml``.

The example serves three generated GGUF files (alpha, beta, gamma) as on-demand pools on one
declared card that holds one of them at a time; the scenario writes the files (one may be
broken on purpose) and reads everything from the outside: SSE frames, ``/v1/replicasets``,
the unload endpoint's answers and the metrics scrape.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from orchestratord.models.tiny_gguf import write_tiny_model
from steps.placement import example_config
from tests.sse import SSEParser
from xtask.fakes.held import cancel_while_stopped
from xtask.fakes.live_server import LiveServer, live_server, task_body
from xtask.fakes.tiny_models import FIRST_SEED, NAMES


class OnDemandBox:
    """An orchestratord serving the on-demand example, for one scenario."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self.workdir = Path(self._stack.enter_context(tempfile.TemporaryDirectory()))
        self.config = example_config("models-on-demand.yaml", self.workdir)
        self.config["residency"]["swap_wait_ms"] = 300  # a scenario's patience, not a user's
        self.config["sampler_profiles"] = {"v1": {}, "fixed-length": {"ignore_eos": True}}
        for seed, name in enumerate(NAMES, FIRST_SEED):
            write_tiny_model(self.workdir / f"{name}.gguf", seed=seed)
        for pool in self.config["pools"]:
            pool["model_path"] = str(self.workdir / f"{pool['id']}.gguf")
        self.server: LiveServer | None = None
        self.client: httpx.Client | None = None
        self.frames: dict[str, list[tuple[str, Any]]] = {}
        self.running: list[str] = []
        self.readers: list[threading.Thread] = []
        self.held: list[tuple[str, psutil.Process, threading.Thread]] = []
        self.response: httpx.Response | None = None

    def close(self) -> None:
        for _, engine, _ in self.held:  # a scenario that failed while a task was held
            with contextlib.suppress(psutil.NoSuchProcess):
                engine.resume()
        if self.client is not None and self.server is not None:
            for task_id in self.running:
                self.client.post(f"/v1/tasks/{task_id}/cancel", headers=self.server.auth)
            self.client.close()
        for reader in self.readers:
            reader.join(timeout=30)
        self._stack.close()

    def break_model(self, name: str) -> None:
        path = self.workdir / f"{name}.gguf"
        path.write_bytes(path.read_bytes()[:4096])  # a truncated download

    def serve(self) -> None:
        self.server = self._stack.enter_context(live_server(self.config))
        self.client = httpx.Client(base_url=self.server.url, timeout=60.0)

    def _client(self) -> tuple[httpx.Client, dict[str, str]]:
        assert self.client is not None and self.server is not None, "serve first"
        return self.client, self.server.auth

    # --- tasks ----------------------------------------------------------------------------

    def submit(self, model: str, **fields: Any) -> dict[str, Any]:
        client, auth = self._client()
        body = task_body(**{"model_ref": model, "ctx": 2048, "max_tokens": 8, **fields})
        self.response = client.post("/v1/tasks", json=body, headers=auth)
        return body

    def run(self, model: str) -> None:
        """Submit a task for ``model`` and read its stream to the end."""
        body = self.submit(model)
        assert self.response is not None and self.response.status_code == 202, self.response
        client, auth = self._client()
        parser = SSEParser()
        frames: list[tuple[str, Any]] = []
        with client.stream("GET", f"/v1/tasks/{body['task_id']}/stream", headers=auth) as r:
            for chunk in r.iter_bytes():
                frames.extend(parser.feed(chunk))
        self.frames[model] = frames

    def start_long(self, model: str) -> None:
        """A task for ``model`` decoding when this returns; its stream stays open (a closed
        stream would cancel it) and is read to its end by a thread of its own."""
        body = self.submit(model, max_tokens=1900, sampler_profile_version="fixed-length")
        assert self.response is not None and self.response.status_code == 202, self.response
        self.running.append(body["task_id"])
        assert self.server is not None
        decoding = threading.Event()
        url, auth = f"{self.server.url}/v1/tasks/{body['task_id']}/stream", self.server.auth

        def read() -> None:
            parser = SSEParser()
            with (
                httpx.Client(timeout=120.0) as client,
                client.stream("GET", url, headers=auth) as r,
            ):
                for chunk in r.iter_bytes():
                    if any(event == "token" for event, _ in parser.feed(chunk)):
                        decoding.set()
            decoding.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        self.readers.append(reader)
        assert decoding.wait(60), f"the task for {model} never decoded"
        # Held decoding until it is cancelled, however fast the engine: its engine stops.
        engine = self.engine_of(model)
        engine.suspend()
        self.held.append((body["task_id"], engine, reader))
        assert self.residency()[model]["state"] == "loaded", self.residency()[model]

    def engine_of(self, model: str) -> psutil.Process:
        assert self.server is not None
        path = str(self.workdir / f"{model}.gguf")
        children = psutil.Process(self.server.pid).children()
        (engine,) = [p for p in children if "llama-server" in p.name() and path in p.cmdline()]
        return engine

    def cancel_running(self) -> None:
        """Cancel each running task; a held one's engine runs again once its stream ended."""
        assert self.server is not None, "serve first"
        for task_id, engine, reader in self.held:
            done = cancel_while_stopped(self.server, task_id, engine, partial(reader.join, 60))
            assert done.status_code == 204, (done.status_code, done.text)
        self.held.clear()
        self.running.clear()

    def stop(self, model: str) -> None:
        client, auth = self._client()
        self.response = client.post(f"/v1/pools/{model}/unload", headers=auth)

    # --- what is seen ---------------------------------------------------------------------

    def residency(self) -> dict[str, dict[str, Any]]:
        client, auth = self._client()
        sets = client.get("/v1/replicasets", headers=auth).json()
        return {s["id"]: {**s["residency"], "replicas": s["replicas"]} for s in sets}

    def wait_state(self, model: str, state: str) -> None:
        for _ in range(600):
            if self.residency()[model]["state"] == state:
                return
            time.sleep(0.05)
        raise AssertionError(f"{model} never became {state}: {self.residency()[model]}")

    def metric(self, name: str, **labels: str) -> float:
        client, auth = self._client()
        text = client.get("/metrics", headers=auth).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )
