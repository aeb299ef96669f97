"""``python -m xtask bench admission``: what admission costs when the queue is deep.

A real orchestratord + llama-server (2 slots); both slots are held by long decodes for the
whole run: ``HOLDERS`` long interactive tasks queue ahead of everything (interactive always
leaves the queue first), so every admitted batch task stays queued, which the run checks at
the end (no batch task started). ``--concurrency`` clients submit small
batch tasks until ``--tasks`` are queued. Reported per run: admissions per second, p50 and
p99 latency (request sent → 202 read), orchestratord's CPU time (user + system, /proc) per
admission, and the p50 of the last 2,000 admissions over the first 2,000: near 1.0 when
admission does not slow down as the queue grows.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from prometheus_client.parser import text_string_to_metric_families

from xtask.fakes.live_server import LiveServer, default_live_config, live_server, task_body

# Long interactive decodes, queued ahead of the measured batch tasks: they keep both slots
# busy for far longer than the measurement takes.
HOLD = {"ctx": 4096, "max_tokens": 4000, "sampler_profile_version": "fixed-length"}
HOLDERS = 40
EDGE = 2000


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def batch_tasks_started(exposition: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "tasks_started_total" and sample.labels.get("priority") == "batch"
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _hold_slots(session: aiohttp.ClientSession, server: LiveServer) -> None:
    for _ in range(HOLDERS):
        body = task_body(priority="interactive", deadline_ms=600_000, **HOLD)
        async with session.post(server.url + "/v1/tasks", json=body) as response:
            if response.status != 202:
                raise RuntimeError(f"holding task refused: {await response.text()}")
    for _ in range(200):  # until the engine is really decoding both
        if len(server.engine_busy_slots()) == 2:
            return
        await asyncio.sleep(0.01)
    raise RuntimeError("the holding tasks never started")


async def one_run(tasks: int, concurrency: int) -> dict[str, Any]:
    pool: dict[str, Any] = {
        "ctx_max": 4096,
        "queue": {"capacity": tasks + HOLDERS, "full_policy": "reject"},
    }
    with tempfile.TemporaryDirectory(prefix="llorch-bench-") as tmp:
        config = default_live_config(Path(tmp), **pool)
        # Every task opens a session of its own: room for all of them (the default 4096
        # live sessions would refuse the 4,097th with 429, policy_label sessions).
        config["sessions"] = {"max_live": tasks + HOLDERS}
        return await _measure(config, tasks, concurrency)


async def _measure(config: dict[str, Any], tasks: int, concurrency: int) -> dict[str, Any]:
    with live_server(config) as server:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(headers=server.auth, connector=connector) as session:
            await _hold_slots(session, server)
            bodies = [
                json.dumps(task_body(priority="batch", max_tokens=1, deadline_ms=600_000))
                for _ in range(tasks)
            ]
            latencies: list[tuple[int, float]] = []
            next_index = 0
            url = server.url + "/v1/tasks"
            headers = {"Content-Type": "application/json"}

            async def client() -> None:
                nonlocal next_index
                while next_index < tasks:
                    index = next_index
                    next_index += 1
                    sent = time.perf_counter()
                    async with session.post(url, data=bodies[index], headers=headers) as reply:
                        await reply.read()
                        if reply.status != 202:
                            raise RuntimeError(
                                f"admission {index}: {reply.status} {await reply.text()}"
                            )
                    latencies.append((index, time.perf_counter() - sent))

            cpu_before = cpu_seconds(server.pid)
            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
            cpu = cpu_seconds(server.pid) - cpu_before
            async with session.get(server.url + "/metrics") as response:
                metrics = await response.text()
    if batch_tasks_started(metrics):
        raise RuntimeError("a batch task started: the slots were not held for the whole run")
    by_index = [lat for _, lat in sorted(latencies)]
    all_ms = [lat * 1000 for lat in by_index]
    first = statistics.median(all_ms[:EDGE])
    last = statistics.median(all_ms[-EDGE:])
    return {
        "admissions_per_s": round(tasks / elapsed, 1),
        "p50_ms": round(statistics.median(all_ms), 2),
        "p99_ms": round(percentile(all_ms, 0.99), 2),
        "cpu_ms_per_admission": round(cpu * 1000 / tasks, 3),
        "last_over_first_p50": round(last / first, 3),
    }


def run(tasks: int, concurrency: int, runs: int) -> dict[str, Any]:
    results = [asyncio.run(one_run(tasks, concurrency)) for _ in range(runs)]
    medians = {key: statistics.median(r[key] for r in results) for key in results[0]}
    return {"tasks": tasks, "concurrency": concurrency, "runs": results, "median": medians}


def report(result: dict[str, Any]) -> None:
    print(
        f"admission benchmark: {result['tasks']} tasks queued behind 2 busy slots, "
        f"c={result['concurrency']}"
    )
    print("run  admissions/s  p50 ms  p99 ms  CPU ms/admission  p50 last/first")
    rows = [*enumerate(result["runs"], 1), ("median", result["median"])]
    for name, r in rows:
        print(
            f"{name!s:<6} {r['admissions_per_s']:>11}  {r['p50_ms']:>6}  {r['p99_ms']:>6}  "
            f"{r['cpu_ms_per_admission']:>16}  {r['last_over_first_p50']:>14}"
        )
    print("targets: >= 2000/s, p99 <= 25 ms, <= 0.5 ms CPU per admission, last/first <= 1.2")
