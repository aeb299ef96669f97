"""``python -m xtask bench swap``: a model that is not loaded, to its first token; and two
models requested alternately under concurrent traffic.

Side by side in one run, on the same two generated GGUF files (the tiny model's shape, two
weight seeds) with the same engine flags (ctx 4096 over 2 slots, CPU):

- **cold**: ``llama-server`` started for the model, from spawn to its first streamed token:
  the limit, since nothing serves a model before its own engine has started.
- **router**: ``llama-server`` router mode (``--models-dir``, ``--models-max 1``): one
  client switching models, each request to its first token (the other model unloaded by the
  router for it).
- **orchestratord**: two on-demand pools on a declared card that holds one of them, default
  residency settings: the same switching, ``POST /v1/tasks`` to the first ``token`` frame
  (the load includes the engine self-test every engine passes before Ready).

Then two workloads of two models requested alternately under concurrent traffic, through
the router and through orchestratord: ``--clients`` threads of ``--tasks-per-client``
streamed requests each. In the first, every client alternates between the models (its next
task always wants the other model, so no policy can batch: about one swap per client round);
in the second, each client keeps to one model and neighbours to the other, so tasks for both
arrive all the time, interleaved. Reported: tasks that ended normally, loads (swaps: loads -
1), wall time, and each task's wait (request to first token), p50 and p99. A task that did
not end normally counts only in "ended ok"'s shortfall; its wait is the time until it failed.
Every request opens its own connection, on both sides (llama-server drops keep-alive after a
streamed response).
"""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from orchestratord.models.tiny_gguf import write_tiny_model
from orchestratord.replicas.engine_process import llama_server_binary
from tests.sse import SSEParser
from xtask.fakes.live_server import LiveServer, default_live_config, live_server, task_body

MODELS = ("alpha", "beta")
ENGINE_FLAGS = ["--ctx-size", "4096", "--parallel", "2", "--n-gpu-layers", "0", "--no-webui"]
PROMPT = "Once upon a time"
ALTERNATING_TOKENS = 24
# Each client alternates models / each client keeps to one model (tasks for both all the time).
WORKLOADS = {"alternating_clients": True, "one_model_per_client": False}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _first_token_s(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, bool]:
    """Seconds from the request to the first streamed token, and whether it ended normally."""
    start = time.perf_counter()
    first: float | None = None
    ok = False
    with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            return time.perf_counter() - start, False
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            text = data.get("content") or (data.get("choices") or [{}])[0].get("text")
            if text and first is None:
                first = time.perf_counter()
            if data.get("stop") or (data.get("choices") or [{}])[0].get("finish_reason"):
                ok = True
    return (first or time.perf_counter()) - start, ok


def _wait_healthy(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url + "/health").status_code == 200:
                    return
            time.sleep(0.001)  # the limit: found healthy as soon as it is
    raise RuntimeError(f"{url} not healthy after {timeout_s} s")


# --- the limit: llama-server's own cold start ------------------------------------------------


def engine_cold_s(model: Path) -> float:
    """Spawn llama-server for ``model``; seconds from spawn to its first streamed token."""
    port = _free_port()
    argv = [str(llama_server_binary()), "--model", str(model), *ENGINE_FLAGS,
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url)
        body = {"prompt": PROMPT, "n_predict": 8, "stream": True, "seed": 1}
        with httpx.Client(timeout=60.0) as client:
            asked = time.perf_counter()
            token_s, _ = _first_token_s(client, url + "/completion", body)
        return asked - start + token_s
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- llama-server's router mode ---------------------------------------------------------------


@contextlib.contextmanager
def router(models_dir: Path, log: Path) -> Iterator[str]:
    port = _free_port()
    argv = [str(llama_server_binary()), "--models-dir", str(models_dir), "--models-max", "1",
            *ENGINE_FLAGS, "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def router_loads(log: Path) -> int:
    return log.read_text(errors="replace").count("spawning server instance with name=")


Task = Callable[[str], tuple[float, bool]]


def router_task(url: str) -> Task:
    def one(model: str) -> tuple[float, bool]:
        body = {"model": model, "prompt": PROMPT, "max_tokens": ALTERNATING_TOKENS,
                "stream": True, "ignore_eos": True, "seed": 1}  # fmt: skip
        with httpx.Client(timeout=300.0) as client:  # a connection per request, both sides
            return _first_token_s(client, url + "/v1/completions", body)

    return one


# --- orchestratord --------------------------------------------------------------------------


def orchestratord_config(workdir: Path, models: dict[str, Path]) -> dict[str, Any]:
    config = default_live_config(workdir)
    config["gpus"] = {
        "source": "declared",
        "reserve_mb": 512,
        "declared": [{"index": 0, "name": "one-model card", "vram_total_mb": 1024}],
    }
    config["pools"] = [
        {"id": name, "model_ref": name, "model_path": str(path), "residency": "on-demand",
         "devices": [0], "slots": 2, "ctx_max": 2048, "queue": {"capacity": 64}}
        for name, path in models.items()
    ]  # fmt: skip
    return config


def orchestratord_task(server: LiveServer) -> Task:
    def one(model: str) -> tuple[float, bool]:
        body = task_body(model_ref=model, ctx=2048, max_tokens=ALTERNATING_TOKENS,
                         prompt=PROMPT, sampler_profile_version="fixed-length")  # fmt: skip
        start = time.perf_counter()
        with httpx.Client(base_url=server.url, timeout=300.0) as client:
            admitted = client.post("/v1/tasks", json=body, headers=server.auth)
        if admitted.status_code != 202:
            return time.perf_counter() - start, False
        first: float | None = None
        last = ""
        parser = SSEParser()
        stream_url = f"/v1/tasks/{body['task_id']}/stream"
        with (
            httpx.Client(base_url=server.url, timeout=300.0) as client,
            client.stream("GET", stream_url, headers=server.auth) as response,
        ):
            for chunk in response.iter_bytes():
                for event, _ in parser.feed(chunk):
                    if event == "token" and first is None:
                        first = time.perf_counter()
                    last = event
        return (first or time.perf_counter()) - start, last == "end"

    return one


def orchestratord_loads(server: LiveServer) -> int:
    text = httpx.get(server.url + "/metrics", headers=server.auth, timeout=10).text
    return round(sum(
        float(line.split()[-1]) for line in text.splitlines()
        if line.startswith("model_loads_total{") and 'result="ok"' in line
    ))  # fmt: skip


# --- the workloads ----------------------------------------------------------------------------


def switching(one: Task, switches: int) -> list[float]:
    """One client: a task for the other model each time; seconds to first token per switch."""
    seconds = []
    one(MODELS[0])  # the first model loaded: every later task is a swap
    for n in range(1, switches + 1):
        took, ok = one(MODELS[n % 2])
        if not ok:
            raise RuntimeError(f"a switch to {MODELS[n % 2]} did not end normally")
        seconds.append(took)
    return seconds


def alternating(
    one: Task, clients: int, tasks: int, *, each_client_alternates: bool
) -> dict[str, Any]:
    """``clients`` threads of ``tasks`` requests each. Either every client alternates between
    the models (a client's next task waits for the other model), or each client keeps to one
    model, neighbours to different ones (tasks for both arrive all the time)."""
    waits: list[float] = []
    ended = 0
    lock = threading.Lock()

    def client_loop(offset: int) -> None:
        nonlocal ended
        for n in range(tasks):
            asked = time.perf_counter()
            try:
                model = MODELS[(n + offset) % 2 if each_client_alternates else offset % 2]
                took, ok = one(model)
            except httpx.HTTPError:  # a connection closed on a request that was cut off
                took, ok = time.perf_counter() - asked, False
            with lock:
                waits.append(took)
                ended += ok

    start = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    waits.sort()
    return {
        "tasks": clients * tasks,
        "ended_normally": ended,
        "wall_s": time.perf_counter() - start,
        "wait_p50_ms": 1000 * statistics.median(waits),
        "wait_p99_ms": 1000 * waits[min(len(waits) - 1, int(0.99 * len(waits)))],
    }


def one_run(switches: int, clients: int, tasks: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="llorch-bench-swap-") as tmp:
        workdir = Path(tmp)
        models_dir = workdir / "models"
        models = {name: models_dir / f"{name}.gguf" for name in MODELS}
        for seed, (_, path) in enumerate(models.items(), 11):
            write_tiny_model(path, seed=seed)
        cold = [engine_cold_s(models[MODELS[n % 2]]) for n in range(switches)]
        log = workdir / "router.log"
        with router(models_dir, log) as url:
            router_switch = switching(router_task(url), switches)
        with live_server(orchestratord_config(workdir, models)) as server:
            ours_switch = switching(orchestratord_task(server), switches)
        workloads: dict[str, dict[str, Any]] = {}
        for name, each_alternates in WORKLOADS.items():
            log = workdir / f"router-{name}.log"
            with router(models_dir, log) as url:
                figures = alternating(router_task(url), clients, tasks,
                                      each_client_alternates=each_alternates)  # fmt: skip
                workloads[f"router_{name}"] = {**figures, "loads": router_loads(log)}
            with live_server(orchestratord_config(workdir / name, models)) as server:
                figures = alternating(orchestratord_task(server), clients, tasks,
                                      each_client_alternates=each_alternates)  # fmt: skip
                workloads[f"orchestratord_{name}"] = {
                    **figures,
                    "loads": orchestratord_loads(server),
                }
    cold_ms = 1000 * statistics.median(cold)
    ours_ms = 1000 * statistics.median(ours_switch)
    router_ms = 1000 * statistics.median(router_switch)
    return {
        "cold_start_ms": cold_ms,
        "router_switch_ms": router_ms,
        "orchestratord_switch_ms": ours_ms,
        "orchestratord_over_cold": ours_ms / cold_ms,
        "router_over_cold": router_ms / cold_ms,
        **workloads,
    }


def run(runs: int, switches: int, clients: int, tasks: int) -> dict[str, Any]:
    results = [one_run(switches, clients, tasks) for _ in range(runs)]
    medians: dict[str, Any] = {
        key: statistics.median(r[key] for r in results)
        for key in ("cold_start_ms", "router_switch_ms", "orchestratord_switch_ms",
                    "orchestratord_over_cold", "router_over_cold")
    }  # fmt: skip
    for side in (f"{who}_{name}" for name in WORKLOADS for who in ("router", "orchestratord")):
        medians[side] = {
            key: statistics.median(r[side][key] for r in results)
            for key in ("ended_normally", "loads", "wall_s", "wait_p50_ms", "wait_p99_ms")
        }
    return {"runs": results, "medians": medians, "switches": switches, "clients": clients,
            "tasks_per_client": tasks}  # fmt: skip


def report(result: dict[str, Any]) -> None:
    m = result["medians"]
    print(f"swap: {len(result['runs'])} runs, {result['switches']} switches each (medians)")
    rows = (
        ("llama-server cold start, spawn to first token", m["cold_start_ms"], None),
        ("router mode (--models-max 1), switch to token", m["router_switch_ms"],
         m["router_over_cold"]),
        ("orchestratord on-demand, switch to token", m["orchestratord_switch_ms"],
         m["orchestratord_over_cold"]),
    )  # fmt: skip
    for label, ms, ratio in rows:
        print(f"  {label:<48} {ms:8.1f} ms" + (f"  ({ratio:.2f}x cold)" if ratio else ""))
    total = result["clients"] * result["tasks_per_client"]
    titles = {
        "alternating_clients": "each client alternates the two models",
        "one_model_per_client": "each client keeps to one model, neighbours to the other",
    }
    for name, title in titles.items():
        print(f"{title}: {result['clients']} clients x {result['tasks_per_client']} tasks "
              f"({total}), room for one model")  # fmt: skip
        print(f"  {'':16} {'ended ok':>9} {'loads':>6} {'swaps':>6} {'wall s':>7} "
              f"{'wait p50 ms':>12} {'wait p99 ms':>12}")  # fmt: skip
        for who in ("router", "orchestratord"):
            s = m[f"{who}_{name}"]
            counts = f"{s['ended_normally']:>9.0f} {s['loads']:>6.0f} {s['loads'] - 1:>6.0f}"
            waits = f"{s['wall_s']:>7.1f} {s['wait_p50_ms']:>12.1f} {s['wait_p99_ms']:>12.1f}"
            print(f"  {who:16} {counts} {waits}")
