"""``python -m xtask bench placement``: what choosing a replica costs per task.

The decision the pool makes for every dispatched task (``placement/choose.py``), timed over
``--decisions`` calls on real :class:`Replica` objects (Ready, slots partly busy, free VRAM
from a declared inventory) with 8 replicas, side by side with 1 replica (the cost before
replicas existed). Reported per run: microseconds per decision and the ratio 8 : 1; the
target is at most 50 us per decision with 8 replicas.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from orchestratord.adapters.base import Sampling
from orchestratord.adapters.mock import MockAdapter
from orchestratord.core.request import TaskRequest
from orchestratord.core.task import Task
from orchestratord.metrics import Metrics
from orchestratord.placement.choose import choose_replica
from orchestratord.replicas.replica import Replica, ReplicaSpec
from xtask.fakes.live_server import task_body

TARGET_US = 50.0


def _replicas(count: int) -> list[Replica]:
    metrics = Metrics()
    replicas = []
    for index in range(count):
        spec = ReplicaSpec("bench", index, slots=4, devices=(index % 2,))
        replica = Replica(spec, "llamacpp", MockAdapter(), metrics)
        replica.ready = True
        del replica.free_slot_ids[: index % 4]  # uneven load, as under traffic
        replica.decode_tokens_per_s = 100.0 + index
        replicas.append(replica)
    return replicas


def _decision_us(count: int, decisions: int) -> float:
    replicas = _replicas(count)
    free = {0: 20 * 2**30, 1: 10 * 2**30}

    def free_vram(replica: Replica) -> int:
        return min(free[i] for i in replica.devices)

    request = TaskRequest.model_validate_json(json.dumps(task_body()))
    task = Task(
        request,
        "bench",
        seed=1,
        sampling=Sampling(0.8, 40, 0.95, 0.05, 1.0, False),
        prompt_tokens=None,
        correlation_id="bench",
    )
    started = time.perf_counter_ns()
    for _ in range(decisions):
        choose_replica(replicas, task, free_vram)
    return (time.perf_counter_ns() - started) / decisions / 1000


def run(runs: int, decisions: int) -> dict[str, Any]:
    rows = []
    for _ in range(runs):
        one = _decision_us(1, decisions)
        eight = _decision_us(8, decisions)
        rows.append({"one_us": one, "eight_us": eight, "ratio": eight / one})
    return {
        "decisions": decisions,
        "runs": rows,
        "median": {
            k: statistics.median(r[k] for r in rows) for k in ("one_us", "eight_us", "ratio")
        },
        "target_us": TARGET_US,
    }


def report(result: dict[str, Any]) -> None:
    print(f"placement decision, {result['decisions']} decisions per run")
    print(f"{'run':>4} {'1 replica us':>13} {'8 replicas us':>14} {'ratio':>6}")
    for n, row in enumerate(result["runs"], 1):
        print(f"{n:>4} {row['one_us']:>13.2f} {row['eight_us']:>14.2f} {row['ratio']:>6.2f}")
    m = result["median"]
    print(f"{'med':>4} {m['one_us']:>13.2f} {m['eight_us']:>14.2f} {m['ratio']:>6.2f}")
    verdict = "met" if m["eight_us"] <= result["target_us"] else "NOT met"
    print(f"target <= {result['target_us']:g} us with 8 replicas: {verdict}")
