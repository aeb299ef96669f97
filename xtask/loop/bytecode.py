"""Byte code the loop's interpreters share, kept warm within a run (HARN-306).

A dev loop starts a few hundred Python processes: servers, ``llorch`` calls, pytest workers,
the harness's own nested runs. With ``PYTHONDONTWRITEBYTECODE`` set (some shells and CI
images set it), each of them compiles every project module it imports from source again,
and every pytest process rewrites every test module's assertions again: about a third of a
server's start and half of a test collection. So the loop byte-compiles the project's
sources once before its first step and lets its steps write byte code (the variable is not
passed on). Python checks each cached file against its source's modification time and size,
so an edited module is compiled afresh, never served stale; the ``__pycache__`` folders are
ignored by git.
"""

from __future__ import annotations

import compileall
from collections.abc import Mapping
from pathlib import Path

# The project's own packages; the installed ones were compiled by pip.
SOURCES = ("orchestratord", "cli_client", "xtask", "steps", "tests")
NO_BYTECODE_ENV = "PYTHONDONTWRITEBYTECODE"


def warm(root: Path) -> bool:
    """Byte-compile the project's sources (a file whose cache is current is skipped)."""
    ok = True
    for name in SOURCES:
        folder = root / name
        if folder.is_dir():
            ok = bool(compileall.compile_dir(folder, quiet=1)) and ok
    return ok


def step_env(env: Mapping[str, str]) -> dict[str, str]:
    """The steps' environment: ``env`` with byte-code writing allowed."""
    return {k: v for k, v in env.items() if k != NO_BYTECODE_ENV}
