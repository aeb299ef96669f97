"""``python -m xtask dashboard-png``: the dashboard's panels, drawn from a real run's scrapes.

Starts a real orchestratord + llama-server, drives ~20 s of mixed traffic (interactive and
batch tasks, a few sessions, cancels, a full queue), scrapes ``/metrics`` every half second,
evaluates each panel of ``dashboards/llama-orch.json`` the way Prometheus would (rates over
the scrapes, quantiles from histogram buckets) and draws them with matplotlib into
``docs/dashboard.png`` for the README. A picture of real figures, not a screenshot of Grafana.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from xtask.fakes.live_server import LiveServer, live_server, task_body

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "dashboard.png"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: httpx.Client) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def traffic(server: LiveServer, stop: threading.Event) -> None:
    rng = random.Random(7)
    sessions = [str(uuid.uuid4()) for _ in range(3)]
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=60) as client:
        while not stop.is_set():
            body = task_body(
                max_tokens=rng.choice([32, 64, 256]),
                priority=rng.choice(["interactive", "batch"]),
                session_id=rng.choice(sessions) if rng.random() < 0.3 else str(uuid.uuid4()),
                sampler_profile_version="fixed-length",
            )
            if client.post("/v1/tasks", json=body).status_code != 202:
                time.sleep(0.05)
                continue
            if rng.random() < 0.1:
                client.post(f"/v1/tasks/{body['task_id']}/cancel")
            else:
                client.get(f"/v1/tasks/{body['task_id']}/stream")


def series(scrapes: list[tuple[float, Samples]], name: str, by: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for _, samples in scrapes:
        totals: dict[str, float] = defaultdict(float)
        for (metric, labels), value in samples.items():
            if metric == name:
                totals[dict(labels).get(by, "all")] += value
        for key, value in totals.items():
            out[key].append(value)
    return out


def rates(scrapes: list[tuple[float, Samples]], name: str, by: str) -> dict[str, list[float]]:
    raw = series(scrapes, name, by)
    times = [t for t, _ in scrapes]
    out = {}
    for key, values in raw.items():
        offset = len(times) - len(values)
        out[key] = [0.0] + [
            max(0.0, (values[i] - values[i - 1]) / (times[offset + i] - times[offset + i - 1]))
            for i in range(1, len(values))
        ]
    return out


def quantile(samples: Samples, name: str, q: float) -> float:
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (metric, labels), value in samples.items()
        if metric == f"{name}_bucket"
    )
    merged: dict[float, float] = defaultdict(float)
    for le, value in buckets:
        merged[le] += value
    ordered = sorted(merged.items())
    total = ordered[-1][1] if ordered else 0
    for le, count in ordered:
        if total and count >= q * total:
            return le
    return 0.0


def draw(scrapes: list[tuple[float, Samples]]) -> None:
    import matplotlib  # noqa: PLC0415 - only this command needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    start = scrapes[0][0]
    times = [t - start for t, _ in scrapes]
    fig, axes = plt.subplots(3, 2, figsize=(12, 10), constrained_layout=True)
    panels: list[tuple[str, dict[str, list[float]]]] = [
        ("Queue depth by priority", series(scrapes, "queue_depth", "priority")),
        ("Admissions/s (enqueued) and 429s/s", {
            **{f"admitted {k}": v
               for k, v in rates(scrapes, "tasks_enqueued_total", "priority").items()},
            **{f"429 {k}": v
               for k, v in rates(scrapes, "admission_backpressure_events_total", "policy").items()},
        }),
        ("Tokens/s by replica", rates(scrapes, "tokens_out_total", "replica_id")),
        ("Free slots", series(scrapes, "slots_free", "pool_id")),
        ("Cancels/s by reason", rates(scrapes, "tasks_canceled_total", "reason")),
    ]  # fmt: skip
    for ax, (title, lines) in zip(axes.flat, panels, strict=False):
        for label, values in sorted(lines.items()):
            ax.plot(times[len(times) - len(values) :], values, label=label)
        ax.set_title(title)
        ax.set_xlabel("s")
        if lines:
            ax.legend(fontsize=7)
    last = scrapes[-1][1]
    quantiles = {
        name: [quantile(last, name, q) for q in (0.5, 0.95)]
        for name in ("latency_first_token_ms", "latency_queue_wait_ms", "latency_decode_ms")
    }
    ax = axes.flat[5]
    names = list(quantiles)
    ax.bar([n.removeprefix("latency_") + " p50" for n in names], [quantiles[n][0] for n in names])
    ax.bar([n.removeprefix("latency_") + " p95" for n in names], [quantiles[n][1] for n in names])
    ax.set_title("Latency percentiles (bucket bounds, ms)")
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.suptitle("llama-orch dashboard panels from a real run (tiny model, 2 slots, CPU)")
    OUT.parent.mkdir(exist_ok=True)
    fig.savefig(OUT, dpi=80)


def run(args: argparse.Namespace) -> int:
    scrapes: list[tuple[float, Samples]] = []
    with live_server(queue={"capacity": 4, "full_policy": "reject"}) as server:
        stop = threading.Event()
        workers = [threading.Thread(target=traffic, args=(server, stop)) for _ in range(6)]
        for worker in workers:
            worker.start()
        with httpx.Client(base_url=server.url, timeout=10) as client:
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                scrapes.append((time.monotonic(), scrape(client)))
                time.sleep(0.5)
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
    draw(scrapes)
    print(f"dashboard-png: {len(scrapes)} scrapes drawn into {OUT.relative_to(ROOT)}")
    return 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("dashboard-png", help="draw the dashboard's panels from a real run")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.set_defaults(run=run)
