"""Models on demand on real llama-servers (RES-101..106, RES-201, RES-204).

Three GGUF files the project generates (the tiny model's shape, three weight seeds: three
different models to llama.cpp) as three on-demand pools, on one declared card sized so that
only some of them fit at once. The engines are the packaged CPU build; the card's VRAM is
the declared arithmetic the placement does for a real one.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from orchestratord.config import PoolConfig
from orchestratord.devices.inventory import MIB
from orchestratord.models.gguf_shape import read_model_shape
from orchestratord.models.tiny_gguf import write_tiny_model
from orchestratord.placement.fit import replica_need
from orchestratord.replicas.engine_process import llama_server_binary
from tests.sse import SSEParser
from xtask.fakes.live_server import LiveServer, default_live_config, live_server, task_body

pytestmark = pytest.mark.e2e

LLORCH = str(Path(sys.executable).with_name("llorch"))
NAMES = ("alpha", "beta", "gamma")
RESERVE_MB = 64


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("models")
    found = {}
    for seed, name in enumerate(NAMES, 11):
        found[name] = directory / f"{name}.gguf"
        write_tiny_model(found[name], seed=seed)
    return found


def pool(name: str, path: Path, **fields: Any) -> dict[str, Any]:
    return {"id": name, "model_ref": name, "model_path": str(path), "residency": "on-demand",
            "devices": [0], "slots": 2, "ctx_max": 512, "queue": {"capacity": 64},
            **fields}  # fmt: skip


def need_mb(path: Path) -> int:
    config = PoolConfig(id="x", model_ref="m", model_path=path, slots=2, ctx_max=512, devices=[0])
    return -(-replica_need(config, read_model_shape(path), RESERVE_MB * MIB).total() // MIB)


def config_for(
    tmp_path: Path, models: dict[str, Path], room_for: int, pools: list[dict[str, Any]],
    **residency: Any,
) -> dict[str, Any]:  # fmt: skip
    """One declared card with room for ``room_for`` of these models."""
    need = need_mb(models["alpha"])
    free = need * room_for + need // 2
    total = max(256, free)
    config = default_live_config(tmp_path)
    card = {"index": 0, "name": "card", "vram_total_mb": total, "vram_used_mb": total - free}
    config["gpus"] = {"source": "declared", "reserve_mb": RESERVE_MB, "declared": [card]}
    config["pools"] = pools
    config["residency"] = {"swap_wait_ms": 300, **residency}
    return config


def stream(client: httpx.Client, body: dict[str, Any]) -> list[tuple[str, Any]]:
    assert client.post("/v1/tasks", json=body).status_code == 202
    return frames_of(client, body["task_id"])


def frames_of(client: httpx.Client, task_id: str) -> list[tuple[str, Any]]:
    """An admitted task's stream, read to its terminal frame."""
    parser = SSEParser()
    with client.stream("GET", f"/v1/tasks/{task_id}/stream") as response:
        for chunk in response.iter_raw():
            if any(e in ("end", "error") for e, _ in parser.feed(chunk)):
                break
    return parser.frames


@contextmanager
def serving(config: dict[str, Any]) -> Iterator[tuple[LiveServer, httpx.Client]]:
    with (
        live_server(config) as server,
        httpx.Client(base_url=server.url, headers=server.auth, timeout=60) as client,
    ):
        yield server, client


def engines(server: LiveServer) -> list[psutil.Process]:
    return [p for p in psutil.Process(server.pid).children() if p.is_running()]


def residency(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {s["id"]: s["residency"] for s in client.get("/v1/replicasets").json()}


def wait_for(check: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.req("RES-101", "RES-201", "RES-204", "RES-202")
def test_a_model_loads_on_its_first_task_and_unloads_after_its_keep_alive(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    # Loaded until the test's last task asks for a short keep-alive: the CLI calls between may
    # take as long as a loaded machine needs.
    pools = [pool("alpha", models["alpha"], keep_alive_ms=600_000)]
    with live_server(config_for(tmp_path, models, 2, pools)) as server:
        assert engines(server) == []  # nothing loaded at start
        env = {**os.environ, "LLORCH_URL": server.url, "LLORCH_API_TOKEN": server.token}
        run = subprocess.run([LLORCH, "run", "Once upon a time", "--model", "alpha",
                              "--max-tokens", "8"], capture_output=True, text=True, env=env,
                             timeout=120, check=False)  # fmt: skip
        ps_loaded = subprocess.run([LLORCH, "ps"], capture_output=True, text=True, env=env,
                                   timeout=60, check=False).stdout  # fmt: skip
        with httpx.Client(base_url=server.url, headers=server.auth, timeout=60) as client:
            frames = stream(client, task_body(model_ref="alpha", ctx=512, max_tokens=4))
            loaded = residency(client)["alpha"]
            last = task_body(model_ref="alpha", ctx=512, max_tokens=2, keep_alive_ms=300)
            assert stream(client, last)[-1][0] == "end"
            wait_for(lambda: residency(client)["alpha"]["state"] == "unloaded", 60)
            left = engines(server)
    assert run.returncode == 0, run.stderr
    assert "queued: 0 ahead" in run.stderr and "loading alpha on GPU0" in run.stderr
    assert "loading alpha on GPU0: ready in" in run.stderr
    assert run.stdout.strip()  # the engine's tokens came after the wait lines
    assert "alpha" in ps_loaded and "loaded" in ps_loaded and "GPU0" in ps_loaded
    assert frames[0][0] == "started"  # already loaded: no wait to report
    assert loaded["state"] == "loaded" and loaded["last_load_ms"] is not None
    assert left == []  # the engine process is gone after the keep-alive


@pytest.mark.req("RES-201", "RES-107")
def test_a_waiting_stream_hears_queued_then_loading_then_started(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    with serving(config_for(tmp_path, models, 2, [pool("beta", models["beta"])])) as (
        _server,
        client,
    ):
        body = task_body(model_ref="beta", ctx=512, max_tokens=4)
        admitted = client.post("/v1/tasks", json=body)
        parser = SSEParser()
        with client.stream("GET", f"/v1/tasks/{body['task_id']}/stream") as response:
            for chunk in response.iter_raw():
                if any(e in ("end", "error") for e, _ in parser.feed(chunk)):
                    break
        measured = residency(client)["beta"]["last_load_ms"]
        unloaded = client.post("/v1/pools/beta/unload")
        wait_for(lambda: residency(client)["beta"]["state"] == "unloaded")
        again = task_body(model_ref="beta", ctx=512, max_tokens=2)
        readmitted = client.post("/v1/tasks", json=again)
        after = frames_of(client, again["task_id"])
    events = [e for e, _ in parser.frames]
    assert admitted.json()["predicted_start_ms"] > 0  # the estimated load is in it
    # After a real load, the next 202 for the unloaded pool predicts that measured load:
    # what is left of it when the answer is made (the load begins with the admission).
    assert unloaded.status_code == 202 and measured is not None and measured > 0
    predicted = readmitted.json()["predicted_start_ms"]
    assert measured - 1000 <= predicted <= measured, (predicted, measured)
    assert after[-1][0] == "end"
    assert events[0] == "queued" and parser.frames[0][1]["waiting_for"] == "load"
    first_token = events.index("token")
    assert events.index("started") < first_token and events[-1] == "end"
    assert all(e in ("queued", "loading") for e in events[: events.index("started")])


@pytest.mark.req("RES-103", "RES-102")
def test_the_cheapest_idle_model_to_lose_is_evicted(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    """Room for two of three: gamma's load evicts whichever of alpha (asked for 6 times) and
    beta (once) costs least to lose, by their measured load times x (1 + recent demand)."""
    pools = [pool(name, models[name]) for name in NAMES]
    demand = {"alpha": 6, "beta": 1}
    with serving(config_for(tmp_path, models, 2, pools, swap_wait_ms=0)) as (_server, client):
        for name, times in demand.items():
            for _ in range(times):
                frames = stream(client, task_body(model_ref=name, ctx=512, max_tokens=2))
                assert frames[-1][0] == "end"
        measured = {n: residency(client)[n]["last_load_ms"] for n in demand}
        assert stream(client, task_body(model_ref="gamma", ctx=512, max_tokens=2))[-1][0] == "end"
        states = {n: r["state"] for n, r in residency(client).items()}
    cost = {n: measured[n] * (1 + demand[n]) for n in demand}
    victim = min(cost, key=cost.__getitem__)
    kept = next(n for n in demand if n != victim)
    assert states == {victim: "unloaded", kept: "loaded", "gamma": "loaded"}, (states, cost)


@pytest.mark.req("RES-105", "RES-103", "RES-104")
def test_alternating_models_under_load_kill_nothing_and_swap_a_bounded_number_of_times(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    """Room for one model; six clients alternate alpha and beta for about 6 s, 48 tasks.
    Every task ends normally (no swap cuts a running or queued task), and the models are
    swapped in batches: far fewer swaps than alternations."""
    pools = [pool(name, models[name]) for name in ("alpha", "beta")]
    results: list[str] = []

    def client_loop(server: LiveServer, offset: int) -> None:
        with httpx.Client(base_url=server.url, headers=server.auth, timeout=120) as client:
            for n in range(8):
                name = ("alpha", "beta")[(n + offset) % 2]
                body = task_body(model_ref=name, ctx=512, max_tokens=24,
                                 sampler_profile_version="fixed-length")  # fmt: skip
                frames = stream(client, body)
                results.append(f"{frames[-1][0]}:{frames[-1][1].get('finish_reason')}")

    with live_server(config_for(tmp_path, models, 1, pools, swap_wait_ms=500)) as server:
        threads = [threading.Thread(target=client_loop, args=(server, k)) for k in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
    swaps = sum(
        float(line.split()[-1]) for line in metrics.splitlines()
        if line.startswith("model_swaps_total{")
    )  # fmt: skip
    assert len(results) == 48 and set(results) == {"end:length"}, results
    assert 1 <= swaps <= 16, swaps  # 48 alternating tasks, batched


@pytest.mark.req("RES-106")
def test_a_bad_model_file_fails_its_load_and_leaves_the_other_models_alone(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(models["gamma"].read_bytes()[:4096])  # a truncated download
    pools = [pool("alpha", models["alpha"]), pool("gamma", broken)]
    config = config_for(tmp_path, models, 2, pools, load_failure_backoff_ms=60_000)
    config["pools"][1]["model_path"] = str(broken)
    with serving(config) as (_server, client):
        good = stream(client, task_body(model_ref="alpha", ctx=512, max_tokens=2))
        bad = stream(client, task_body(model_ref="gamma", ctx=512, max_tokens=2))
        refused = client.post("/v1/tasks", json=task_body(model_ref="gamma", ctx=512))
        again = stream(client, task_body(model_ref="alpha", ctx=512, max_tokens=2))
        states = residency(client)
    assert good[-1][0] == "end" and again[-1][0] == "end"
    assert bad[-1][0] == "error" and bad[-1][1]["code"] == "MODEL_LOAD_FAILED"
    assert refused.status_code == 503 and refused.json()["code"] == "MODEL_LOAD_FAILED"
    assert states["gamma"]["state"] == "failed" and states["alpha"]["state"] == "loaded"


def slow_start_binary(tmp_path: Path, seconds: float) -> Path:
    """llama-server, started only after ``seconds``: a load long enough to act during."""
    wrapper = tmp_path / "slow-llama-server"
    wrapper.write_text(f'#!/bin/sh\nsleep {seconds}\nexec {llama_server_binary()} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper


@pytest.mark.req("RES-106", "RES-101")
def test_a_kill_during_a_load_and_a_deadline_during_a_load(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    slow = {"binary": str(slow_start_binary(tmp_path, 3.0))}
    pools = [pool("alpha", models["alpha"], llamacpp=slow),
             pool("beta", models["beta"], llamacpp=slow)]  # fmt: skip
    config = config_for(tmp_path, models, 2, pools, load_failure_backoff_ms=60_000)
    with serving(config) as (server, client):
        # A deadline shorter than the load: the task ends, the load goes on.
        late = stream(client, task_body(model_ref="beta", ctx=512, deadline_ms=800))
        # A kill while alpha's engine is still starting.
        body = task_body(model_ref="alpha", ctx=512, max_tokens=2)
        assert client.post("/v1/tasks", json=body).status_code == 202
        wait_for(lambda: any("alpha" in " ".join(p.cmdline()) for p in engines(server)))
        (starting,) = [p for p in engines(server) if "alpha" in " ".join(p.cmdline())]
        starting.send_signal(signal.SIGKILL)
        parser = SSEParser()
        with client.stream("GET", f"/v1/tasks/{body['task_id']}/stream") as response:
            for chunk in response.iter_raw():
                if any(e in ("end", "error") for e, _ in parser.feed(chunk)):
                    break
        wait_for(lambda: residency(client)["beta"]["state"] == "loaded")
        states = residency(client)
    assert late[-1][0] == "error" and late[-1][1]["code"] == "DEADLINE_UNMET"
    assert parser.frames[-1][0] == "error" and parser.frames[-1][1]["code"] == "MODEL_LOAD_FAILED"
    assert states["alpha"]["state"] == "failed"
    assert states["beta"]["state"] == "loaded"  # the deadline did not stop beta's load


@pytest.mark.req("RES-203", "RES-204")
def test_stop_unloads_an_idle_model_and_refuses_a_busy_one(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    pools = [pool("alpha", models["alpha"], ctx_max=4096)]
    with serving(config_for(tmp_path, models, 2, pools)) as (server, client):
        env = {**os.environ, "LLORCH_URL": server.url, "LLORCH_API_TOKEN": server.token}

        def llorch(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([LLORCH, *args], capture_output=True, text=True, env=env,
                                  timeout=120, check=False)  # fmt: skip

        # Work for several seconds: two long tasks decoding, more queued behind them.
        bodies = [task_body(model_ref="alpha", ctx=4096, max_tokens=4000,
                            sampler_profile_version="fixed-length") for _ in range(12)]  # fmt: skip
        for body in bodies:
            assert client.post("/v1/tasks", json=body).status_code == 202
        wait_for(lambda: residency(client)["alpha"]["state"] == "loaded")
        busy = llorch("stop", "alpha")
        for body in bodies:
            client.post(f"/v1/tasks/{body['task_id']}/cancel")
        wait_for(lambda: client.get("/v1/pools/alpha/health").json()["metrics"]["slots_free"] == 2)
        stopped = llorch("stop", "alpha")
        wait_for(lambda: residency(client)["alpha"]["state"] == "unloaded")
        gone = engines(server)
    assert busy.returncode == 1 and "running" in busy.stderr and "queued" in busy.stderr
    assert stopped.returncode == 0 and "unloading alpha" in stopped.stdout
    assert gone == []


def gated_binary(tmp_path: Path, gate: Path) -> Path:
    """llama-server, started only once the test creates ``gate``: a load held for exactly
    as long as the test needs, as a real 5-30 s model load is, on a machine of any speed."""
    wrapper = tmp_path / f"gated-llama-server-{gate.name}"
    wrapper.write_text(
        f'#!/bin/sh\nwhile [ ! -e "{gate}" ]; do sleep 0.05; done\n'
        f'exec {llama_server_binary()} "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper


def server_cpu_s(server: LiveServer) -> float:
    """orchestratord's own CPU seconds (its engines and wrappers are other processes)."""
    times = psutil.Process(server.pid).cpu_times()
    return float(times.user + times.system)


def engine_serving(server: LiveServer, model: Path) -> psutil.Process:
    """The llama-server process (not its wrapper) that serves ``model``."""
    found: list[psutil.Process] = []

    def look() -> bool:
        for child in psutil.Process(server.pid).children(recursive=True):
            try:
                line = child.cmdline()
            except psutil.Error:  # a process that exited while we looked
                continue
            if line and "llama-server" in Path(line[0]).name and str(model) in line:
                found[:] = [child]
                return True
        return False

    try:
        wait_for(look)
    except AssertionError:
        seen = []
        for child in psutil.Process(server.pid).children(recursive=True):
            try:
                seen.append(child.cmdline())
            except psutil.Error:
                continue
        raise AssertionError(f"no llama-server for {model} among {seen}") from None
    return found[0]


def cpu_over_a_quiet_window(server: LiveServer) -> float:
    cpu = server_cpu_s(server)
    time.sleep(IDLE_WINDOW_S)
    return server_cpu_s(server) - cpu


def counter(metrics: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return sum(
        float(line.split()[-1]) for line in metrics.splitlines()
        if line.startswith(name + "{") and wanted in line
    )  # fmt: skip


class StreamReader(threading.Thread):
    """Reads one task's stream in the background, frame by frame."""

    def __init__(self, server: LiveServer, task_id: str) -> None:
        super().__init__(daemon=True)
        self.server, self.task_id = server, task_id
        self.parser = SSEParser()

    def run(self) -> None:
        with (
            httpx.Client(base_url=self.server.url, headers=self.server.auth, timeout=120) as c,
            c.stream("GET", f"/v1/tasks/{self.task_id}/stream") as response,
        ):
            for chunk in response.iter_raw():
                if any(e in ("end", "error") for e, _ in self.parser.feed(chunk)):
                    return

    @property
    def events(self) -> list[str]:
        return [e for e, _ in self.parser.frames]


def held_pools(tmp_path: Path, models: dict[str, Path], gates: dict[str, Path]) -> list[Any]:
    """alpha and beta behind their gates, on a card for one; a pinned pool on the CPU."""
    held = [
        pool(name, models[name], llamacpp={"binary": str(gated_binary(tmp_path, gate))})
        for name, gate in gates.items()
    ]
    steady = {"id": "steady", "model_ref": "steady", "model_path": str(models["gamma"]),
              "devices": [], "slots": 1, "ctx_max": 512}  # fmt: skip
    return [*held, steady]


IDLE_WINDOW_S = 2.0
IDLE_CPU_SHARE = 0.25  # an idle server uses a few percent; a spinning planner a whole core


def stream_of(server: LiveServer, client: httpx.Client, body: dict[str, Any]) -> StreamReader:
    """Submit ``body`` and read its stream in the background."""
    assert client.post("/v1/tasks", json=body).status_code == 202
    reader = StreamReader(server, body["task_id"])
    reader.start()
    return reader


@pytest.mark.req("RES-104", "RES-108", "RES-105")
def test_a_held_load_and_a_held_decode_leave_the_server_idle_and_every_other_pool_served(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    """Room for one model. alpha's load is held by the test (its llama-server starts only
    when the test creates a file) and beta's task waits for the room: meanwhile a pinned
    CPU pool serves a whole task, and orchestratord's CPU is that of an idle server. Both
    released, alpha serves its task and gives way to beta. Then beta's engine is stopped
    (SIGSTOP) and a task sent to it, so it is held mid-task; alpha's next task waits past
    the swap wait (beta is closed for it, its task left to finish) and the server is idle
    again. Released, beta's task ends whole, beta is swapped out, alpha loads again and
    its task ends. (A pool that could never fit is a start-up error on a declared card;
    its refusal at admission, when the room shrinks at run time, is
    tests/unit/test_residency_fit.py's.)"""
    gates = {name: tmp_path / f"gate-{name}" for name in ("alpha", "beta")}
    config = config_for(tmp_path, models, 1, held_pools(tmp_path, models, gates),
                        swap_wait_ms=300)  # fmt: skip
    config["server"]["engine_hang_timeout_ms"] = 120_000  # a stopped engine is not "hung"
    with serving(config) as (server, client):
        alpha_first = stream_of(server, client, task_body(model_ref="alpha", ctx=512))
        wait_for(lambda: residency(client)["alpha"]["state"] == "loading")
        beta_first = stream_of(server, client, task_body(model_ref="beta", ctx=512))
        wait_for(lambda: "queued" in beta_first.events)
        # The load is held and beta waits behind it: another pool is served meanwhile.
        steady = stream(client, task_body(model_ref="steady", ctx=512, max_tokens=4))
        load_cpu_s = cpu_over_a_quiet_window(server)
        still_loading = residency(client)["alpha"]["state"]
        for gate in gates.values():
            gate.touch()
        alpha_first.join(timeout=120)
        beta_first.join(timeout=120)
        beta_engine = engine_serving(server, models["beta"])
        beta_engine.send_signal(signal.SIGSTOP)  # what it is sent next, it holds
        try:
            held = stream_of(server, client, task_body(model_ref="beta", ctx=512))
            wait_for(lambda: "started" in held.events)  # on the stopped engine
            alpha_again = stream_of(server, client, task_body(model_ref="alpha", ctx=512))
            wait_for(lambda: "queued" in alpha_again.events)
            decode_cpu_s = cpu_over_a_quiet_window(server)  # alpha waits past its swap wait
            held_state = residency(client)["beta"]["state"]
        finally:
            beta_engine.send_signal(signal.SIGCONT)
        held.join(timeout=120)
        alpha_again.join(timeout=120)
        states = residency(client)
        metrics = client.get("/metrics").text
    print(f"orchestratord CPU over {IDLE_WINDOW_S:g} s: {load_cpu_s:.3f} s with a load held, "
          f"{decode_cpu_s:.3f} s with a decode held")  # fmt: skip
    assert still_loading == "loading" and steady[-1][0] == "end"
    assert load_cpu_s <= IDLE_CPU_SHARE * IDLE_WINDOW_S, f"{load_cpu_s:.2f} s CPU in a held load"
    assert decode_cpu_s <= IDLE_CPU_SHARE * IDLE_WINDOW_S, f"{decode_cpu_s:.2f} s CPU, held decode"
    assert held_state == "loaded"  # the swap never cuts a running task
    for reader in (alpha_first, beta_first, held, alpha_again):
        end = reader.parser.frames[-1]
        assert end[0] == "end" and end[1]["finish_reason"] == "length", end
    assert "loading" in beta_first.events and "loading" in alpha_again.events
    assert states["alpha"]["state"] == "loaded" and states["beta"]["state"] == "unloaded"
    assert counter(metrics, "model_loads_total", pool_id="alpha", result="ok") == 2
    assert counter(metrics, "model_loads_total", pool_id="beta", result="ok") == 1
    assert counter(metrics, "model_swaps_total", pool_id="alpha") == 1
    assert counter(metrics, "model_swaps_total", pool_id="beta") == 1
