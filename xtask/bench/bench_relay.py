"""``python -m xtask bench relay``: what relaying a long stream through orchestratord costs.

One run starts a real orchestratord fronting a real llama-server and streams the same seeded
request (``--tokens`` tokens, EOS ignored so every run decodes exactly that many) alternately
straight from llama-server's ``/completion``, through ``POST /v1/tasks`` + SSE stream, and
through the one-request form (``POST /v1/tasks`` with ``Accept: text/event-stream``),
``--pairs`` times, reversing the order in every other round so no path always runs on a
warmer machine. It reports medians: tokens/s of each path and their ratio, time to first
token and its overhead, and orchestratord's own CPU time (user + system, from /proc via
psutil) per relayed token. Both paths must produce the same text, or the run fails: a fast
relay of the wrong tokens is worth nothing.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import psutil

from xtask.fakes.live_server import LiveServer, live_server, task_body

PROMPT = "The orchestrator relays every token of this benchmark prompt"


@dataclass
class Run:
    ttft_s: float
    tokens: int
    stream_s: float
    text: str

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.stream_s if self.stream_s > 0 else 0.0


async def direct_run(
    session: aiohttp.ClientSession, server: LiveServer, tokens: int, seed: int
) -> Run:
    body = {
        "prompt": PROMPT,
        "n_predict": tokens,
        "seed": seed,
        "ignore_eos": True,
        "cache_prompt": True,
        "stream": True,
        "temperature": 0.8,
        "top_k": 40,
        "top_p": 0.95,
        "min_p": 0.05,
        "repeat_penalty": 1.0,
    }
    start = time.perf_counter()
    first: float | None = None
    pieces: list[str] = []
    # Connection: close, as the orchestrator's adapter does for every generation.
    url = server.engine_url + "/completion"
    async with session.post(url, json=body, headers={"Connection": "close"}) as response:
        async for line in response.content:
            if not line.startswith(b"data: "):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("content"):
                first = first or time.perf_counter()
                pieces.append(chunk["content"])
            if chunk.get("stop"):
                end = time.perf_counter()
                break
        else:
            raise RuntimeError("llama-server stream ended without a final event")
    return Run((first or end) - start, len(pieces), end - start, "".join(pieces))


async def relay_run(
    session: aiohttp.ClientSession, server: LiveServer, tokens: int, seed: int
) -> Run:
    body = task_body(
        seed=seed,
        sampler_profile_version="fixed-length",
        prompt=PROMPT,
        max_tokens=tokens,
        deadline_ms=600_000,
    )
    task_id = body["task_id"]
    start = time.perf_counter()
    first: float | None = None
    pieces: list[str] = []
    async with session.post(server.url + "/v1/tasks", json=body, headers=server.auth) as accepted:
        if accepted.status != 202:
            raise RuntimeError(f"relay admission failed: {accepted.status} {await accepted.text()}")
    url = f"{server.url}/v1/tasks/{task_id}/stream"
    async with session.get(url, headers=server.auth) as response:
        pieces, first = await _read_frames(response)
    end = time.perf_counter()
    return Run((first or end) - start, len(pieces), end - start, "".join(pieces))


async def relay_one_request_run(
    session: aiohttp.ClientSession, server: LiveServer, tokens: int, seed: int
) -> Run:
    """The same task in the one-request form (PERF-101): submit and stream in one POST."""
    body = task_body(seed=seed, sampler_profile_version="fixed-length", prompt=PROMPT,
                     max_tokens=tokens, deadline_ms=600_000)  # fmt: skip
    headers = {**server.auth, "Accept": "text/event-stream"}
    start = time.perf_counter()
    first: float | None = None
    pieces: list[str] = []
    async with session.post(server.url + "/v1/tasks", json=body, headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"relay admission failed: {response.status} {await response.text()}")
        pieces, first = await _read_frames(response)
    end = time.perf_counter()
    return Run((first or end) - start, len(pieces), end - start, "".join(pieces))


async def _read_frames(response: aiohttp.ClientResponse) -> tuple[list[str], float | None]:
    """Token texts of an orchestratord event stream, and when the first one came."""
    first: float | None = None
    pieces: list[str] = []
    event = b""
    async for line in response.content:
        if line.startswith(b"event: "):
            event = line[7:].strip()
        elif line.startswith(b"data: "):
            if event == b"token":
                first = first or time.perf_counter()
                pieces.append(json.loads(line[6:])["t"])
            elif event in (b"end", b"error"):
                if event == b"error":
                    raise RuntimeError(f"relay error frame: {line!r}")
                break
    return pieces, first


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def relay_bench(
    pairs: int, tokens: int, seed: int, coalesce_ms: float | None = None
) -> dict[str, Any]:
    server_overrides = {} if coalesce_ms is None else {"stream_coalesce_ms": coalesce_ms}
    with live_server(server=server_overrides) as server:
        # One client stack for both paths: aiohttp (TCP_NODELAY, C parser), so the figures
        # show the relay's cost rather than the client library's.
        timeout = aiohttp.ClientTimeout(total=120)
        async with (
            aiohttp.ClientSession(timeout=timeout) as client,
            server.engine_session(timeout=timeout) as engine,
        ):
            await direct_run(engine, server, 16, seed)  # warm the prompt cache and allocator
            await relay_run(client, server, 16, seed)
            direct: list[Run] = []
            relay: list[Run] = []
            one: list[Run] = []
            relay_cpu = 0.0
            one_cpu = 0.0
            paths = ("direct", "relay", "one")
            for index in range(pairs):
                for path in paths if index % 2 == 0 else reversed(paths):
                    if path == "direct":
                        direct.append(await direct_run(engine, server, tokens, seed))
                        continue
                    before = cpu_seconds(server.pid)
                    if path == "relay":
                        relay.append(await relay_run(client, server, tokens, seed))
                        relay_cpu += cpu_seconds(server.pid) - before
                    else:
                        one.append(await relay_one_request_run(client, server, tokens, seed))
                        one_cpu += cpu_seconds(server.pid) - before
    texts = {run.text for run in direct + relay + one}
    if len(texts) != 1:
        raise RuntimeError("direct and relayed streams differ: the relay is not faithful")
    relayed_tokens = sum(run.tokens for run in relay)
    med = statistics.median
    direct_tps = med(r.tokens_per_s for r in direct)
    relay_tps = med(r.tokens_per_s for r in relay)
    return {
        "pairs": pairs,
        "tokens_per_run": tokens,
        "token_frames_per_run": relay[0].tokens,
        "direct_tokens_per_s": round(direct_tps, 1),
        "relay_tokens_per_s": round(relay_tps, 1),
        "ratio": round(relay_tps / direct_tps, 3),
        "direct_ttft_ms": round(med(r.ttft_s for r in direct) * 1000, 2),
        "relay_ttft_ms": round(med(r.ttft_s for r in relay) * 1000, 2),
        "ttft_overhead_ms": round(
            (med(r.ttft_s for r in relay) - med(r.ttft_s for r in direct)) * 1000, 2
        ),
        "orchestrator_cpu_ms_per_token": round(relay_cpu * 1000 / max(relayed_tokens, 1), 4),
        # The one-request form (PERF-101): POST /v1/tasks answered with the stream.
        "one_request_tokens_per_s": round(med(r.tokens_per_s for r in one), 1),
        "one_request_ttft_overhead_ms": round(
            (med(r.ttft_s for r in one) - med(r.ttft_s for r in direct)) * 1000, 2
        ),
        "one_request_cpu_ms_per_token": round(
            one_cpu * 1000 / max(sum(r.tokens for r in one), 1), 4
        ),
    }


def run(runs: int, pairs: int, tokens: int, seed: int, coalesce_ms: float | None) -> dict[str, Any]:
    results = [asyncio.run(relay_bench(pairs, tokens, seed, coalesce_ms)) for _ in range(runs)]
    keys = [k for k in results[0] if k not in ("pairs", "tokens_per_run", "token_frames_per_run")]
    medians = {key: statistics.median(r[key] for r in results) for key in keys}
    return {"pairs": pairs, "tokens": tokens, "runs": results, "median": medians}


def report(result: dict[str, Any]) -> None:
    print(
        f"relay benchmark: {result['pairs']} interleaved pairs of {result['tokens']} tokens "
        "per run, medians per run"
    )
    print("two requests (POST, then GET the stream) and one (POST with Accept: text/event-stream)")
    print("run     direct tok/s  relay tok/s  ratio  TTFT direct  TTFT relay  added  CPU ms/token"
          "  | one: tok/s  added  CPU ms/token")  # fmt: skip
    rows = [*enumerate(result["runs"], 1), ("median", result["median"])]
    for name, r in rows:
        print(
            f"{name!s:<7} {r['direct_tokens_per_s']:>12} {r['relay_tokens_per_s']:>12} "
            f"{r['ratio']:>6} {r['direct_ttft_ms']:>12} {r['relay_ttft_ms']:>11} "
            f"{r['ttft_overhead_ms']:>6} {r['orchestrator_cpu_ms_per_token']:>13}"
            f"  | {r['one_request_tokens_per_s']:>10} {r['one_request_ttft_overhead_ms']:>6} "
            f"{r['one_request_cpu_ms_per_token']:>12}"
        )
    print("targets: ratio >= 0.95, TTFT added <= 1.5 ms, <= 0.05 ms CPU per token")
