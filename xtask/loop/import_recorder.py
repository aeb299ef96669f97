"""``python -m xtask.loop.import_recorder OUT MODULE ARGS...``: run MODULE as ``python -m`` would,
and on exit write which of the project's modules the process imported (HARN-202).

The full dev loop starts each test's orchestratord through this, so the coverage map knows
which server code a test module's servers loaded, at the cost of one list at exit instead
of tracing every line of a busy server.
"""

from __future__ import annotations

import atexit
import json
import runpy
import signal
import sys
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("orchestratord/", "cli_client/")


def project_modules() -> list[str]:
    found = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve().is_relative_to(ROOT):
            rel = str(Path(path).resolve().relative_to(ROOT))
            if rel.startswith(PACKAGES):  # not the virtualenv that lives in the checkout
                found.add(rel)
    return sorted(found)


def main() -> None:
    out, module, *args = sys.argv[1:]

    def record() -> None:
        Path(out).write_text(json.dumps({"files": project_modules()}), encoding="utf-8")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # uvicorn re-raises SIGTERM after its graceful shutdown, to this handler it had
        # saved: record, then die of the signal as the server meant to (atexit never runs).
        record()
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    atexit.register(record)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
