"""``python -m xtask bench peers``: orchestratord beside a Rust router (vllm-router), both in
front of the same llama-server, and the engine direct, interleaved in one run.

One llama-server (the tiny model, 2 slots, ctx 4096, on a loopback TCP port) serves all four
paths, so the engine's share is the same for each and the difference is the relay:

- ``direct``: llama-server's own OpenAI ``/v1/completions``, streamed;
- ``router``: the same request through vllm-router (``.venv-peer``, pinned in
  ``engines/peer-constraints.txt``; it needs ``--prometheus-port``);
- ``two``: orchestratord (a pool with ``endpoints``: that llama-server), ``POST /v1/tasks``
  then ``GET /v1/tasks/{id}/stream``;
- ``one``: orchestratord's one-request form (``Accept: text/event-stream``, PERF-101).

Each request opens its own connection on every path (llama-server drops keep-alive after a
streamed response). Per run: a relay of ``--tokens`` tokens (EOS ignored) ``--pairs`` times per
path, the order rotating each round — tokens/s, time to first token, and the relaying
process's CPU per token (user + system of the process and its children, from /proc); then
one-token tasks at concurrency 1 and 16 (requests/s, CPU per request); then each relay's
idle resident memory. Ratios are against ``direct`` measured in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from orchestratord.models.tiny_gguf import ensure_tiny_model
from orchestratord.replicas.engine_process import llama_server_binary
from xtask.fakes.live_server import default_live_config, live_server, task_body

ROOT = Path(__file__).resolve().parents[2]
ROUTER = ROOT / ".venv-peer" / "bin" / "vllm-router"
PROMPT = "The orchestrator relays every token of this benchmark prompt"
PATHS = ("direct", "router", "two", "one")
SMALL_CONCURRENCY = (1, 16)

Once = Callable[[aiohttp.ClientSession, int, int], Awaitable[tuple[int, float, float]]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree_cpu(pid: int) -> float:
    proc = psutil.Process(pid)
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def _tree_rss(pid: int) -> int:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in (proc, *proc.children(recursive=True)))


def _wait_http(url: str, timeout_s: float = 120.0) -> None:
    import httpx  # noqa: PLC0415 - only the waits need a blocking client

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s:.0f} s")


@contextlib.contextmanager
def _process(argv: list[str], ready_url: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_http(ready_url)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def engine() -> Iterator[str]:
    port = _free_port()
    model = ensure_tiny_model(Path.home() / ".cache" / "llama-orch" / "models")
    argv = [str(llama_server_binary()), "--model", str(model), "--ctx-size", "4096",
            "--parallel", "2", "--n-gpu-layers", "0", "--no-webui", "--metrics", "--slots",
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with _process(argv, url + "/health"):
        yield url


@contextlib.contextmanager
def router(engine_url: str) -> Iterator[tuple[str, int]]:
    if not ROUTER.exists():
        raise RuntimeError(f"{ROUTER} is missing: bash scripts/install.sh installs the peer")
    port = _free_port()
    argv = [str(ROUTER), "--host", "127.0.0.1", "--port", str(port),
            "--worker-urls", engine_url, "--prometheus-port", str(_free_port()),
            "--log-level", "warning"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with _process(argv, url + "/health") as proc:
        yield url, proc.pid


def _openai_body(tokens: int, seed: int) -> dict[str, Any]:
    return {"model": "tiny", "prompt": PROMPT, "max_tokens": tokens, "stream": True,
            "ignore_eos": True, "seed": seed, "temperature": 0.8}  # fmt: skip


async def _openai(
    session: aiohttp.ClientSession, url: str, tokens: int, seed: int
) -> tuple[int, float, float]:
    """(tokens, time to first token, total) of one streamed /v1/completions request."""
    start = time.perf_counter()
    first = 0.0
    count = 0
    headers = {"Connection": "close"}
    async with session.post(url + "/v1/completions", json=_openai_body(tokens, seed),
                            headers=headers) as response:  # fmt: skip
        if response.status != 200:
            raise RuntimeError(f"{url}: {response.status} {await response.text()}")
        async for line in response.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            choice = (json.loads(line[6:]).get("choices") or [{}])[0]
            if choice.get("text"):
                count += 1
                first = first or time.perf_counter() - start
    return count, first, time.perf_counter() - start


async def _frames(response: aiohttp.ClientResponse, start: float) -> tuple[int, float]:
    count, first, event = 0, 0.0, b""
    async for line in response.content:
        if line.startswith(b"event: "):
            event = line[7:].strip()
        elif line.startswith(b"data: "):
            if event == b"token":
                count += 1
                first = first or time.perf_counter() - start
            elif event in (b"end", b"error"):
                if event == b"error":
                    raise RuntimeError(f"error frame: {line!r}")
                break
    return count, first


def _ours(server: Any, *, one_request: bool) -> Once:
    async def once(
        session: aiohttp.ClientSession, tokens: int, seed: int
    ) -> tuple[int, float, float]:
        body = task_body(prompt=PROMPT, max_tokens=tokens, seed=seed, deadline_ms=600_000,
                         sampler_profile_version="fixed-length")  # fmt: skip
        headers = {**server.auth, "Connection": "close"}
        start = time.perf_counter()
        if one_request:
            headers["Accept"] = "text/event-stream"
            async with session.post(server.url + "/v1/tasks", json=body, headers=headers) as r:
                count, first = await _frames(r, start)
        else:
            async with session.post(server.url + "/v1/tasks", json=body, headers=headers) as r:
                if r.status != 202:
                    raise RuntimeError(f"admission: {r.status} {await r.text()}")
            url = f"{server.url}/v1/tasks/{body['task_id']}/stream"
            async with session.get(url, headers=headers) as r:
                count, first = await _frames(r, start)
        return count, first, time.perf_counter() - start

    return once


async def _small(once: Once, session: aiohttp.ClientSession, concurrency: int, count: int) -> float:
    remaining = count

    async def client() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await once(session, 1, 1)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return count / (time.perf_counter() - start)


async def _measure(onces: dict[str, Once], pids: dict[str, int | None], pairs: int,
                   tokens: int, small: int) -> dict[str, Any]:  # fmt: skip
    relay: dict[str, list[tuple[int, float, float]]] = {p: [] for p in PATHS}
    cpu = dict.fromkeys(PATHS, 0.0)
    rates: dict[str, dict[int, list[float]]] = {
        p: {c: [] for c in SMALL_CONCURRENCY} for p in PATHS
    }
    small_cpu: dict[str, float] = dict.fromkeys(PATHS, 0.0)
    connector = aiohttp.TCPConnector(limit=64, force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=300)
    ) as session:
        for path in PATHS:  # warm every path
            await onces[path](session, 16, 1)
        for index in range(pairs):
            order = PATHS[index % len(PATHS) :] + PATHS[: index % len(PATHS)]
            for path in order:
                pid = pids[path]
                before = _tree_cpu(pid) if pid else 0.0
                relay[path].append(await onces[path](session, tokens, 1234))
                cpu[path] += (_tree_cpu(pid) - before) if pid else 0.0
        for concurrency in SMALL_CONCURRENCY:
            for index in range(2):
                order = PATHS if index % 2 == 0 else tuple(reversed(PATHS))
                for path in order:
                    pid = pids[path]
                    before = _tree_cpu(pid) if pid else 0.0
                    rates[path][concurrency].append(
                        await _small(onces[path], session, concurrency, small)
                    )
                    small_cpu[path] += (_tree_cpu(pid) - before) if pid else 0.0
    med = statistics.median
    figures: dict[str, Any] = {}
    for path in PATHS:
        runs = relay[path]
        relayed = sum(r[0] for r in runs)
        figures[path] = {
            "tokens_per_s": med(r[0] / r[2] for r in runs),
            "ttft_ms": med(r[1] for r in runs) * 1000,
            "cpu_ms_per_token": cpu[path] * 1000 / max(relayed, 1),
            "small_c1_per_s": med(rates[path][1]),
            "small_c16_per_s": med(rates[path][16]),
            "cpu_ms_per_small": small_cpu[path] * 1000 / (small * 2 * len(SMALL_CONCURRENCY)),
        }
    return figures


def one_run(pairs: int, tokens: int, small: int) -> dict[str, Any]:
    with engine() as engine_url, router(engine_url) as (router_url, router_pid):
        config = default_live_config(Path("/tmp"))
        config["pools"][0].update(endpoints=[{"url": engine_url}], queue={"capacity": 64})
        with live_server(config) as server:
            time.sleep(1.0)  # let both settle before the idle memory is read
            idle_rss = {"router": _tree_rss(router_pid), "orchestratord": _tree_rss(server.pid)}

            async def direct(
                s: aiohttp.ClientSession, n: int, seed: int
            ) -> tuple[int, float, float]:
                return await _openai(s, engine_url, n, seed)

            async def routed(
                s: aiohttp.ClientSession, n: int, seed: int
            ) -> tuple[int, float, float]:
                return await _openai(s, router_url, n, seed)

            onces: dict[str, Once] = {"direct": direct, "router": routed,
                                      "two": _ours(server, one_request=False),
                                      "one": _ours(server, one_request=True)}  # fmt: skip
            pids = {"direct": None, "router": router_pid, "two": server.pid, "one": server.pid}
            figures = asyncio.run(_measure(onces, pids, pairs, tokens, small))
    direct_figures = figures["direct"]
    for path in PATHS:
        f = figures[path]
        f["relay_ratio"] = f["tokens_per_s"] / direct_figures["tokens_per_s"]
        f["ttft_added_ms"] = f["ttft_ms"] - direct_figures["ttft_ms"]
        f["small_c1_ratio"] = f["small_c1_per_s"] / direct_figures["small_c1_per_s"]
        f["small_c16_ratio"] = f["small_c16_per_s"] / direct_figures["small_c16_per_s"]
    return {"figures": figures, "idle_rss_mib": {k: v / 2**20 for k, v in idle_rss.items()}}


def run(runs: int, pairs: int, tokens: int, small: int) -> dict[str, Any]:
    results = [one_run(pairs, tokens, small) for _ in range(runs)]
    medians: dict[str, Any] = {}
    for path in PATHS:
        keys = results[0]["figures"][path]
        medians[path] = {k: statistics.median(r["figures"][path][k] for r in results) for k in keys}
    rss = {
        k: statistics.median(r["idle_rss_mib"][k] for r in results)
        for k in ("router", "orchestratord")
    }
    return {"runs": results, "medians": medians, "idle_rss_mib": rss, "pairs": pairs,
            "tokens": tokens, "small": small}  # fmt: skip


def report(result: dict[str, Any]) -> None:
    m = result["medians"]
    print(f"peers: {len(result['runs'])} runs; relay {result['pairs']} x {result['tokens']} "
          f"tokens per path, one-token tasks {result['small']} per block at c=1 and c=16; "
          "medians")  # fmt: skip
    names = {"direct": "llama-server direct", "router": "vllm-router", "two": "orchestratord 2 req",
             "one": "orchestratord 1 req"}  # fmt: skip
    print(f"{'path':<22}{'relay/direct':>13}{'TTFT added':>12}{'CPU/token':>11}"
          f"{'small c1/direct':>16}{'small c16/direct':>17}{'CPU/small':>11}")  # fmt: skip
    for path in PATHS:
        f = m[path]
        print(f"{names[path]:<22}{f['relay_ratio']:>13.3f}{f['ttft_added_ms']:>10.2f}ms"
              f"{f['cpu_ms_per_token']:>9.4f}ms{f['small_c1_ratio']:>16.3f}{f['small_c16_ratio']:>17.3f}"
              f"{f['cpu_ms_per_small']:>9.3f}ms")  # fmt: skip
    rss = result["idle_rss_mib"]
    print(
        f"idle RSS (engine excluded): vllm-router {rss['router']:.0f} MiB, "
        f"orchestratord {rss['orchestratord']:.0f} MiB"
    )
