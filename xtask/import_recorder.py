"""``python -m xtask.import_recorder OUT MODULE ARGS...``: run MODULE as ``python -m`` would,
and on exit write which of the project's modules the process imported (HARN-202).

The full dev loop starts each test's orchestratord through this, so the coverage map knows
which server code a test module's servers loaded, at the cost of one list at exit instead
of tracing every line of a busy server.
"""

from __future__ import annotations

import atexit
import json
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def project_modules() -> list[str]:
    found = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve().is_relative_to(ROOT):
            found.add(str(Path(path).resolve().relative_to(ROOT)))
    return sorted(found)


def main() -> None:
    out, module, *args = sys.argv[1:]
    context = Path(out).stem
    atexit.register(
        lambda: Path(out).write_text(
            json.dumps({"context": context, "files": project_modules()}), encoding="utf-8"
        )
    )
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
