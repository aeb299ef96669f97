"""Records, per test, the requirement IDs it claims and its outcome (``--req-report PATH``).

IDs come from ``@pytest.mark.req("ID", ...)`` on the test function itself (plain tests) and
from scenario tags that ``tests/bdd/conftest.py`` turns into the same marker (pytest-bdd).
A module- or class-level req marker is a usage error: each test claims only what it
asserts. The file carries the run id (``xtask/loop/results.py``); the traceability step joins it
with the specs and the claims it finds in the sources; nothing here decides coverage.
"""

from __future__ import annotations

import json
import os
import re
import signal
import tempfile
from pathlib import Path
from typing import Any

import pytest
from pytest_bdd.scenario import scenario_wrapper_template_registry

from xtask.loop import shards
from xtask.loop.results import write_result

_ROOT = Path(__file__).resolve().parent.parent
_RESULTS: dict[str, dict[str, Any]] = {}
_RUNNERS = {"tests/bdd/": "pytest-bdd", "tests/pact/": "pact-consumer"}
_ENTRY = "llorch-req-entry"
_PARAMS = re.compile(r"\[.*\]$")
# Tests that run trace record into a history of their own, never the developer's.
os.environ.setdefault("LLORCH_HISTORY_DB", str(Path(tempfile.mkdtemp()) / "history.sqlite"))


def pytest_configure(config: pytest.Config) -> None:
    # A shell started in the background (``cmd &`` without job control) hands its children
    # SIGINT ignored; Python then raises no KeyboardInterrupt, and a `llorch` a test starts
    # inherits the same. The tests of Ctrl-C need it delivered wherever the loop was started.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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


def _share_key(item: pytest.Item, scenario: list[str] | None) -> str:
    """What decides a test's shard: its feature file (BDD) or its module, so module fixtures
    stay with their tests and both BDD runners split the scenarios alike."""
    return scenario[0] if scenario is not None else item.nodeid.split("::", 1)[0]


def _affected() -> tuple[set[str], set[tuple[str, str]]] | None:
    """(tests, scenarios) an affected-only run selected (``xtask affected``), or None."""
    path = os.environ.get("LLORCH_AFFECTED")
    if not path:
        return None
    chosen = json.loads(Path(path).read_text(encoding="utf-8"))["affected"]
    return set(chosen["tests"]), {(f, n) for f, n in chosen["scenarios"]}


def _selected(item: pytest.Item, scenario: list[str] | None, chosen: Any) -> bool:
    if chosen is None or item.nodeid.startswith("tests/pact/"):  # the pact step runs whole
        return True
    tests, scenarios = chosen
    if scenario is not None:
        return (scenario[0], scenario[1]) in scenarios
    nodeid = item.nodeid
    bare = _PARAMS.sub("", nodeid)
    parts = nodeid.split("::", 1)[0].split("/")
    folders = {"/".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return nodeid in tests or bare in tests or bool(folders & tests)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    shard = shards.current()
    chosen = _affected()
    kept: list[pytest.Item] = []
    for item in items:
        _check_marker_scope(item)
        scenario = _scenario(item)
        if not shards.owns(_share_key(item, scenario), shard):
            continue
        if not _selected(item, scenario, chosen):
            continue
        runner = next((r for prefix, r in _RUNNERS.items() if prefix in item.nodeid), "pytest")
        entry: dict[str, Any] = {"ids": _ids(item), "outcome": "not run", "runner": runner}
        if scenario is not None:
            entry["scenario"] = scenario
        _RESULTS[item.nodeid] = entry
        kept.append(item)
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.nodeid not in _RESULTS])
        items[:] = kept


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Any:
    # Under pytest-xdist the controller writes the report but never collects: each report
    # carries its test's entry to it.
    report = yield
    entry = _RESULTS.get(item.nodeid)
    if entry is not None and report.when == "setup":
        report.user_properties.append((_ENTRY, {k: v for k, v in entry.items() if k != "outcome"}))
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _RESULTS.get(report.nodeid)
    if entry is None:
        carried = dict(report.user_properties).get(_ENTRY)
        if not isinstance(carried, dict):
            return
        entry = _RESULTS[report.nodeid] = {**carried, "outcome": "not run"}
    if report.failed:
        text = str(report.longrepr)
        undefined = "StepDefinitionNotFoundError" in text
        entry["outcome"] = "undefined" if undefined else "failed"
        crash = getattr(report.longrepr, "reprcrash", None)
        if crash is not None:  # where it failed and the assertion's own message
            message = crash.message.strip().splitlines()[0] if crash.message.strip() else ""
            entry["detail"] = f"{Path(crash.path).name}:{crash.lineno}: {message}"[:300]
        else:
            entry["detail"] = text.strip().splitlines()[-1][:300] if text.strip() else ""
    elif report.skipped and entry["outcome"] == "not run":
        entry["outcome"] = "skipped"
    elif report.when == "call" and report.passed and entry["outcome"] == "not run":
        entry["outcome"] = "passed"


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--req-report")
    if not path or hasattr(session.config, "workerinput"):  # an xdist worker: the controller writes
        return
    ordered = {nodeid: _RESULTS[nodeid] for nodeid in sorted(_RESULTS)}
    rootdir = str(session.config.rootpath)  # test ids are relative to it (for re-runs)
    write_result(Path(path).resolve(), {"results": ordered, "rootdir": rootdir})
