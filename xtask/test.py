"""``python -m xtask test``: lint, format check, types, schema drift, then every pytest test.

Stops at the first failing step and prints a table of steps with durations. (The full
dev loop — spec extraction, Pact, BDD, metrics lint, traceability — grows from this.)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

STEPS: list[tuple[str, list[str]]] = [
    ("lint", [PY, "-m", "ruff", "check", "."]),
    ("format", [PY, "-m", "ruff", "format", "--check", "."]),
    ("types", [PY, "-m", "mypy"]),
    ("regen-check", [PY, "-m", "xtask", "regen", "--check"]),
    ("pytest", [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider"]),
]


def run(args: argparse.Namespace) -> int:
    results: list[tuple[str, float, int]] = []
    for name, command in STEPS:
        if args.only and name not in args.only:
            continue
        print(f"==> {name}: {' '.join(Path(c).name if c == PY else c for c in command)}")
        started = time.monotonic()
        code = subprocess.call(command, cwd=ROOT)
        results.append((name, time.monotonic() - started, code))
        if code != 0:
            break
    print("\nstep          seconds  result")
    for name, seconds, code in results:
        print(f"{name:<13} {seconds:>7.1f}  {'ok' if code == 0 else f'FAILED (exit {code})'}")
    failed = [name for name, _, code in results if code != 0]
    return 1 if failed else 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("test", help="lint, types, drift check and all tests")
    parser.add_argument("--only", nargs="*", choices=[name for name, _ in STEPS])
    parser.set_defaults(run=run)
