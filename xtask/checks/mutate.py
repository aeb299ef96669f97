"""``python -m xtask mutate``: mutation testing of the scheduling core with mutmut.

Mutates ``orchestratord/core/{queue,admission,task,dispatcher}.py`` (``[tool.mutmut]`` in
pyproject.toml) and runs the unit tests that cover each mutated function against it. A
mutant the tests do not notice "survives": a behaviour nobody checks. Prints the score
(killed / (killed + survived); timeouts count as killed, mutants no test reaches as
survived) and every surviving mutant, writes ``reports/mutation.json``, and fails below
``--min-score`` (80 % by default). Not part of the dev loop: it takes minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from xtask.loop.results import write_result

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "reports" / "mutation.json"
KILLED = {"killed", "timeout"}
SURVIVED = {"survived", "no tests"}


# Fewer property examples and a shorter stream timeout: a mutant that hangs a stream should
# fail in seconds, and 15 random schedules per mutant still reach every lifecycle path.
FAST_TESTS = {"LLORCH_PROPERTY_EXAMPLES": "15", "LLORCH_TEST_STREAM_TIMEOUT_S": "3"}


def mutmut(*args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mutmut", *args],
        cwd=ROOT,
        env={**os.environ, **FAST_TESTS},
        check=False,
        text=True,
        capture_output=capture,
        stdin=subprocess.DEVNULL,
    )


def statuses() -> dict[str, str]:
    """Mutant name → status, from ``mutmut results --all true``."""
    listing = mutmut("results", "--all", "true", capture=True).stdout
    found: dict[str, str] = {}
    for line in listing.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name:
            found[name] = status.strip()
    return found


def run(args: argparse.Namespace) -> int:
    if not args.keep:
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    done = mutmut("run", "--max-children", str(args.max_children))
    if done.returncode != 0:
        print(f"mutate: mutmut run exited {done.returncode}", file=sys.stderr)
        return 1
    found = statuses()
    tally = Counter(found.values())
    killed = sum(n for s, n in tally.items() if s in KILLED)
    survived = sorted(name for name, status in found.items() if status in SURVIVED)
    score = killed / max(killed + len(survived), 1)
    per_file: Counter[str] = Counter(name.split(".x", 1)[0] for name in survived)
    print(f"\nmutate: {len(found)} mutants: " + ", ".join(f"{s} {n}" for s, n in tally.items()))
    print(f"mutate: score {score:.1%} (killed {killed}, survived {len(survived)})")
    for module, count in sorted(per_file.items()):
        print(f"  surviving in {module}: {count}")
    for name in survived:
        print(f"  survived: {name}  (see: mutmut show {name})")
    result: dict[str, Any] = {
        "score": round(score, 4),
        "tally": dict(tally),
        "survived": survived,
    }
    write_result(REPORT, result)
    return 0 if score >= args.min_score else 1


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("mutate", help="mutation testing of core/ with mutmut")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--min-score", type=float, default=0.80)
    parser.add_argument("--keep", action="store_true", help="reuse mutants/ from the last run")
    parser.set_defaults(run=run)
