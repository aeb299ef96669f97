"""Every run's outcomes per test, kept on this machine (HARN-403): ``xtask history``.

trace records each run it reads into a SQLite file under the state directory
(``$XDG_STATE_HOME/llama-orch/harness-history.sqlite``, or ``LLORCH_HISTORY_DB``), never in
the repository: one row per test and run with the commit, the outcome, the first outcome
when it was re-run, and the requirement IDs it claims. ``python -m xtask history ID|TEST``
shows the last runs of the tests that claim the ID (or whose name contains TEST) and the flip
rate: how often the outcome changed from one run to the next.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sqlite3
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xtask.spec.spec_extract import ID_RE

HISTORY_ENV = "LLORCH_HISTORY_DB"
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, commit_id TEXT NOT NULL, recorded_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outcomes (
    run_id TEXT NOT NULL REFERENCES runs(run_id), runner TEXT NOT NULL, test TEXT NOT NULL,
    outcome TEXT NOT NULL, first TEXT, PRIMARY KEY (run_id, runner, test)
);
CREATE TABLE IF NOT EXISTS claims (
    run_id TEXT NOT NULL, runner TEXT NOT NULL, test TEXT NOT NULL, req_id TEXT NOT NULL,
    PRIMARY KEY (run_id, runner, test, req_id)
);
CREATE INDEX IF NOT EXISTS claims_by_id ON claims(req_id);
CREATE INDEX IF NOT EXISTS outcomes_by_test ON outcomes(test);
"""


@dataclass(frozen=True)
class Outcome:
    runner: str
    test: str
    outcome: str
    first: str | None = None
    ids: tuple[str, ...] = ()


def database() -> Path:
    explicit = os.environ.get(HISTORY_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "llama-orch" / "harness-history.sqlite"


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10)
    conn.executescript(SCHEMA)
    return conn


def outcomes_of(documents: dict[str, dict[str, Any] | None]) -> list[Outcome]:
    """Every test's outcome in one run's result documents (keyed by runner)."""
    found: list[Outcome] = []
    for feature in (documents.get("behave") or {}).get("features", []):
        for element in feature.get("elements", []):
            if element.get("type") == "scenario":
                tags = [str(t).lstrip("@") for t in element.get("tags", [])]
                ids = tuple(t for t in tags if ID_RE.match(t))
                name = f"{element['location']} {element['name']}"
                found.append(Outcome("behave", name, element["status"], element.get("first"), ids))
    for runner, document in documents.items():
        if runner == "behave" or not document:
            continue
        for test, entry in document.get("results", {}).items():
            ids = tuple(entry.get("ids", ()))
            found.append(Outcome(runner, test, entry["outcome"], entry.get("first"), ids))
    return found


def record(
    run_id: str, commit_id: str, outcomes: Iterable[Outcome], path: Path | None = None
) -> None:
    with _connect(path or database()) as conn:
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        conn.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?)", (run_id, commit_id, now))
        for o in outcomes:
            conn.execute(
                "INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?, ?, ?)",
                (run_id, o.runner, o.test, o.outcome, o.first),
            )
            conn.executemany(
                "INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?)",
                [(run_id, o.runner, o.test, req_id) for req_id in o.ids],
            )
    conn.close()


def flip_rate(outcomes: list[str]) -> float:
    """The share of runs that flipped, between 0 and 1 (HARN-403): a run flips when it was
    flaky (failed, then passed on its re-run) or when its outcome differs from the run
    before it. The first run can flip only by being flaky."""
    if not outcomes:
        return 0.0
    flipped = sum(
        1
        for index, outcome in enumerate(outcomes)
        if outcome == "flaky" or (index > 0 and outcome != outcomes[index - 1])
    )
    return flipped / len(outcomes)


def query(
    what: str, last: int, path: Path | None = None
) -> dict[tuple[str, str], list[tuple[str, str, str, str | None]]]:
    """(runner, test) → [(recorded_at, commit, outcome, first)], newest first."""
    conn = _connect(path or database())
    try:
        if ID_RE.match(what):
            keys = conn.execute(
                "SELECT DISTINCT runner, test FROM claims WHERE req_id = ?", (what,)
            ).fetchall()
        else:
            keys = conn.execute(
                "SELECT DISTINCT runner, test FROM outcomes WHERE test LIKE ?", (f"%{what}%",)
            ).fetchall()
        found = {}
        for runner, test in sorted(keys):
            found[(runner, test)] = conn.execute(
                "SELECT r.recorded_at, r.commit_id, o.outcome, o.first FROM outcomes o "
                "JOIN runs r USING (run_id) WHERE o.runner = ? AND o.test = ? "
                "ORDER BY r.recorded_at DESC, r.rowid DESC LIMIT ?",
                (runner, test, last),
            ).fetchall()
        return found
    finally:
        conn.close()


def claimants(req_id: str, path: Path | None = None) -> list[tuple[str, str]]:
    """(runner, test) that claimed ``req_id`` in the latest recorded run that had any."""
    target = path or database()
    if not target.exists():
        return []
    conn = _connect(target)
    try:
        rows = conn.execute(
            "SELECT c.runner, c.test FROM claims c JOIN runs r USING (run_id) "
            "WHERE c.req_id = ? AND r.recorded_at = (SELECT MAX(r2.recorded_at) FROM claims c2 "
            "JOIN runs r2 USING (run_id) WHERE c2.req_id = ?)",
            (req_id, req_id),
        ).fetchall()
        return sorted({(str(a), str(b)) for a, b in rows})
    finally:
        conn.close()


def run(args: argparse.Namespace) -> int:
    if args.last < 1:
        print(f"history: --last must be at least 1, not {args.last}", file=sys.stderr)
        return 2
    found = query(args.what, args.last)
    if not found:
        print(f"history: no recorded runs of {args.what!r} in {database()}")
        return 1
    for (runner, test), runs in found.items():
        outcomes = [o for _, _, o, _ in reversed(runs)]
        print(f"{runner}: {test}")
        print(f"  last {len(runs)} runs, flip rate {flip_rate(outcomes):.2f}")
        for when, commit_id, outcome, first in runs:
            shown = f"{outcome} (first {first})" if first else outcome
            print(f"  {when}  {commit_id:<14} {shown}")
    return 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("history", help="the last runs of a requirement's tests, flip rate")
    parser.add_argument("what", help="a requirement ID, or part of a test's name")
    parser.add_argument("--last", type=int, default=10, help="how many runs (default 10)")
    parser.set_defaults(run=run)
