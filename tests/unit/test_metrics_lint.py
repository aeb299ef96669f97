"""The metrics lint catches what it promises to catch (HOME-802, OC-METRICS-7101/7102)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from xtask.checks.metrics_lint import CONTRACT, lint

POOL = 'engine="llamacpp",engine_version="b1",pool_id="p"'
REPLICA = POOL + ',replica_id="p-r0"'


def contract() -> dict[str, Any]:
    return dict(json.loads(CONTRACT.read_text()))


def exposition(**replace: str) -> str:
    families = {
        "queue_depth": f'# TYPE queue_depth gauge\nqueue_depth{{{POOL},priority="batch"}} 0\n',
        "tasks_enqueued": "# TYPE tasks_enqueued_total counter\n"
        f'tasks_enqueued_total{{{REPLICA},priority="batch"}} 1\n',
        "tasks_rejected": "# TYPE tasks_rejected_total counter\n"
        'tasks_rejected_total{engine="llamacpp",reason="queue_full"} 1\n',
        "tokens_in": f"# TYPE tokens_in_total counter\ntokens_in_total{{{REPLICA}}} 3\n",
        "tokens_out": f"# TYPE tokens_out_total counter\ntokens_out_total{{{REPLICA}}} 3\n",
        "gpu_utilization": "# TYPE gpu_utilization gauge\n",
        "vram_used_bytes": "# TYPE vram_used_bytes gauge\n",
    }
    families.update(replace)
    return "".join(families.values())


@pytest.mark.req("HOME-802")
def test_the_contract_requires_the_home_profile_metrics() -> None:
    required = {e["name"] for e in contract()["required"]}
    assert required == {
        "queue_depth",
        "tasks_enqueued_total",
        "tasks_rejected_total",
        "tokens_in_total",
        "tokens_out_total",
        "gpu_utilization",
        "vram_used_bytes",
    }


@pytest.mark.req("HOME-802")
def test_a_conforming_scrape_passes() -> None:
    assert lint(exposition(), contract()) == []


@pytest.mark.req("HOME-802", "OC-METRICS-7101")
def test_missing_required_metric_fails() -> None:
    problems = lint(exposition(tokens_out=""), contract())
    assert problems == ["tokens_out_total: required metric missing"]


@pytest.mark.req("OC-METRICS-7101")
def test_wrong_type_fails() -> None:
    text = exposition(
        queue_depth=f'# TYPE queue_depth counter\nqueue_depth_total{{{POOL},priority="batch"}} 0\n'
    )
    assert any("queue_depth" in p and "type" in p for p in lint(text, contract()))


@pytest.mark.req("OC-METRICS-7101")
def test_wrong_label_set_fails() -> None:
    text = exposition(tokens_in=f"# TYPE tokens_in_total counter\ntokens_in_total{{{POOL}}} 3\n")
    assert any("tokens_in_total: labels" in p for p in lint(text, contract()))


@pytest.mark.req("OC-METRICS-7102")
def test_blown_cardinality_budget_fails() -> None:
    lines = "".join(
        f'tasks_rejected_total{{engine="e{i}",reason="queue_full"}} 1\n' for i in range(5)
    )
    text = exposition(tasks_rejected="# TYPE tasks_rejected_total counter\n" + lines)
    # e0..e4 plus the "llamacpp" of the other families
    assert "label engine: 6 values, budget 4" in lint(text, contract())


@pytest.mark.req("OC-METRICS-7101")
def test_unlisted_metric_fails() -> None:
    text = exposition() + "# TYPE surprise gauge\nsurprise 1\n"
    assert "surprise: exposed but not in the metrics contract" in lint(text, contract())


@pytest.mark.req("HOME-802")
def test_required_metric_without_samples_fails_unless_allowed() -> None:
    text = exposition(tokens_in="# TYPE tokens_in_total counter\n")
    assert "tokens_in_total: required but has no samples after traffic" in lint(text, contract())
