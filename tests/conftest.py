"""Records, per test, the requirement IDs it claims and its outcome (``--req-report PATH``).

IDs come from ``@pytest.mark.req("ID", ...)`` (plain tests) and from scenario tags that
``tests/bdd/conftest.py`` turns into the same marker (pytest-bdd). The traceability step
joins this file with the specs; nothing here decides coverage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

_RESULTS: dict[str, dict[str, Any]] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--req-report", default=None, help="write requirement results as JSON")


def _ids(item: pytest.Item) -> list[str]:
    ids: set[str] = set()
    for mark in item.iter_markers("req"):
        ids.update(str(arg) for arg in mark.args)
    return sorted(ids)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        _RESULTS[item.nodeid] = {
            "ids": _ids(item),
            "outcome": "not run",
            "runner": "pytest-bdd" if "tests/bdd/" in item.nodeid else "pytest",
        }


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _RESULTS.get(report.nodeid)
    if entry is None:
        return
    if report.failed:
        text = str(report.longrepr)
        undefined = "StepDefinitionNotFoundError" in text
        entry["outcome"] = "undefined" if undefined else "failed"
        entry["detail"] = text.strip().splitlines()[-1][:300] if text.strip() else ""
    elif report.skipped and entry["outcome"] == "not run":
        entry["outcome"] = "skipped"
    elif report.when == "call" and report.passed and entry["outcome"] == "not run":
        entry["outcome"] = "passed"


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--req-report")
    if not path:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ordered = {nodeid: _RESULTS[nodeid] for nodeid in sorted(_RESULTS)}
    out.write_text(json.dumps(ordered, indent=1, sort_keys=True) + "\n", encoding="utf-8")
