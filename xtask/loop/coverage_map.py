"""Which test ran which line: the map the full run records for ``xtask affected`` (HARN-202).

The full dev loop measures the pytest runs (unit, end-to-end, pytest-bdd) with coverage.py's
dynamic contexts, one per test. The orchestratord processes tests start are not traced line
by line (too dear for a busy server on two cores): ``xtask/loop/import_recorder.py`` records which
project modules each one imported, bound to the test module that started it (its servers
serve the whole module). Both are combined after the run into one JSON map, kept under the
state directory with the commit it was recorded at (never in the repository):
``{"commit", "files": {path: {line or "*": [context index]}}, "contexts": [...],
"scenarios": {pytest-bdd node id: [feature, scenario]}}``.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
COVERAGE_DIR_ENV = "LLORCH_COVERAGE_DIR"
DATA_DIR = ROOT / "reports" / "coverage"  # this run's data files; the map goes elsewhere
SOURCES = ("orchestratord", "xtask", "steps")
STEP_ENV = "LLORCH_STEP"
ANY_LINE = "*"  # a module a server imported: every line counts
_PHASE = re.compile(r"\|(setup|run|teardown)$")


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "llama-orch"


def map_path() -> Path:
    return Path(os.environ.get("LLORCH_COVERAGE_MAP") or state_dir() / "coverage-map.json")


def recording_dir() -> Path | None:
    """Where this run's coverage data files go, when the run records the map."""
    value = os.environ.get(COVERAGE_DIR_ENV)
    return Path(value) if value else None


def pytest_args(label: str) -> list[str]:
    """pytest-cov arguments for one pytest run of a recording run (none otherwise)."""
    folder = recording_dir()
    if folder is None:
        return []
    os.environ["COVERAGE_FILE"] = str(folder / f".coverage.{label}")
    sources = [f"--cov={s}" for s in SOURCES]
    return [*sources, "--cov-context=test", "--cov-report=", "-p", "pytest_cov"]


def server_command(command: list[str]) -> list[str]:
    """``python -m orchestratord ...`` through the import recorder, in a recording run: the
    map learns which modules the servers of the test module that started it imported."""
    folder = recording_dir()
    if folder is None:
        return command
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    # Outside pytest, the dev-loop step that started it (behave, soak, conformance, ...).
    module = current.split("::", 1)[0] if current else f"step:{os.environ.get(STEP_ENV, '')}"
    python, _, *rest = command  # [python, -m, orchestratord, ...]
    label = module.replace("/", "~").replace(":", "=")
    out = folder / f"imports.{label}.{uuid.uuid4().hex[:8]}.json"
    return [python, "-m", "xtask.loop.import_recorder", str(out), *rest]


def context_test(context: str) -> str:
    """A recorded context as what to select: a pytest node id, or a test module."""
    return _PHASE.sub("", context)


def build(folder: Path, scenarios: dict[str, list[str]], commit: str) -> dict[str, Any]:
    """Combine the run's data files into the map."""
    from coverage import CoverageData  # noqa: PLC0415  only the recording run needs it

    data_files = sorted(p for p in folder.glob(".coverage*") if p.is_file())  # pytest-cov
    contexts: dict[str, int] = {}
    files: dict[str, dict[str, list[int]]] = {}
    for data_file in data_files:
        data = CoverageData(basename=str(data_file))
        data.read()
        for measured in data.measured_files():
            path = Path(measured)
            if not path.is_relative_to(ROOT):
                continue
            rel = str(path.relative_to(ROOT))
            by_line = files.setdefault(rel, {})
            for line, names in data.contexts_by_lineno(measured).items():
                for name in names:
                    if not name:
                        continue
                    index = contexts.setdefault(context_test(name), len(contexts))
                    slot = by_line.setdefault(str(line), [])
                    if index not in slot:
                        slot.append(index)
    for imports in sorted(folder.glob("imports.*.json")):
        recorded = json.loads(imports.read_text(encoding="utf-8"))
        label = imports.name.removeprefix("imports.").rsplit(".", 2)[0]  # .<id>.json
        test_module = label.replace("~", "/").replace("=", ":")
        index = contexts.setdefault(test_module, len(contexts))
        for rel in recorded["files"]:
            slot = files.setdefault(rel, {}).setdefault(ANY_LINE, [])
            if index not in slot:
                slot.append(index)
    ordered = sorted(contexts, key=contexts.__getitem__)
    return {"commit": commit, "contexts": ordered, "files": files, "scenarios": scenarios}


def write(document: dict[str, Any], path: Path | None = None) -> Path:
    target = path or map_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(document, separators=(",", ":")), encoding="utf-8")
    return target


def read(path: Path | None = None) -> dict[str, Any] | None:
    target = path or map_path()
    if not target.exists():
        return None
    document: dict[str, Any] = json.loads(target.read_text(encoding="utf-8"))
    return document


def tests_for_lines(document: dict[str, Any], path: str, lines: set[int]) -> set[str]:
    """The tests (node ids or modules) that ran any of ``lines`` of ``path``, or whose
    servers loaded it."""
    return set(why_tests(document, path, lines))


def why_tests(document: dict[str, Any], path: str, lines: set[int]) -> dict[str, str]:
    """test → ``ran`` (a changed line ran in it) or ``loaded`` (a server it started
    imported the module)."""
    by_line = document["files"].get(path, {})
    names: list[str] = document["contexts"]
    found = {names[i]: "loaded" for i in by_line.get(ANY_LINE, [])}
    found |= {names[i]: "ran" for line in lines for i in by_line.get(str(line), [])}
    return found
