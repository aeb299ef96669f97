"""behave hooks: one live orchestratord (+ llama-server) for the run, one World per scenario.

behave finds ``steps/`` by walking up from ``features/``, so this file sits at the repo
root beside both. The step logic lives in ``steps/library.py`` and ``steps/world.py``; pytest-bdd
runs the same features through ``tests/bdd``.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from steps.world import World  # noqa: E402
from xtask.fakes.live_server import live_server  # noqa: E402


def before_all(context: Any) -> None:
    context.stack = contextlib.ExitStack()
    context.server = context.stack.enter_context(live_server())


def before_scenario(context: Any, scenario: Any) -> None:
    context.world = World(context.server)


def after_scenario(context: Any, scenario: Any) -> None:
    context.world.close()


def after_all(context: Any) -> None:
    context.stack.close()
