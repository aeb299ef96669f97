"""Predicted start times stay useful under load, on a real llama-server (HOME-1003, FR-PF-002).

A burst of equal tasks lands on a two-slot pool that has served a burst before and single
tasks since (a task alone decodes faster than two side by side). Each 202's
``predicted_start_ms`` is compared with when that task's first token really arrived. Useful
means: every queued task gets a prediction, predictions grow with the queue, they order the
tasks the way the engine served them, and the typical error is a fraction of the wait, not a
multiple of it: the median of actual over predicted within [0.7, 1.4], a ratio of two figures
measured on the same machine in the same minute, so a slow machine moves both alike.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.sse import SSEParser
from xtask.fakes.live_server import LiveServer, live_server, task_body

pytestmark = pytest.mark.e2e
TOKENS = 600
BURST = 8


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server(queue={"capacity": 2 * BURST, "full_policy": "reject"}) as live:
        yield live


def fixed_task() -> dict[str, object]:
    return task_body(max_tokens=TOKENS, sampler_profile_version="fixed-length", prompt="load")


def first_token_at(server: LiveServer, task_id: str, seen: dict[str, float]) -> None:
    parser = SSEParser()
    with (
        httpx.Client(base_url=server.url, headers=server.auth, timeout=120.0) as client,
        client.stream("GET", f"/v1/tasks/{task_id}/stream") as response,
    ):
        for chunk in response.iter_raw():
            events = [e for e, _ in parser.feed(chunk)]
            if "token" in events and task_id not in seen:
                seen[task_id] = time.monotonic()
            if "end" in events or "error" in events:
                return


def spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        result = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                result[order[k]] = (i + j) / 2
            i = j + 1
        return result

    return float(statistics.correlation(ranks(xs), ranks(ys)))


def burst(server: LiveServer, count: int) -> tuple[list[int | None], list[float]]:
    """Submit ``count`` equal tasks at once: each one's prediction, and its real first token
    (ms after its submission), streamed from a thread per task."""
    seen: dict[str, float] = {}
    admitted: list[tuple[str, float, int | None]] = []
    threads = []
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=120.0) as client:
        for _ in range(count):
            sent = time.monotonic()
            answer = client.post("/v1/tasks", json=fixed_task())
            assert answer.status_code == 202
            meta = answer.json()
            admitted.append((meta["task_id"], sent, meta["predicted_start_ms"]))
            thread = threading.Thread(target=first_token_at, args=(server, meta["task_id"], seen))
            thread.start()
            threads.append(thread)
    for thread in threads:
        thread.join(timeout=300)
    assert len(seen) == count
    return [p for _, _, p in admitted], [(seen[i] - sent) * 1000 for i, sent, _ in admitted]


@pytest.mark.req("HOME-1003", "FR-PF-002")
def test_predicted_start_tracks_the_real_queue_under_load(server: LiveServer) -> None:
    burst(server, 4)  # the pool learns what a task takes when it is busy ...
    for _ in range(3):  # ... then serves the user alone for a while, which is quicker
        burst(server, 1)
    predicted, actual_ms = burst(server, BURST)

    assert all(p is not None for p in predicted), predicted
    known = [p for p in predicted if p is not None]
    assert known == sorted(known)  # grows with the queue
    queued = [i for i, p in enumerate(known) if p > 0]
    assert len(queued) >= BURST - 2  # two slots: the rest waited
    # The engine served them in the order the predictions gave.
    assert spearman([float(p) for p in known], actual_ms) >= 0.8, (known, actual_ms)
    ratios = [actual_ms[i] / known[i] for i in queued]
    # Measured here with the per-occupancy estimator: 0.90-1.23. The single mean it replaced
    # predicted this burst from the quicker lone runs: 1.32-2.1, mostly above 1.4.
    assert 0.7 <= statistics.median(ratios) <= 1.4, (known, actual_ms)
    print(
        "predicted_start_ms", known,
        "first token after ms", [round(a) for a in actual_ms],
        "median actual/predicted", round(statistics.median(ratios), 2),
    )  # fmt: skip
