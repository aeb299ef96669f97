"""``python -m xtask determinism``: the determinism suite (OC-TEST-7001..7003).

Per engine, one pool of two replicas, each with one slot (the engine's single-slot
deterministic setting: llama.cpp's output depends on what shares its batch, so a strict task
runs alone on its replica). For every seed of a fixed corpus (64 by default) the same strict
task is submitted twice at once; each lands on a different replica (a replica running a
strict task takes no other), and the two token streams must be byte-identical. Twins short
enough to finish before the second is admitted can share a replica; that pair runs again (up
to 10 times), and every run's streams are compared. The corpus
must also be a real one: different seeds must give different streams.

Engines: ``llamacpp`` (two spawned llama-servers), ``vllm`` (the vLLM adapter against two
llama-servers started outside orchestratord; vLLM itself cannot run here) and ``triton``
(two real Triton servers). A table per engine is printed; the exit status is 1 on any
mismatch. The dev loop runs the whole 64-seed corpus on llama.cpp and 8 seeds on the other
two (inside the e2e tests).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from orchestratord.models.tiny_gguf import TINY_MODEL_REF, default_cache_dir, ensure_tiny_model
from orchestratord.replicas.engine_process import free_loopback_port, llama_server_binary
from xtask.fakes.live_server import LiveServer, live_server, task_body
from xtask.fakes.triton_server import triton_server

ENGINES = ("llamacpp", "vllm", "triton")
PROMPTS = ("Once upon a time", "The queue", "A llama walked into", "Seeds and streams")
TOKENS = 24


def corpus(count: int) -> list[int]:
    """A stable corpus: the same seeds on every run and machine."""
    return [1_000 + 7_919 * i for i in range(count)]


@dataclass
class EngineResult:
    engine: str
    seeds: int = 0
    identical: int = 0
    on_two_replicas: int = 0
    distinct_streams: int = 0
    tokens_compared: int = 0
    mismatches: list[int] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            self.seeds > 0
            and self.identical == self.seeds
            and self.on_two_replicas == self.seeds
            and self.distinct_streams == self.seeds  # every seed a stream of its own
        )


@contextlib.contextmanager
def outside_llama_server() -> Iterator[str]:
    model = ensure_tiny_model(default_cache_dir())
    port = free_loopback_port()
    proc = subprocess.Popen(
        [str(llama_server_binary()), "--model", str(model), "--host", "127.0.0.1",
         "--port", str(port), "--parallel", "1", "--ctx-size", "1024"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _pool(engine: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": f"det-{engine}",
        "engine": engine,
        "model_ref": f"determinism/{engine}",
        "slots": 1,
        "ctx_max": 1024,
        "queue": {"capacity": 8},
        **fields,
    }


@contextlib.contextmanager
def suite_server(engines: tuple[str, ...]) -> Iterator[LiveServer]:
    """One orchestratord with a two-replica pool per engine."""
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llorch-det-")))
        pools = []
        if "llamacpp" in engines:
            pools.append(_pool("llamacpp", model_ref=TINY_MODEL_REF, replicas=2))
        if "vllm" in engines:
            urls = [stack.enter_context(outside_llama_server()) for _ in range(2)]
            pools.append(_pool("vllm", endpoints=[{"url": u} for u in urls]))
        if "triton" in engines:
            servers = [stack.enter_context(triton_server()) for _ in range(2)]
            endpoints = [
                {"url": s.url, "model": s.model, "metrics_url": s.metrics_url} for s in servers
            ]
            pools.append(_pool("triton", endpoints=endpoints))
        config = {
            "server": {"host": "127.0.0.1", "port": 0},
            "state_dir": str(workdir / "state"),
            "sampler_profiles": {"v1": {}, "fixed-length": {"ignore_eos": True}},
            "pools": pools,
        }
        yield stack.enter_context(live_server(config))


async def _stream(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[str, bytes]:
    """The replica that ran the task and its token frames' payloads, byte for byte."""
    response = await client.post("/v1/tasks", json=body)
    response.raise_for_status()
    raw = (await client.get(f"/v1/tasks/{body['task_id']}/stream")).content
    replica = ""
    tokens: list[bytes] = []
    for frame in raw.split(b"\n\n"):
        event, _, data = frame.partition(b"\ndata: ")
        if event == b"event: started":
            replica = str(json.loads(data)["replica_id"])
        elif event == b"event: token":
            tokens.append(data)
        elif event == b"event: error":
            raise AssertionError(f"task failed: {data!r}")
    # The started frame is sent when the stream opens; a task still queued then has none.
    return replica, b"\n".join(tokens)


# Short twins can finish before the second is admitted, which then takes the same, idle,
# replica. Such a pair proved nothing about two replicas, so it runs again (its streams are
# compared every time: a mismatch is never retried away). On a saturated machine (the
# parallel dev loop on two cores) three tries once left one seed of 64 on one replica.
PLACEMENT_ATTEMPTS = 10


async def _wait_idle(client: httpx.AsyncClient, pool_id: str, timeout_s: float = 30.0) -> None:
    """Until every replica of the pool has its slot back. A stream can end before the runner
    frees the slot, and a pair sent then would find one replica busy, not two idle."""
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = (await client.get(f"/v1/pools/{pool_id}/health")).json()["metrics"]
        if metrics["slots_free"] == metrics["slots_total"]:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"pool {pool_id} kept a slot busy for {timeout_s} s: {metrics}")
        await asyncio.sleep(0.01)


async def _run_engine(server: LiveServer, engine: str, seeds: list[int]) -> EngineResult:
    result = EngineResult(engine)
    streams: set[bytes] = set()
    async with httpx.AsyncClient(base_url=server.url, headers=server.auth, timeout=120) as client:
        for n, seed in enumerate(seeds):
            body = task_body(
                model_ref=f"determinism/{engine}" if engine != "llamacpp" else TINY_MODEL_REF,
                engine=engine,
                ctx=1024,
                seed=seed,
                prompt=PROMPTS[n % len(PROMPTS)],
                max_tokens=TOKENS,
                determinism="strict",
                sampler_profile_version="fixed-length",
            )
            identical, apart = True, False
            for _ in range(PLACEMENT_ATTEMPTS):
                await _wait_idle(client, f"det-{engine}")
                twins = [{**body, "task_id": task_body()["task_id"]} for _ in range(2)]
                (r1, s1), (r2, s2) = await asyncio.gather(*(_stream(client, b) for b in twins))
                identical = identical and s1 == s2 and bool(s1)
                apart = bool(r1) and bool(r2) and r1 != r2
                if apart or not identical:
                    break
            result.seeds += 1
            result.tokens_compared += s1.count(b"\n") + 1 if s1 else 0
            result.on_two_replicas += int(apart)
            if identical:
                result.identical += 1
            else:
                result.mismatches.append(seed)
            streams.add(s1)
    result.distinct_streams = len(streams)
    return result


def run_suite(
    seed_count: int | dict[str, int], engines: tuple[str, ...] = ENGINES
) -> list[EngineResult]:
    """Per engine, the first ``seed_count`` seeds of the corpus (a count per engine, or one
    for all)."""
    counts = seed_count if isinstance(seed_count, dict) else dict.fromkeys(engines, seed_count)
    with suite_server(engines) as server:
        return [
            asyncio.run(_run_engine(server, engine, corpus(counts[engine]))) for engine in engines
        ]


def report(results: list[EngineResult]) -> None:
    print(f"{'engine':<10} {'seeds':>5} {'identical':>9} {'2 replicas':>10} "
          f"{'distinct':>8} {'tokens':>7}  verdict")  # fmt: skip
    for r in results:
        verdict = "pass" if r.passed else f"FAIL (seeds {r.mismatches[:5]})"
        print(
            f"{r.engine:<10} {r.seeds:>5} {r.identical:>9} {r.on_two_replicas:>10} "
            f"{r.distinct_streams:>8} {r.tokens_compared:>7}  {verdict}"
        )


def run(args: argparse.Namespace) -> int:
    engines = tuple(args.engine) if args.engine else ENGINES
    results = run_suite(args.seeds, engines)
    report(results)
    return 0 if all(r.passed for r in results) else 1


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("determinism", help="64-seed byte-exact suite per engine")
    parser.add_argument("--seeds", type=int, default=64, help="corpus size (>= 64 for the suite)")
    parser.add_argument("--engine", action="append", choices=ENGINES, help="default: all")
    parser.set_defaults(run=run)
