"""Records, per test, the requirement IDs it claims and its outcome (``--req-report PATH``).

IDs come from ``@pytest.mark.req("ID", ...)`` on the test function itself (plain tests) and
from scenario tags that ``tests/bdd/conftest.py`` turns into the same marker (pytest-bdd).
A module- or class-level req marker is a usage error: each test claims only what it
asserts. The file carries the run id (``xtask/results.py``); the traceability step joins it
with the specs and the claims it finds in the sources; nothing here decides coverage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pytest_bdd.scenario import scenario_wrapper_template_registry

from xtask.results import write_result

_ROOT = Path(__file__).resolve().parent.parent
_RESULTS: dict[str, dict[str, Any]] = {}
_RUNNERS = {"tests/bdd/": "pytest-bdd", "tests/pact/": "pact-consumer"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--req-report", default=None, help="write requirement results as JSON")


def _ids(item: pytest.Item) -> list[str]:
    ids: set[str] = set()
    for mark in item.iter_markers("req"):
        ids.update(str(arg) for arg in mark.args)
    return sorted(ids)


def _check_marker_scope(item: pytest.Item) -> None:
    for node in item.listchain()[:-1]:
        for mark in node.own_markers:
            if mark.name == "req":
                raise pytest.UsageError(
                    f"{node.nodeid}: req marker on a module or class claims IDs for every "
                    "test in it; mark each test with what it proves"
                )


def _scenario(item: pytest.Item) -> list[str] | None:
    """[feature file, scenario name] of a pytest-bdd test: outcomes are keyed by both, since
    two features may hold scenarios of the same name."""
    function = getattr(item, "function", None)
    template = scenario_wrapper_template_registry.get(function) if function else None
    if template is None:
        return None
    path = Path(template.feature.filename).resolve()
    shown = path.relative_to(_ROOT) if path.is_relative_to(_ROOT) else path
    return [str(shown), template.name]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        _check_marker_scope(item)
        runner = next((r for prefix, r in _RUNNERS.items() if prefix in item.nodeid), "pytest")
        entry: dict[str, Any] = {"ids": _ids(item), "outcome": "not run", "runner": runner}
        scenario = _scenario(item)
        if scenario is not None:
            entry["scenario"] = scenario
        _RESULTS[item.nodeid] = entry


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
    ordered = {nodeid: _RESULTS[nodeid] for nodeid in sorted(_RESULTS)}
    write_result(Path(path).resolve(), {"results": ordered})
