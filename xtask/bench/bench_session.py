"""``python -m xtask bench session``: what session affinity buys a multi-turn conversation.

Real orchestratord + llama-server pairs (2 slots, the tiny model), side by side: one with
session affinity (the default) and one with ``sessions.affinity: false`` (tasks take any
free slot, as before sessions existed). Two conversations take turns (A1, B1, A2, B2, ...),
each keeping its ``session_id``; every turn's prompt is the whole conversation so far plus a
new line, so a turn is fast if the engine still has the conversation's prompt cache.
Measured per turn after the first: time to first token (request sent → first token frame
read). Both engine cache settings run: llama-server's default, whose host-RAM prompt cache
restores a conversation into any slot, and ``--cache-ram 0``, where the cache lives only in
the slot. Reported per run: median TTFT with and without affinity and their ratio.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from xtask.fakes.live_server import LiveServer, default_live_config, live_server, task_body

WORDS = [
    "the",
    "queue",
    "token",
    "slot",
    "seed",
    "llama",
    "model",
    "stream",
    "cancel",
    "pool",
    "engine",
    "task",
    "batch",
]


def _opening(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _first_token_ms(client: httpx.Client, body: dict[str, Any]) -> tuple[float, str]:
    started = time.perf_counter()
    accepted = client.post("/v1/tasks", json=body)
    if accepted.status_code != 202:
        raise RuntimeError(f"task refused: {accepted.status_code} {accepted.text}")
    first: float | None = None
    text = ""
    event = ""
    with client.stream("GET", f"/v1/tasks/{body['task_id']}/stream") as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
                if event in ("end", "error"):
                    break
            elif event == "token" and line.startswith("data: "):
                first = first or time.perf_counter()
                text += json.loads(line[6:])["t"]
    assert first is not None, "no token"
    return (first - started) * 1000, text


def _conversation_turns(
    server: LiveServer, turns: int, opening_words: int, seed: int
) -> list[float]:
    rng = random.Random(seed)
    prompts = [_opening(rng, opening_words), _opening(rng, opening_words)]
    sessions = [str(uuid.uuid4()), str(uuid.uuid4())]
    later: list[float] = []
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=60) as client:
        for turn in range(turns):
            for who in (0, 1):
                body = task_body(
                    session_id=sessions[who],
                    prompt=prompts[who],
                    max_tokens=16,
                    ctx=4096,
                    sampler_profile_version="fixed-length",
                )
                ttft, reply = _first_token_ms(client, body)
                if turn > 0:
                    later.append(ttft)
                prompts[who] += reply + " and then " + _opening(rng, 12)
    return later


ENGINE_CACHES = {
    # llama-server's own host-RAM prompt cache (default 8 GiB) saves an idle slot's state
    # and restores it into whichever slot a matching prompt lands in.
    "llama-server default (host prompt cache on)": [],
    # Without it, a conversation's cache lives only in the slot it last ran in.
    "--cache-ram 0 (slot cache only)": ["--cache-ram", "0"],
}


def _config(tmp: Path, affinity: bool, extra_args: list[str]) -> dict[str, Any]:
    # Long conversations: processing the prompt is most of the first token's wait.
    config = default_live_config(tmp, ctx_max=4096, llamacpp={"extra_args": extra_args})
    config["sessions"] = {"max_turns": 1000, "affinity": affinity}
    return config


def run(runs: int, turns: int, opening_words: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for label, extra_args in ENGINE_CACHES.items():
        rows = []
        with (
            tempfile.TemporaryDirectory(prefix="llorch-bench-") as on_dir,
            tempfile.TemporaryDirectory(prefix="llorch-bench-") as off_dir,
            live_server(_config(Path(on_dir), True, extra_args)) as with_affinity,
            live_server(_config(Path(off_dir), False, extra_args)) as without,
        ):
            for run_no in range(runs):
                on = statistics.median(
                    _conversation_turns(with_affinity, turns, opening_words, run_no)
                )
                off = statistics.median(_conversation_turns(without, turns, opening_words, run_no))
                rows.append({"affinity_ms": on, "none_ms": off, "ratio": off / on})
        results[label] = {
            "runs": rows,
            "median": {k: statistics.median(r[k] for r in rows) for k in rows[0]},
        }
    return {"turns": turns, "opening_words": opening_words, "engines": results}


def report(result: dict[str, Any]) -> None:
    print(
        f"session affinity: 2 conversations x {result['turns']} turns, openings of "
        f"{result['opening_words']} words; TTFT of turns 2.. (median per run)"
    )
    for label, figures in result["engines"].items():
        print(f"\n{label}")
        print(f"{'run':>4} {'affinity ms':>12} {'no affinity ms':>15} {'ratio':>6}")
        for n, row in enumerate(figures["runs"], 1):
            print(
                f"{n:>4} {row['affinity_ms']:>12.2f} {row['none_ms']:>15.2f} {row['ratio']:>6.2f}"
            )
        m = figures["median"]
        print(f"{'med':>4} {m['affinity_ms']:>12.2f} {m['none_ms']:>15.2f} {m['ratio']:>6.2f}")
