"""Flaky results in one run's result files, for the reports and the loop's verdict (HARN-401/402).

A result is flaky when it failed and then passed in its re-run (``xtask/loop/reruns.py`` for the
pytest runners, ``xtask/checks/bdd.py`` for behave). Both outcomes are kept: the first failure's
last line, and the re-run's pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xtask.spec.quarantine import Quarantined


@dataclass(frozen=True, order=True)
class FlakyTest:
    runner: str
    name: str
    ids: tuple[str, ...]
    first: str
    detail: str


def flaky_tests(documents: dict[str, dict[str, Any] | None]) -> list[FlakyTest]:
    found: list[FlakyTest] = []
    for feature in (documents.get("behave") or {}).get("features", []):
        for element in feature.get("elements", []):
            if element.get("status") == "flaky":
                tags = tuple(str(t).lstrip("@") for t in element.get("tags", []))
                name = f"{element['location']} {element['name']}"
                found.append(FlakyTest("behave", name, tags, element.get("first", "failed"), ""))
    for runner, document in documents.items():
        if runner == "behave" or not document:
            continue
        for name, entry in document.get("results", {}).items():
            if entry.get("outcome") == "flaky":
                ids = tuple(entry.get("ids", ()))
                first = entry.get("first", "failed")
                found.append(FlakyTest(runner, name, ids, first, entry.get("detail", "")))
    return sorted(found)


def markdown(flaky: list[FlakyTest], quarantined: dict[str, Quarantined]) -> list[str]:
    if not flaky:
        return []
    lines = [
        "",
        "## Flaky results",
        "",
        "Failed, then passed when re-run once in a fresh process. A flaky MUST fails the loop "
        "unless its ID is in `tests/quarantine.yaml`.",
        "",
        "| runner | test | IDs | first run | re-run | quarantined |",
        "|---|---|---|---|---|---|",
    ]
    for f in flaky:
        first = f.first + (f": {f.detail}" if f.detail else "")
        held = [
            f"{i} since {quarantined[i].since}: {quarantined[i].reason}"
            for i in f.ids
            if i in quarantined
        ]
        lines.append(
            f"| {f.runner} | `{f.name}` | {', '.join(f.ids)} | {first} | passed | "
            f"{'; '.join(held) or 'no'} |"
        )
    return lines
