"""``python -m xtask metrics-lint``: a live scrape after real traffic vs ci/metrics.lint.json.

It starts orchestratord (+ llama-server), drives a completed task, a canceled task, a 400 and
a 429, scrapes ``/metrics`` and fails on: a required family missing, a family of the wrong
type, a sample whose label set is not exactly the contract's, a label with more distinct
values than its budget, or a family the contract does not list. ``--scrape FILE`` lints a
saved exposition instead (no server).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from xtask.fakes.live_server import LiveServer, live_server, task_body
from xtask.loop.results import write_result

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "ci" / "metrics.lint.json"
_SERIES_SUFFIXES = ("_bucket", "_count", "_sum", "_created", "_total")


def _family_name(name: str, kind: str) -> str:
    # The parser names counter families without `_total`; the contract uses exposed names.
    return name.removesuffix("_total") if kind == "counter" else name


def lint(text: str, contract: dict[str, Any]) -> list[str]:
    entries = {e["name"]: (e, True) for e in contract["required"]}
    entries.update({e["name"]: (e, False) for e in contract["optional"]})
    expected = {_family_name(n, e["type"]): (n, e, req) for n, (e, req) in entries.items()}
    allowed_empty = contract.get("required_without_samples_allowed", {})
    problems: list[str] = []
    seen: set[str] = set()
    values: dict[str, set[str]] = defaultdict(set)
    for family in text_string_to_metric_families(text):
        if family.name not in expected:
            problems.append(f"{family.name}: exposed but not in the metrics contract")
            continue
        name, entry, _ = expected[family.name]
        seen.add(family.name)
        if family.type != entry["type"]:
            problems.append(f"{name}: type {family.type}, contract says {entry['type']}")
        want = sorted(entry["labels"])
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "le"}
            if sorted(labels) != want:
                problems.append(f"{sample.name}: labels {sorted(labels)}, contract says {want}")
                break
            for key, value in labels.items():
                values[key].add(value)
        if not family.samples and expected[family.name][2] and name not in allowed_empty:
            problems.append(f"{name}: required but has no samples after traffic")
    for fam, (name, _, required) in expected.items():
        if required and fam not in seen:
            problems.append(f"{name}: required metric missing")
    for label, seen_values in sorted(values.items()):
        budget = contract["cardinality_budgets"].get(label)
        if budget is None:
            problems.append(f"label {label}: no cardinality budget in the contract")
        elif len(seen_values) > budget:
            problems.append(f"label {label}: {len(seen_values)} values, budget {budget}")
    return problems


def drive_traffic(server: LiveServer) -> None:
    """Every path that moves a metric: completion, cancel, 400, 429."""
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=30.0) as client:
        done = task_body()
        assert client.post("/v1/tasks", json=done).status_code == 202
        client.get(f"/v1/tasks/{done['task_id']}/stream").raise_for_status()
        assert client.post("/v1/tasks", json=task_body(ctx=10**6)).status_code == 400
        long = {"max_tokens": 1900, "sampler_profile_version": "fixed-length", "prompt": "a"}
        accepted = []
        for _ in range(12):
            response = client.post("/v1/tasks", json=task_body(priority="batch", **long))
            if response.status_code == 429:
                break
            accepted.append(response.json()["task_id"])
        else:
            raise RuntimeError("metrics-lint: the queue never filled")
        for task_id in accepted:
            client.post(f"/v1/tasks/{task_id}/cancel")


REPORT = ROOT / "reports" / "metrics-lint.json"
# What a clean live scrape after real traffic proves.
PROVES = ["HOME-801", "HOME-802", "OC-CTRL-2051", "OC-METRICS-7101", "OC-METRICS-7102"]


def write_report(problems: list[str]) -> None:
    entry = {
        "ids": PROVES,
        "outcome": "failed" if problems else "passed",
        "runner": "metrics-lint",
        "detail": "; ".join(problems)[:500],
    }
    write_result(REPORT, {"results": {"metrics-lint::live-scrape": entry}})


def run(args: argparse.Namespace) -> int:
    contract = json.loads(CONTRACT.read_text(encoding="utf-8"))
    if args.scrape:
        text = Path(args.scrape).read_text(encoding="utf-8")
    else:
        with live_server() as server:
            drive_traffic(server)
            text = httpx.get(server.url + "/metrics", timeout=10.0).text
    problems = lint(text, contract)
    if not args.scrape:
        write_report(problems)
    for problem in problems:
        print(f"metrics-lint: {problem}", file=sys.stderr)
    families = len(list(text_string_to_metric_families(text)))
    print(f"metrics-lint: {families} families checked, {len(problems)} problems")
    return 1 if problems else 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("metrics-lint", help="lint a live /metrics scrape")
    parser.add_argument("--scrape", help="lint this saved exposition instead of a live server")
    parser.set_defaults(run=run)
