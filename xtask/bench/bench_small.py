"""``python -m xtask bench small``: the cost of one tiny task, end to end.

A real orchestratord + llama-server (2 slots). One task is ``max_tokens: 1``: through
orchestratord it is ``POST /v1/tasks`` then ``GET .../stream`` read to the terminal frame;
directly it is the same request streamed from llama-server's ``/completion`` on the socket
orchestratord itself uses (its Unix socket), with the same aiohttp client. Both paths run
at concurrency 1 and 16, interleaved in blocks (``--blocks`` per path, alternating which goes
first) so neither always runs on a warmer machine. Reported per run: requests/s of each path
and their ratio, p50 latency of each path and the difference (what orchestratord adds), and
orchestratord's CPU time per relayed task.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

import aiohttp

from xtask.bench.bench_admission import cpu_seconds
from xtask.fakes.live_server import LiveServer, live_server, task_body

PROMPT = "Once upon a time"


async def direct_once(session: aiohttp.ClientSession, server: LiveServer) -> float:
    body = {"prompt": PROMPT, "n_predict": 1, "seed": 1, "stream": True, "cache_prompt": True}
    sent = time.perf_counter()
    url = server.engine_url + "/completion"
    async with session.post(url, json=body, headers={"Connection": "close"}) as response:
        async for line in response.content:
            if line.startswith(b"data: ") and b'"stop":true' in line:
                break
    return time.perf_counter() - sent


async def relay_once(session: aiohttp.ClientSession, server: LiveServer) -> float:
    body = task_body(prompt=PROMPT, max_tokens=1, seed=1)
    sent = time.perf_counter()
    async with session.post(server.url + "/v1/tasks", json=body) as accepted:
        await accepted.read()
        if accepted.status != 202:
            raise RuntimeError(f"admission: {accepted.status}")
    async with session.get(f"{server.url}/v1/tasks/{body['task_id']}/stream") as response:
        async for line in response.content:
            if line.startswith((b"event: end", b"event: error")):
                if line.startswith(b"event: error"):
                    raise RuntimeError("error frame")
                break
    return time.perf_counter() - sent


async def block(
    path: str,
    sessions: dict[str, aiohttp.ClientSession],
    server: LiveServer,
    concurrency: int,
    count: int,
) -> tuple[list[float], float]:
    once = direct_once if path == "direct" else relay_once
    session = sessions[path]
    latencies: list[float] = []
    remaining = count

    async def client() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            latencies.append(await once(session, server))

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


async def one_run(concurrency: int, per_block: int, blocks: int) -> dict[str, Any]:
    with live_server(queue={"capacity": 64, "full_policy": "reject"}) as server:
        connector = aiohttp.TCPConnector(limit=concurrency * 2)
        async with (
            aiohttp.ClientSession(headers=server.auth, connector=connector) as relay,
            server.engine_session() as engine,
        ):
            sessions = {"direct": engine, "relay": relay}
            for path in ("direct", "relay"):  # warm both paths
                await block(path, sessions, server, concurrency, concurrency * 2)
            lat: dict[str, list[float]] = {"direct": [], "relay": []}
            wall = {"direct": 0.0, "relay": 0.0}
            relay_cpu = 0.0
            for index in range(blocks):
                order = ("direct", "relay") if index % 2 == 0 else ("relay", "direct")
                for path in order:
                    before = cpu_seconds(server.pid)
                    got, seconds = await block(path, sessions, server, concurrency, per_block)
                    if path == "relay":
                        relay_cpu += cpu_seconds(server.pid) - before
                    lat[path] += got
                    wall[path] += seconds
    n = per_block * blocks
    direct_rps, relay_rps = n / wall["direct"], n / wall["relay"]
    p50 = {path: statistics.median(values) * 1000 for path, values in lat.items()}
    return {
        "direct_rps": round(direct_rps, 1),
        "relay_rps": round(relay_rps, 1),
        "ratio": round(relay_rps / direct_rps, 3),
        "direct_p50_ms": round(p50["direct"], 2),
        "relay_p50_ms": round(p50["relay"], 2),
        "added_p50_ms": round(p50["relay"] - p50["direct"], 2),
        "cpu_ms_per_task": round(relay_cpu * 1000 / n, 3),
    }


def run(runs: int, per_block: int, blocks: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for concurrency in (1, 16):
        results = [asyncio.run(one_run(concurrency, per_block, blocks)) for _ in range(runs)]
        medians = {key: statistics.median(r[key] for r in results) for key in results[0]}
        result[f"c={concurrency}"] = {"runs": results, "median": medians}
    return result


def report(result: dict[str, Any]) -> None:
    print("small-task benchmark: max_tokens 1, submit + stream vs llama-server /completion")
    print("conc  run     direct/s  relay/s  ratio  p50 direct  p50 relay  added  CPU ms/task")
    for conc, data in result.items():
        rows = [*enumerate(data["runs"], 1), ("median", data["median"])]
        for name, r in rows:
            print(
                f"{conc:<5} {name!s:<6} {r['direct_rps']:>9} {r['relay_rps']:>8} "
                f"{r['ratio']:>6} {r['direct_p50_ms']:>11} {r['relay_p50_ms']:>10} "
                f"{r['added_p50_ms']:>6} {r['cpu_ms_per_task']:>12}"
            )
    print("targets: c=16 ratio >= 0.5, c=1 added p50 <= 2 ms, <= 1 ms CPU per task")


def as_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2)
