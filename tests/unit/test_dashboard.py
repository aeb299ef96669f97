"""The Grafana dashboard (dashboards/llama-orch.json) asks only for metrics the metrics
contract (ci/metrics.lint.json) lists, and shows what an operator needs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "dashboards" / "llama-orch.json").read_text())
LINT = json.loads((ROOT / "ci" / "metrics.lint.json").read_text())
# A metric selector: a name followed by its label matcher (every query writes one).
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def exprs() -> list[str]:
    return [t["expr"] for panel in DASHBOARD["panels"] for t in panel["targets"]]


def contract_names() -> set[str]:
    names = set()
    for entry in LINT["required"] + LINT["optional"]:
        names.add(entry["name"])
        if entry["type"] == "histogram":
            names |= {entry["name"] + suffix for suffix in HISTOGRAM_SUFFIXES}
    return names


@pytest.mark.req("HOME-802")
def test_every_query_names_only_metrics_of_the_contract() -> None:
    used = {name for expr in exprs() for name in SELECTOR.findall(expr)}
    assert used, "no metric found in the dashboard's queries"
    assert used <= contract_names(), used - contract_names()
    # every query names at least one metric (no query hides a name the regex cannot see)
    assert all(SELECTOR.search(expr) for expr in exprs())


def test_the_dashboard_shows_what_an_operator_needs() -> None:
    titles = {panel["title"] for panel in DASHBOARD["panels"]}
    assert {
        "Queue depth",
        "Admissions and rejections",
        "Tokens per second",
        "First-token latency",
        "Free slots",
        "GPU utilization",
        "VRAM used",
        "Sessions and budgets",
    } <= titles
    queries = " ".join(exprs())
    assert "histogram_quantile(0.95" in queries and 'reason="budget_exhausted"' in queries
