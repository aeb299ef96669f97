"""``python -m xtask bench compare --base REF``: the working tree against a past commit, side
by side on this machine, as ratios; exit 1 on a slowdown beyond ``--factor``.

Absolute timings differ about 2x between machines of this kind, and a benchmark compared only
with the engine never notices that our own code got slower (the relay's CPU per token doubled
in one rewrite and nobody saw it). So this runs the base commit's server and the working
tree's server alternately, in the same environment, round after round:

- the base commit's ``orchestratord`` package runs from a temporary ``git worktree`` of REF
  (``live_server(source=...)``), the working tree's from the checkout; both use the installed
  dependencies and the same llama-server, so the difference is our code;
- every round measures, for each side: a relay of ``--streams`` x 512 tokens (server CPU per
  relayed token and tokens/s), time to the first token, and ``--small`` one-token tasks one
  after another (tasks/s and server CPU per task), all in the two-request form every commit
  since the API's first version serves;
- the report gives each figure's medians and the ratio tree/base, oriented so that a ratio
  above 1 is worse; a ratio above ``--factor`` (1.25: beyond this machine's run-to-run
  spread of the medians) is a slowdown and the exit status is 1.

This is the project's equivalent of ``asv continuous``: asv builds an environment per commit,
which here means building llama.cpp per commit; our benchmarks drive a server process over
HTTP, so running the past commit's package in today's environment measures exactly the code
change, in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from xtask.bench.bench_relay import relay_run
from xtask.fakes.live_server import LiveServer, live_server, task_body

ROOT = Path(__file__).resolve().parents[2]
RELAY_TOKENS = 512
# Figures where more is worse (True) or better (False).
FIGURES = {
    "cpu_ms_per_token": True,
    "relay_tokens_per_s": False,
    "ttft_ms": True,
    "small_tasks_per_s": False,
    "cpu_ms_per_small_task": True,
}


@contextlib.contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """REF checked out in a temporary worktree (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="llorch-base-") as tmp:
        path = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path),
                        ref], check=True)  # fmt: skip
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
                           check=False)  # fmt: skip


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def _small_task(session: aiohttp.ClientSession, server: LiveServer) -> None:
    body = task_body(max_tokens=1, prompt="hi")
    async with session.post(server.url + "/v1/tasks", json=body, headers=server.auth) as r:
        if r.status != 202:
            raise RuntimeError(f"small task refused: {r.status} {await r.text()}")
    url = f"{server.url}/v1/tasks/{body['task_id']}/stream"
    async with session.get(url, headers=server.auth) as response:
        await response.read()


async def measure(server: LiveServer, streams: int, small: int) -> dict[str, float]:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await relay_run(session, server, 16, 1)  # warm up
        cpu, tokens, seconds, ttfts = 0.0, 0, 0.0, []
        for _ in range(streams):
            before = _cpu(server.pid)
            run = await relay_run(session, server, RELAY_TOKENS, 1234)
            cpu += _cpu(server.pid) - before
            tokens += run.tokens
            seconds += run.stream_s
            ttfts.append((await relay_run(session, server, 4, 7)).ttft_s)
        before, start = _cpu(server.pid), time.perf_counter()
        for _ in range(small):
            await _small_task(session, server)
        small_s, small_cpu = time.perf_counter() - start, _cpu(server.pid) - before
    return {
        "cpu_ms_per_token": cpu * 1000 / max(tokens, 1),
        "relay_tokens_per_s": tokens / seconds,
        "ttft_ms": statistics.median(ttfts) * 1000,
        "small_tasks_per_s": small / small_s,
        "cpu_ms_per_small_task": small_cpu * 1000 / small,
    }


def _side(source: Path | None, streams: int, small: int) -> dict[str, float]:
    with live_server(source=source) as server:
        return asyncio.run(measure(server, streams, small))


def run(base: str, rounds: int, streams: int, small: int, factor: float) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {"base": [], "tree": []}
    with worktree(base) as base_source:
        for index in range(rounds):
            order = ("base", "tree") if index % 2 == 0 else ("tree", "base")
            for side in order:
                source = base_source if side == "base" else None
                runs[side].append(_side(source, streams, small))
    figures = {}
    for name, more_is_worse in FIGURES.items():
        base_median = statistics.median(r[name] for r in runs["base"])
        tree_median = statistics.median(r[name] for r in runs["tree"])
        worse = tree_median / base_median if more_is_worse else base_median / tree_median
        figures[name] = {"base": base_median, "tree": tree_median, "worse_ratio": worse,
                         "slowdown": worse > factor}  # fmt: skip
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", base],
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    return {"base": commit, "rounds": rounds, "factor": factor, "figures": figures, "runs": runs}


def report(result: dict[str, Any]) -> None:
    print(f"the working tree against {result['base']}: {result['rounds']} alternating rounds, "
          f"medians; worse ratio > {result['factor']} is a slowdown")  # fmt: skip
    print(f"{'figure':<24} {'base':>10} {'tree':>10} {'worse x':>8}")
    for name, f in result["figures"].items():
        flag = "  SLOWDOWN" if f["slowdown"] else ""
        print(f"{name:<24} {f['base']:>10.4f} {f['tree']:>10.4f} {f['worse_ratio']:>8.2f}{flag}")


def slowed(result: dict[str, Any]) -> bool:
    return any(f["slowdown"] for f in result["figures"].values())
